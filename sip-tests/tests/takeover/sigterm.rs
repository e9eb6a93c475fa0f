//! SIGTERM with live calls.

use super::*;

/// SIGTERM with 100 live calls: the node writes a CDR for every one (`end_reason =
/// shutdown`) before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_a_shutdown_cdr_for_every_live_call() -> Result<()> {
    let (caller_names, callee_names) = (names("term", 10), names("held", 10));
    let users = users_of(&[&caller_names, &callee_names]);
    let spec = PairSpec::default().with_users(&users);
    let mut pair = Pair::start("sigterm", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    for ua in &callees {
        answer_n(ua, caller_names.len(), &Answer::ok());
    }
    let targets = vec![callee_names.clone(); caller_names.len()];
    let (_callers, calls) = set_up_calls(callers, targets, &callees, 100).await?;
    let cdrs = stop_and_read_cdrs(&mut pair.main).await?;
    let refs: Vec<&Call> = calls.iter().collect();
    let mine = cdrs_by_token(&cdrs, &refs)?;
    let reasons: Vec<&str> = mine.iter().map(|c| c.end_reason.as_str()).collect();
    ensure!(
        reasons.iter().all(|r| *r == "shutdown"),
        "end reasons: {reasons:?}"
    );
    ensure!(mine.len() == 100);
    Ok(())
}
