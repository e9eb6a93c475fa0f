//! Scenario f: TCP legs.

use super::*;

/// Calls whose legs both use TCP (phones registered over TCP, a trunk with `transport =
/// "tcp"`): the new active re-binds them over new TCP connections to the recorded
/// addresses, and the BYEs afterwards go over TCP to the new active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_legs_are_rebound_over_tcp() -> Result<()> {
    let caller_names = names("ivan", 4);
    let per_caller = 5;
    let total = caller_names.len() * per_caller;
    let trunk = Ua::bind_tcp("tcptrunk").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec {
            tcp: true,
            ..TrunkSpec::new("tcptrunk", trunk.addr(), "8")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("tcp", &spec).await?;
    trunk.set_server_tcp(pair.main.sip);
    answer_n(&trunk, total, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, true).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = numbers(caller_names.len(), per_caller, |i, k| format!("8{i}{k:02}"));
    let callees = vec![trunk];
    let (callers, calls) = set_up_calls(callers, targets, &callees, total).await?;
    for ua in callers.iter().chain(&callees) {
        for d in ua.live_dialogs() {
            ensure!(
                d.transport == Transport::Tcp,
                "{}: a leg set up over {:?}",
                ua.user(),
                d.transport
            );
        }
    }
    let accepted_before: Vec<usize> = callers
        .iter()
        .chain(&callees)
        .map(|u| u.tcp_accepted().len())
        .collect();
    let report = kill_and_settle(
        &mut pair,
        total as u64,
        total as u64,
        Duration::from_secs(15),
        "f tcp",
    )
    .await?;
    check_report(
        &report,
        &[
            ("recovered", total as u64),
            ("tcp_unreachable", 0),
            ("failed", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let all: Vec<&Call> = calls.iter().collect();
    let (callers, callees) = expect_calls_rebound(callers, callees, &all, new_active).await?;
    for (ua, before) in callers.iter().chain(&callees).zip(accepted_before) {
        ensure!(
            ua.tcp_accepted().len() > before,
            "{} accepted no new TCP connection for the re-bind",
            ua.user()
        );
        for d in ua.live_dialogs() {
            ensure!(
                d.transport == Transport::Tcp,
                "a leg moved to {:?}",
                d.transport
            );
        }
    }
    let (_callers, _callees) = hang_up_calls(callers, callees, &all, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &all, "CDR")
}
