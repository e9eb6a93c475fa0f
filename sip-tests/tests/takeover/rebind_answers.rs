//! Scenario i: re-bind answers other than 200.

use super::*;

/// Expect the next re-INVITE in `id` (from the new active) and return it.
async fn next_reinvite(ua: &mut Ua, id: &DialogId, new_active: SocketAddr) -> Result<Request> {
    let m = ua
        .expect(&format!("re-INVITE in {}", id.call_id), |m| {
            is_request_in(m, &Method::Invite, id)
        })
        .await?;
    ensure!(from_node(&m, new_active), "re-INVITE from {}", m.source);
    m.request().cloned().context("a request")
}

/// The re-bind meets glare and dead dialogs: a leg B that answers 491 is asked again after
/// a random delay and the call is recovered; a leg A that answers 481 ends the call (BYE to
/// leg B); a leg B that answers 481 ends it too (leg A gets its ACK, with an answer, and BYE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebind_retries_491_and_ends_calls_on_481() -> Result<()> {
    let (caller_names, callee_names) = (names("mia", 3), names("ned", 3));
    let users = users_of(&[&caller_names, &callee_names]);
    let mut pair = Pair::start("glare", &PairSpec::default().with_users(&users)).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    for ua in &callees {
        answer_n(ua, 1, &Answer::ok());
    }
    wait_synced(&pair.standby, &users).await?;
    let targets: Vec<Vec<String>> = callee_names.iter().map(|c| vec![c.clone()]).collect();
    let mut callees = callees;
    let (mut callers, calls) = set_up_calls(callers, targets, &callees, 3).await?;
    let call = |j: usize| calls.iter().find(|c| c.callee == j).cloned();
    let (c0, c1, c2) = (
        call(0).context("call 0")?,
        call(1).context("call 1")?,
        call(2).context("call 2")?,
    );
    callees[c0.callee].set_policy(|p| p.reinvite = sip_tests::Reply::Manual);
    callers[c1.caller].set_policy(|p| p.reinvite = sip_tests::Reply::Manual);
    callees[c2.callee].set_policy(|p| p.reinvite = sip_tests::Reply::Manual);
    let killed = kill_main(&mut pair, 3, 3).await?;
    let new_active = pair.standby.sip;

    // Call 0: glare on leg B, then 200 on the retry.
    let first = next_reinvite(&mut callees[c0.callee], &c0.b, new_active).await?;
    callees[c0.callee].reply(&first, 491)?;
    let t491 = Instant::now();
    let retry = next_reinvite(&mut callees[c0.callee], &c0.b, new_active).await?;
    let delay = t491.elapsed();
    ensure!(
        retry.cseq()?.seq > first.cseq()?.seq,
        "the retry reuses CSeq {}",
        retry.cseq()?.seq
    );
    ensure!(
        sdp::session_name(&retry.body).as_deref() == Some(callers[c0.caller].user()),
        "the retry carries the caller's offer"
    );
    callees[c0.callee].reply(&retry, 200)?;
    let ack = callers[c0.caller]
        .expect("ACK with the answer on leg A of call 0", |m| {
            is_request_in(m, &Method::Ack, &c0.a) && from_node(m, new_active)
        })
        .await?;
    ensure!(
        ack.request().is_some_and(|r| !r.body.is_empty()),
        "ACK without answer"
    );
    eprintln!("[i glare] 491 retried after {delay:?}");

    // Call 1: leg A no longer knows the dialog.
    let inv = next_reinvite(&mut callers[c1.caller], &c1.a, new_active).await?;
    callers[c1.caller].reply(&inv, 481)?;
    let bye = callees[c1.callee]
        .expect("BYE on leg B of call 1", |m| {
            is_request_in(m, &Method::Bye, &c1.b)
        })
        .await?;
    ensure!(from_node(&bye, new_active), "BYE from {}", bye.source);

    // Call 2: leg B no longer knows the dialog; leg A has offered and must get its ACK
    // (with an answer, even a rejecting one) and then a BYE.
    let inv = next_reinvite(&mut callees[c2.callee], &c2.b, new_active).await?;
    callees[c2.callee].reply(&inv, 481)?;
    let ack = callers[c2.caller]
        .expect("ACK on leg A of call 2", |m| {
            is_request_in(m, &Method::Ack, &c2.a) && from_node(m, new_active)
        })
        .await?;
    ensure!(
        ack.request().is_some_and(|r| !r.body.is_empty()),
        "leg A's ACK carries no SDP answer for its offer"
    );
    let bye = callers[c2.caller]
        .expect("BYE on leg A of call 2", |m| {
            is_request_in(m, &Method::Bye, &c2.a)
        })
        .await?;
    ensure!(from_node(&bye, new_active), "BYE from {}", bye.source);

    let report = wait_settled(&pair.standby, Duration::from_secs(10)).await?;
    show_report("i glare", &report, killed);
    check_report(&report, &[("recovered", 1), ("ended", 2), ("failed", 0)])?;
    ensure_no_protocol_errors(callers.iter().chain(&callees))?;
    let (_callers, _callees) = hang_up_calls(callers, callees, &[&c0], new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    let reasons: Vec<(String, bool)> = cdrs_by_token(&cdrs, &[&c0])?
        .iter()
        .map(|c| (c.end_reason.clone(), c.recovered))
        .collect();
    eprintln!("[i glare] CDRs (end_reason, recovered) for call 0: {reasons:?}");
    ensure!(
        reasons[0] == ("normal".to_string(), true),
        "call 0: {:?}",
        reasons[0]
    );
    // Calls 1 and 2 had ended before the new active owned them (an endpoint no longer knew
    // them): their CDR is the previous owner's, never a second one here.
    for c in [&c1, &c2] {
        let t = format!("{:016x}", c.token);
        ensure!(
            !cdrs.iter().any(|r| r.token == t),
            "a second CDR for call {t}, which ended before the takeover"
        );
    }
    Ok(())
}
