//! Scenario b: cold mode.

use super::*;

/// Cold mode: every known endpoint (registered phones and every trunk) gets exactly one
/// `check-sync;reboot=true` NOTIFY, the new active starts without calls, and an in-dialog BYE
/// for an old call gets 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_mode_resets_every_endpoint_and_forgets_calls() -> Result<()> {
    let (caller_names, callee_names) = (names("carol", 5), names("dave", 5));
    let users = users_of(&[&caller_names, &callee_names]);
    let carrier = Ua::bind("carrier").await?;
    let spec = PairSpec {
        mode: "cold",
        ..PairSpec::default()
    }
    .with_users(&users);
    let spec = PairSpec {
        trunks: vec![TrunkSpec::new("carrier", carrier.addr(), "9")],
        ..spec
    };
    let mut pair = Pair::start("cold", &spec).await?;
    carrier.set_server(pair.main.sip);
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    for ua in &callers {
        ua.set_policy(|p| p.drop_on_check_sync = true);
    }
    for ua in &callees {
        answer_n(ua, caller_names.len(), &Answer::ok());
    }
    answer_n(&carrier, caller_names.len(), &Answer::ok());
    wait_synced(&pair.standby, &users).await?;
    let mut targets = vec![callee_names.clone(); caller_names.len()];
    for t in &mut targets {
        t.push("90001".into());
    }
    let mut callees = callees;
    callees.push(carrier);
    let (mut callers, calls) = set_up_calls(callers, targets, &callees, 30).await?;
    let killed = kill_main(&mut pair, 30, 0).await?;

    let report = pair
        .standby
        .wait_takeover_done(Duration::from_secs(10))
        .await?;
    show_report("b cold", &report, killed);
    check_report(
        &report,
        &[
            ("endpoints", 11),
            ("reset", 11),
            ("queried", 0),
            ("recovered", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    // Every endpoint got its reset (the report counts sends; await each arrival).
    for ua in callers.iter_mut().chain(callees.iter_mut()) {
        expect_check_sync(ua, new_active).await?;
    }
    let calls_now = pair.standby.calls().await?;
    ensure!(
        calls_now.is_empty(),
        "/calls after a cold takeover: {calls_now:?}"
    );
    // A callee still thinks its call is up and sends BYE, now to the new active: 481.
    let stale = &calls[0];
    let dave = &mut callees[stale.callee];
    dave.redirect_dialog(&stale.b, new_active)?;
    let r = dave.bye(&stale.b).await?;
    ensure!(r.status == 481, "stale BYE got {} {}", r.status, r.reason);
    // The callers dropped their calls on check-sync (policy), nothing else was sent to them.
    for ua in &callers {
        ensure!(
            ua.live_dialogs().is_empty(),
            "{} kept calls after check-sync",
            ua.user()
        );
    }
    // Exactly one each: nothing more arrived meanwhile.
    for ua in callers.iter_mut().chain(callees.iter_mut()) {
        let more = check_syncs(ua);
        ensure!(
            more.is_empty(),
            "{} got {} more check-sync NOTIFYs",
            ua.user(),
            more.len()
        );
    }
    Ok(())
}
