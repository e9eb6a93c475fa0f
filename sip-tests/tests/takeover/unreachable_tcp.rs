//! Scenario j: a TCP leg that cannot be reached.

use super::*;

/// A TCP trunk that cannot be reached at takeover (its connections died with the main and
/// it does not listen): the call is kept, and adopted when the trunk's next in-dialog
/// request (here its BYE, sent to the new active) arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_tcp_leg_is_adopted_on_its_next_request() -> Result<()> {
    let caller_names = names("olga", 1);
    let trunk = Ua::bind_tcp("tcpgone").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec {
            tcp: true,
            ..TrunkSpec::new("tcpgone", trunk.addr(), "6")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("tcpgone", &spec).await?;
    trunk.set_server_tcp(pair.main.sip);
    answer_n(&trunk, 2, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = vec![vec!["600".to_string(), "601".to_string()]];
    let callees = vec![trunk];
    let (callers, calls) = set_up_calls(callers, targets, &callees, 2).await?;
    let killed = kill_main(&mut pair, 2, 2).await?;
    // The main's connections are gone with it; the trunk stops listening too.
    callees[0].close_tcp();
    let new_active = pair.standby.sip;
    // Leg B (TCP) is re-INVITEd first (the leg likelier to be unreachable goes first), so
    // when it cannot be reached nothing is owed to leg A, which is left alone: no re-INVITE,
    // no BYE. The call waits for the trunk to come back on a connection of its own.
    let report = wait_settled(&pair.standby, Duration::from_secs(15)).await?;
    show_report("j tcp unreachable", &report, killed);
    check_report(
        &report,
        &[("tcp_unreachable", 2), ("failed", 0), ("ended", 0)],
    )?;
    let listed = pair.standby.calls().await?;
    ensure!(
        listed.len() == 2,
        "the new active must keep both calls: /calls = {listed:?}"
    );
    // The trunk comes back: it sends its BYEs to the new active.
    let mut send = vec![Vec::new(), Vec::new()];
    let mut receive = vec![Vec::new(), Vec::new()];
    for c in &calls {
        callees[0].redirect_dialog(&c.b, new_active)?;
        send[1].push(c.b.clone());
        receive[0].push(c.a.clone());
    }
    let all: Vec<Ua> = callers.into_iter().chain(callees).collect();
    let all = hang_up(all, send, receive, new_active).await?;
    ensure_no_protocol_errors(&all)?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    let all_calls: Vec<&Call> = calls.iter().collect();
    ensure_recovered_normal(&cdrs, &all_calls, "CDR")
}
