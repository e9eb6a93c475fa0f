//! Calls through the B2BUA between registered UAs: answer and hang up from either side,
//! busy, CANCEL before answer, and a callee that answers 487 by itself (RFC 3261 §13–§15).

use anyhow::Result;
use sip_tests::{Answer, Ua, sdp};
use understudy::b2bua::Side;
use understudy::sip::{Method, SipMessage};

use crate::common::{alice_and_bob, only_cdr, token_of};

#[tokio::test]
async fn basic_call_caller_hangs_up() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ok());
    let out = alice.invite("bob")?;

    let inv = bob.expect_new_invite().await?;
    assert_eq!(
        inv.uri,
        bob.contact_uri(),
        "the B leg goes to bob's registered contact"
    );
    assert_eq!(
        sdp::session_name(&inv.body).as_deref(),
        Some("alice"),
        "offer relayed"
    );
    assert_ne!(inv.call_id()?, out.call_id, "the B leg has its own Call-ID");
    let b_token = token_of(inv.from_tag(), Side::B);

    let ringing = alice
        .expect_status(&out.call_id, Method::Invite, 180)
        .await?;
    assert_eq!(token_of(ringing.to_tag(), Side::A), b_token);
    let ok = alice.wait_final(&out).await?;
    assert_eq!(ok.status, 200);
    assert_eq!(
        token_of(ok.to_tag(), Side::A),
        b_token,
        "both legs carry one token"
    );
    assert_eq!(
        sdp::session_name(&ok.body).as_deref(),
        Some("bob"),
        "answer relayed"
    );
    let a_dialog = Ua::dialog_of(&out, &ok);

    let ack = bob.expect_request(Method::Ack).await?;
    assert_eq!(ack.call_id()?, inv.call_id()?, "the ACK reaches the callee");
    assert_eq!(server.counts().await?.calls, 1);

    let bye_ok = alice.bye(&a_dialog).await?;
    assert_eq!(bye_ok.status, 200);
    let bye = bob.expect_request(Method::Bye).await?;
    assert_eq!(bye.call_id()?, inv.call_id()?);
    assert!(bob.live_dialogs().is_empty(), "bob's dialog ended");

    let cdr = only_cdr(server).await?;
    assert_eq!(cdr.end_reason, "normal");
    assert_eq!(cdr.call_id, out.call_id);
    assert_eq!(cdr.b_call_id, inv.call_id()?);
    assert_eq!(cdr.callee, "bob");
    assert!(cdr.caller.contains("alice"), "caller {:?}", cdr.caller);
    assert!(cdr.answer_ms.is_some());
    assert_eq!(cdr.token, format!("{b_token:016x}"));
    Ok(())
}

#[tokio::test]
async fn callee_hangs_up() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ok());
    let a_dialog = alice.call("bob").await?;
    let inv = bob.expect_new_invite().await?;
    bob.expect_request(Method::Ack).await?;
    let b_dialog = bob.dialog_for(&inv).expect("bob answered 200");

    let r = bob.bye(&b_dialog).await?;
    assert_eq!(r.status, 200);
    let bye = alice.expect_request(Method::Bye).await?;
    assert_eq!(bye.call_id()?, a_dialog.call_id);
    assert_eq!(bye.to_tag().as_deref(), Some(a_dialog.local_tag.as_str()));
    assert!(alice.live_dialogs().is_empty());

    assert_eq!(only_cdr(server).await?.end_reason, "normal");
    Ok(())
}

#[tokio::test]
async fn busy_callee() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::busy());
    let out = alice.invite("bob")?;
    let inv = bob.expect_new_invite().await?;
    let r = alice.wait_final(&out).await?;
    assert_eq!(r.status, 486, "{} {}", r.status, r.reason);
    // The B2BUA ACKs the callee's 486 (same branch as its INVITE).
    let ack = bob.expect_request(Method::Ack).await?;
    assert_eq!(ack.top_via()?.branch(), inv.top_via()?.branch());

    let cdr = only_cdr(server).await?;
    assert_eq!(cdr.end_reason, "busy");
    assert!(cdr.answer_ms.is_none());
    Ok(())
}

