//! Scenario e: ringing calls.

use super::*;

/// Calls still ringing at the kill (the callee sent 180 with a To tag and never answers):
/// within 2 s of the takeover every caller has a final response (487 or 503) and every
/// callee has been told (CANCEL of the old INVITE, or BYE on its early dialog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_calls_are_failed_cleanly() -> Result<()> {
    let caller_names = names("hank", 4);
    let per_caller = 5;
    let total = caller_names.len() * per_caller;
    let ringer = Ua::bind("ringer").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec::new("ringer", ringer.addr(), "7")],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("ringing", &spec).await?;
    ringer.set_server(pair.main.sip);
    answer_n(&ringer, total, &Answer::ring());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    // Each caller places its calls and waits for the 180 (with the B2BUA's To tag) on each.
    let (callers, outs) = par(callers, |i, mut ua| async move {
        let r = async {
            let mut outs = Vec::new();
            for k in 0..per_caller {
                let out = ua.invite(&format!("7{i}{k:02}"))?;
                let r = ua.expect_status(&out.call_id, Method::Invite, 180).await?;
                ensure!(r.to_tag().is_some(), "180 without To tag");
                outs.push(out);
            }
            Ok(outs)
        }
        .await;
        (ua, r)
    })
    .await?;
    let mut ringer = ringer;
    let mut b_invites = Vec::new();
    for _ in 0..total {
        b_invites.push(ringer.expect_new_invite().await?);
    }
    let killed = kill_main(&mut pair, total as u64, total as u64).await?;
    pair.standby
        .wait_status(Duration::from_secs(5), "active", |v| v["role"] == "active")
        .await?;
    let active_at = Instant::now();
    let deadline = active_at + Duration::from_secs(2);

    let (_callers, finals) = par(callers, |i, mut ua| {
        let outs = outs[i].clone();
        async move {
            let r = async {
                let mut got = Vec::new();
                for out in &outs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let m = ua
                        .expect_within(left, "final response to the ringing INVITE", |m| {
                            m.is_response_to(&out.call_id, &Method::Invite)
                                && m.response().is_some_and(|r| r.status >= 200)
                        })
                        .await?;
                    let r = m.response().context("a response")?;
                    let status = r.status;
                    ensure!(
                        status == 487 || status == 503,
                        "ringing call {} ended with {status}",
                        out.call_id
                    );
                    ensure!(
                        status != 503 || r.headers.get(&HeaderName::RetryAfter).is_some(),
                        "503 without Retry-After"
                    );
                    got.push(status);
                }
                Ok(got)
            }
            .await;
            (ua, r)
        }
    })
    .await?;
    for inv in &b_invites {
        let call_id = inv.call_id()?.to_string();
        let left = deadline.saturating_duration_since(Instant::now());
        let m = ringer
            .expect_within(left, &format!("CANCEL or BYE in {call_id}"), |m| {
                m.call_id() == Some(call_id.as_str())
                    && (m.is_request(&Method::Cancel) || m.is_request(&Method::Bye))
            })
            .await?;
        ensure!(
            m.source == pair.standby.sip,
            "{} from {}, not the new active",
            m.summary(),
            m.source
        );
    }
    ensure!(
        ringer.live_dialogs().is_empty(),
        "the callee still has early dialogs"
    );
    let report = wait_settled(&pair.standby, Duration::from_secs(5)).await?;
    show_report("e ringing", &report, killed);
    check_report(&report, &[("ringing_failed", total as u64)])?;
    let statuses: Vec<u16> = finals.into_iter().flatten().collect();
    eprintln!(
        "[e ringing] final responses to the callers within {:?} of the takeover: {statuses:?}",
        active_at.elapsed()
    );
    Ok(())
}
