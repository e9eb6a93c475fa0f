//! Scenario a: the query path.

use super::*;

/// Issue acceptance: 100 calls between registered phones, the main killed, every call found
/// by the dialog query (no digest) and re-bound; then each is hung up through the new active
/// and written as a recovered, normal CDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_path_recovers_100_calls() -> Result<()> {
    let (caller_names, callee_names) = (names("alice", 10), names("bob", 10));
    let users = users_of(&[&caller_names, &callee_names]);
    let spec = PairSpec {
        dialog_digest: false,
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("query", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    for (j, ua) in callees.iter().enumerate() {
        answer_n(ua, caller_names.len(), &Answer::ok());
        // Half the callees send their NOTIFY before the 200 to the SUBSCRIBE.
        if j % 2 == 1 {
            ua.set_policy(|p| p.dialog_query = QueryReply::NotifyFirst);
        }
    }
    wait_synced(&pair.standby, &users).await?;

    let targets = vec![callee_names.clone(); caller_names.len()];
    let (callers, calls) = set_up_calls(callers, targets, &callees, 100).await?;
    let report = kill_and_settle(&mut pair, 100, 0, Duration::from_secs(15), "a query").await?;
    check_report(
        &report,
        &[
            ("endpoints", 20),
            ("queried", 20),
            ("answered", 20),
            ("not_notifiers", 0),
            ("calls_found", 100),
            ("recovered", 100),
            ("recovered_via_query", 100),
            ("recovered_via_digest", 0),
            ("orphaned", 0),
            ("failed", 0),
            ("reset", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let all: Vec<&Call> = calls.iter().collect();
    let (mut callers, mut callees) =
        expect_calls_rebound(callers, callees, &all, new_active).await?;
    for ua in callers.iter_mut().chain(callees.iter_mut()) {
        let (queries, resets) = queries_and_resets(ua);
        ensure!(
            ua.queries_answered() == 1 && queries == 1,
            "{} got {queries} dialog queries and answered {} (want 1)",
            ua.user(),
            ua.queries_answered()
        );
        ensure!(resets == 0, "{}: hot mode sent check-sync", ua.user());
    }
    let calls_now = pair.standby.calls().await?;
    ensure!(
        calls_now.len() == 100 && calls_now.iter().all(|c| c["recovered"] == true),
        "/calls on the new active: {} calls, not all recovered",
        calls_now.len()
    );

    let (_callers, _callees) = hang_up_calls(callers, callees, &all, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure!(cdrs.len() == 100, "{} CDRs on the new active", cdrs.len());
    ensure_recovered_normal(&cdrs, &all, "CDR")
}
