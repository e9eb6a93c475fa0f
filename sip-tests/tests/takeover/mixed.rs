//! Scenario c: mixed: notifiers and not.

use super::*;

/// Query path with `fallback = "cold"`: half the callees refuse the dialog query (489). Their
/// 50 calls cannot be paired: the callee gets the cold reset, the caller's orphaned leg a BYE
/// (CDR `takeover_orphan`). The other 50 calls are re-bound. The report counts both groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_notifiers_recover_half_and_reset_the_rest() -> Result<()> {
    let (caller_names, callee_names) = (names("erin", 10), names("frank", 10));
    let users = users_of(&[&caller_names, &callee_names]);
    let spec = PairSpec {
        dialog_digest: false,
        fallback: "cold",
        query_timeout_ms: 1500,
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("mixed", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    let refuses = |j: usize| j < 5;
    for (j, ua) in callees.iter().enumerate() {
        answer_n(ua, caller_names.len(), &Answer::ok());
        if refuses(j) {
            ua.set_policy(|p| {
                p.dialog_query = QueryReply::Refuse(489);
                p.drop_on_check_sync = true;
            });
        }
    }
    wait_synced(&pair.standby, &users).await?;
    let targets = vec![callee_names.clone(); caller_names.len()];
    let mut callees = callees;
    let (callers, calls) = set_up_calls(callers, targets, &callees, 100).await?;
    let report = kill_and_settle(&mut pair, 100, 0, Duration::from_secs(15), "c mixed").await?;
    check_report(
        &report,
        &[
            ("endpoints", 20),
            ("queried", 20),
            ("answered", 15),
            ("not_notifiers", 5),
            ("reset", 5),
            ("calls_found", 50),
            ("recovered", 50),
            ("recovered_via_query", 50),
            ("orphaned", 50),
            ("failed", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let (lost, kept): (Vec<&Call>, Vec<&Call>) = calls.iter().partition(|c| refuses(c.callee));
    // The refusing callees were reset (once each) and dropped their calls; the others were
    // not reset (they answered the query).
    for (j, ua) in callees.iter_mut().enumerate() {
        if refuses(j) {
            expect_check_sync(ua, new_active).await?;
            ensure!(ua.live_dialogs().is_empty(), "{} kept its calls", ua.user());
        }
    }
    // Orphans: every caller gets a BYE for each call whose callee refused.
    let callers = expect_orphan_byes(callers, &lost, new_active).await?;
    let (callers, mut callees) = expect_calls_rebound(callers, callees, &kept, new_active).await?;
    for (j, ua) in callees.iter_mut().enumerate() {
        let n = check_syncs(ua).len();
        ensure!(
            n == 0,
            "{}: {n} (more) check-sync NOTIFYs (refused: {})",
            ua.user(),
            refuses(j)
        );
    }
    let (_callers, _callees) = hang_up_calls(callers, callees, &kept, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &kept, "recovered call's CDR")?;
    for c in cdrs_by_token(&cdrs, &lost)? {
        ensure!(
            c.end_reason == "takeover_orphan",
            "orphaned call's CDR {}: end_reason {}",
            c.token,
            c.end_reason
        );
    }
    ensure!(cdrs.len() == 100, "{} CDRs", cdrs.len());
    Ok(())
}
