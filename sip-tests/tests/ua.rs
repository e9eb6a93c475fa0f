//! The test UA's own retransmission handling, and the server's 2xx retransmission until the
//! caller's ACK (RFC 3261 §13.3.1.4), which the UA makes observable.

use std::time::Duration;

use anyhow::Result;
use sip_tests::raw::RawClient;
use sip_tests::{Answer, Ua};
use understudy::sip::{Method, SipMessage};

use crate::common::alice_and_bob;

#[tokio::test]
async fn ua_absorbs_a_retransmitted_invite_and_repeats_its_answer() -> Result<()> {
    let mut bob = Ua::bind("bob").await?;
    bob.answer_next_invite(Answer::busy());
    let peer = RawClient::bind(bob.addr()).await?;
    let me = peer.addr();
    let invite = format!(
        "INVITE sip:bob@{bob} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKretrans1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:peer@{me}>;tag=p1\r\n\
         To: <sip:bob@{bob}>\r\n\
         Call-ID: retrans1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:peer@{me}>\r\n\
         Content-Length: 0\r\n\r\n",
        bob = bob.addr()
    );
    peer.send(invite.as_bytes()).await?;
    let first = bob.expect_new_invite().await?;
    assert_eq!(first.call_id()?, "retrans1");
    // The answers to the first copy; the OPTIONS barrier (answered by the UA) ends them.
    let answers: Vec<Option<u16>> = peer
        .barrier(Duration::from_secs(2))
        .await?
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(answers, [Some(180), Some(486)]);

    let again = peer
        .exchange(invite.as_bytes(), Duration::from_secs(2))
        .await?;
    let again: Vec<Option<u16>> = again.iter().map(|r| r.status()).collect();
    assert_eq!(
        again,
        [Some(486)],
        "a retransmission gets the last response again"
    );
    assert!(bob.absorbed() >= 1);
    let queued: Vec<String> = bob
        .take_unmatched()
        .iter()
        .filter(|m| m.is_request(&Method::Invite))
        .map(|m| m.summary())
        .collect();
    assert!(
        queued.is_empty(),
        "the retransmission was queued again: {queued:?}"
    );
    Ok(())
}

#[tokio::test]
async fn server_retransmits_200_until_the_caller_acks() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    alice.set_policy(|p| p.auto_ack = false);
    bob.answer_next_invite(Answer::ok());
    let out = alice.invite("bob")?;
    let ok = alice.wait_final(&out).await?;
    assert_eq!(ok.status, 200);
    // T1 = 50 ms: retransmissions at 50, 150, ... ms.
    let before = alice.absorbed();
    alice
        .wait_absorbed(before + 2, Duration::from_secs(3))
        .await?;
    let early_acks: Vec<String> = bob
        .take_unmatched()
        .iter()
        .filter(|m| m.is_request(&Method::Ack))
        .map(|m| m.summary())
        .collect();
    assert!(
        early_acks.is_empty(),
        "the callee got an ACK before the caller sent one: {early_acks:?}"
    );

    alice.ack(&ok)?;
    bob.expect_request(Method::Ack).await?;
    let d = Ua::dialog_of(&out, &ok);
    assert_eq!(alice.bye(&d).await?.status, 200);
    bob.expect_request(Method::Bye).await?;
    server.wait_idle().await?;
    Ok(())
}
