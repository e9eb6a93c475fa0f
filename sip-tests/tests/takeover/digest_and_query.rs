//! Scenario l: digest and query together.

use super::*;

/// Both sources at once: calls the digest carried are re-bound from it, and calls set up
/// after the last digest the stand-by received (the pair link is cut first, then new calls
/// are made, then the main dies) are found by querying the endpoints the digest does not
/// account for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_and_query_find_early_and_late_calls() -> Result<()> {
    let (early_callers, early_callees) = (names("quinn", 4), names("rita", 4));
    let (late_callers, late_callees) = (names("sam", 2), names("tess", 2));
    let users = users_of(&[&early_callers, &early_callees, &late_callers, &late_callees]);
    let mut pair = Pair::start("both", &PairSpec::default().with_users(&users)).await?;
    let ec = phones(&early_callers, pair.main.sip, false).await?;
    let ee = phones(&early_callees, pair.main.sip, false).await?;
    let lc = phones(&late_callers, pair.main.sip, false).await?;
    let le = phones(&late_callees, pair.main.sip, false).await?;
    for ua in &ee {
        answer_n(ua, early_callers.len(), &Answer::ok());
    }
    for ua in &le {
        answer_n(ua, late_callers.len(), &Answer::ok());
    }
    wait_synced(&pair.standby, &users).await?;
    let (ec, early) = set_up_calls(ec, vec![early_callees.clone(); 4], &ee, 16).await?;
    pair.standby
        .wait_status(Duration::from_secs(5), "knowing the early calls", |v| {
            num(&v["digest"], "calls_known") >= 16
        })
        .await?;
    // Cut the pair link: no digest reaches the stand-by from now on.
    for n in [&pair.main, &pair.standby] {
        n.post("/test/partition?on").await?;
    }
    let (lc, late) = set_up_calls(lc, vec![late_callees.clone(); 2], &le, 4).await?;
    pair.main.kill9();
    let killed = Instant::now();
    let report = wait_settled(&pair.standby, Duration::from_secs(15)).await?;
    show_report("l digest+query", &report, killed);
    check_report(
        &report,
        &[
            ("recovered", 20),
            ("recovered_via_digest", 16),
            ("recovered_via_query", 4),
            // Every endpoint is asked, also those whose calls the digest knows: the late
            // calls could have been between them.
            ("queried", 12),
            ("answered", 12),
            ("orphaned", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let early_refs: Vec<&Call> = early.iter().collect();
    let late_refs: Vec<&Call> = late.iter().collect();
    let (mut ec, mut ee) = expect_calls_rebound(ec, ee, &early_refs, new_active).await?;
    let (lc, le) = expect_calls_rebound(lc, le, &late_refs, new_active).await?;
    for ua in ec.iter_mut().chain(ee.iter_mut()) {
        let (queries, _) = queries_and_resets(ua);
        ensure!(queries == 1, "{} was queried {queries} times", ua.user());
    }
    hang_up_calls(ec, ee, &early_refs, new_active).await?;
    hang_up_calls(lc, le, &late_refs, new_active).await?;
    Ok(())
}
