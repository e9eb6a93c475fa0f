//! Scenario h: silence and 481 are "not a notifier" too.

use super::*;

/// Real soft-phones answer the dialog query with 481 or not at all (research notes): both
/// count as "not a notifier" exactly like 489, the silent one after `query_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_481_endpoints_are_not_notifiers() -> Result<()> {
    let (caller_names, callee_names) = (names("kim", 2), names("lee", 3));
    let users = users_of(&[&caller_names, &callee_names]);
    let query_timeout_ms = 1000;
    let spec = PairSpec {
        dialog_digest: false,
        fallback: "cold",
        query_timeout_ms,
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("silent", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    let policy = [
        QueryReply::Notify,
        QueryReply::Ignore,
        QueryReply::Refuse(481),
    ];
    for (ua, q) in callees.iter().zip(policy) {
        answer_n(ua, caller_names.len(), &Answer::ok());
        ua.set_policy(|p| {
            p.dialog_query = q;
            p.drop_on_check_sync = true;
        });
    }
    wait_synced(&pair.standby, &users).await?;
    let targets = vec![callee_names.clone(); caller_names.len()];
    let mut callees = callees;
    let (callers, calls) = set_up_calls(callers, targets, &callees, 6).await?;
    let report = kill_and_settle(&mut pair, 6, 0, Duration::from_secs(10), "h silent").await?;
    check_report(
        &report,
        &[
            ("endpoints", 5),
            ("queried", 5),
            ("answered", 3),
            ("not_notifiers", 2),
            ("reset", 2),
            ("recovered", 2),
            ("orphaned", 4),
        ],
    )?;
    ensure!(
        num(&report, "total_ms") >= query_timeout_ms,
        "the silent endpoint was not waited for: total_ms {}",
        report["total_ms"]
    );
    let new_active = pair.standby.sip;
    for ua in callees.iter_mut().skip(1) {
        expect_check_sync(ua, new_active).await?;
    }
    let (lost, kept): (Vec<&Call>, Vec<&Call>) = calls.iter().partition(|c| c.callee != 0);
    let callers = expect_orphan_byes(callers, &lost, new_active).await?;
    let (callers, mut callees) = expect_calls_rebound(callers, callees, &kept, new_active).await?;
    ensure!(
        check_syncs(&mut callees[0]).is_empty(),
        "the notifier got a check-sync"
    );
    hang_up_calls(callers, callees, &kept, new_active).await?;
    Ok(())
}