#[tokio::test]
async fn cancel_before_answer() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ring());
    let out = alice.invite("bob")?;
    let inv = bob.expect_new_invite().await?;
    alice
        .expect_status(&out.call_id, Method::Invite, 180)
        .await?;

    alice.cancel(&out)?;
    let c = alice.expect_final(&out.call_id, Method::Cancel).await?;
    assert_eq!(c.status, 200);
    let r = alice.wait_final(&out).await?;
    assert_eq!(r.status, 487, "{} {}", r.status, r.reason);

    let cancel = bob.expect_request(Method::Cancel).await?;
    assert_eq!(cancel.call_id()?, inv.call_id()?);
    assert_eq!(cancel.top_via()?.branch(), inv.top_via()?.branch());
    // bob answered 487 to its INVITE; the B2BUA ACKs it.
    bob.expect_request(Method::Ack).await?;

    assert_eq!(only_cdr(server).await?.end_reason, "cancelled");
    Ok(())
}

#[tokio::test]
async fn callee_487_is_relayed_and_acked_hop_by_hop() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::status(487));
    let out = alice.invite("bob")?;
    let inv = bob.expect_new_invite().await?;
    let r = alice.wait_final(&out).await?;
    assert_eq!(r.status, 487);
    token_of(r.to_tag(), Side::A);
    let ack = bob.expect_request(Method::Ack).await?;
    assert_eq!(
        ack.top_via()?.branch(),
        inv.top_via()?.branch(),
        "ACK for a non-2xx reuses the branch"
    );
    assert_eq!(server.counts().await?.calls, 0);

    assert_eq!(only_cdr(server).await?.end_reason, "cancelled");
    Ok(())
}

#[tokio::test]
async fn cancel_after_ringing_then_new_call_works() -> Result<()> {
    // A 487 is ACKed and absorbed by the B2BUA: a following call on the same UAs goes through.
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ring());
    let out = alice.invite("bob")?;
    bob.expect_new_invite().await?;
    alice
        .expect_status(&out.call_id, Method::Invite, 180)
        .await?;
    alice.cancel(&out)?;
    assert_eq!(alice.wait_final(&out).await?.status, 487);
    bob.expect_request(Method::Cancel).await?;

    bob.answer_next_invite(Answer::ok());
    let d = alice.call("bob").await?;
    assert_eq!(alice.bye(&d).await?.status, 200);
    server.wait_idle().await?;
    let reasons: Vec<String> = server
        .stop()
        .await?
        .into_iter()
        .map(|c| c.end_reason)
        .collect();
    assert_eq!(reasons, ["cancelled", "normal"]);
    Ok(())
}

#[tokio::test]
async fn in_dialog_requests_are_relayed() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ok());
    let d = alice.call("bob").await?;
    let inv = bob.expect_new_invite().await?;
    let b_call = inv.call_id()?.to_string();

    let r = alice.reinvite(&d).await?;
    assert_eq!(r.status, 200, "re-INVITE: {} {}", r.status, r.reason);
    let re = bob.expect_request_in(&b_call, Method::Invite).await?;
    assert_eq!(sdp::session_name(&re.body).as_deref(), Some("alice"));
    assert!(re.to_tag().is_some(), "a re-INVITE is in the dialog");
    bob.expect_request_in(&b_call, Method::Ack).await?;

    let r = alice.request_in_dialog(&d, Method::Info).await?;
    assert_eq!(r.status, 200);
    bob.expect_request_in(&b_call, Method::Info).await?;

    assert_eq!(alice.bye(&d).await?.status, 200);
    bob.expect_request(Method::Bye).await?;
    server.wait_idle().await?;
    Ok(())
}
