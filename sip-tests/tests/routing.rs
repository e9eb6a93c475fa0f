//! Where calls go: parallel forking to every contact of a user, trunk-to-trunk routing by
//! prefix with digit stripping, and the answers for users that cannot be reached.

use anyhow::Result;
use sip_tests::{Answer, TestServer, Ua, sdp, trunk};
use understudy::sip::{Method, SipMessage, Uri};

use crate::common::alice_and_bob;

#[tokio::test]
async fn forking_rings_every_contact_and_cancels_the_losers() -> Result<()> {
    let (server, mut alice, mut bob1) = alice_and_bob().await?;
    let mut bob2 = server.ua("bob").await?;
    assert_eq!(bob2.register().await?.status, 200);
    assert_eq!(server.contacts_of("bob").await?.len(), 2);

    let out = alice.invite("bob")?;
    let inv1 = bob1.expect_new_invite().await?;
    let inv2 = bob2.expect_new_invite().await?;
    assert_eq!(inv1.uri, bob1.contact_uri());
    assert_eq!(inv2.uri, bob2.contact_uri());
    assert_eq!(
        inv1.call_id()?,
        inv2.call_id()?,
        "forks share the B-leg Call-ID"
    );
    assert_eq!(
        inv1.from_tag(),
        inv2.from_tag(),
        "forks share the B-leg From tag"
    );
    assert_ne!(
        inv1.top_via()?.branch(),
        inv2.top_via()?.branch(),
        "one transaction per fork"
    );
    bob1.reply(&inv1, 180)?;
    bob2.reply(&inv2, 180)?;
    alice
        .expect_status(&out.call_id, Method::Invite, 180)
        .await?;

    bob1.reply(&inv1, 200)?;
    let ok = alice.wait_final(&out).await?;
    assert_eq!(ok.status, 200);
    assert_eq!(sdp::session_name(&ok.body).as_deref(), Some("bob"));
    bob1.expect_request_in(inv1.call_id()?, Method::Ack).await?;

    let cancel = bob2.expect_request(Method::Cancel).await?;
    assert_eq!(
        cancel.top_via()?.branch(),
        inv2.top_via()?.branch(),
        "CANCEL matches bob2's INVITE"
    );
    // bob2 answered 487 to its INVITE; the B2BUA ACKs it.
    let ack = bob2.expect_request(Method::Ack).await?;
    assert_eq!(ack.top_via()?.branch(), inv2.top_via()?.branch());

    let d = Ua::dialog_of(&out, &ok);
    assert_eq!(alice.bye(&d).await?.status, 200);
    bob1.expect_request(Method::Bye).await?;
    server.wait_idle().await?;
    let strays: Vec<String> = bob2
        .take_unmatched()
        .iter()
        .filter(|m| m.is_request(&Method::Bye))
        .map(|m| m.summary())
        .collect();
    assert!(
        strays.is_empty(),
        "the cancelled fork got a BYE: {strays:?}"
    );

    let cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].end_reason, "normal");
    Ok(())
}

#[tokio::test]
async fn trunk_to_trunk_call_by_prefix() -> Result<()> {
    let mut carrier_in = Ua::bind("gw-in").await?;
    let mut carrier_out = Ua::bind("gw-out").await?;
    let mut cfg = TestServer::config();
    cfg.trunks.push(trunk("in", carrier_in.addr(), &["7"], 0));
    cfg.trunks.push(trunk("out", carrier_out.addr(), &["9"], 1));
    let server = TestServer::start_with(cfg).await?;
    carrier_in.set_server(server.sip);
    carrier_out.set_server(server.sip);
    carrier_out.answer_next_invite(Answer::ok());

    // No password: a 407 would make the call fail.
    let d = carrier_in.call("90155512345").await?;
    let inv = carrier_out.expect_new_invite().await?;
    let uri = Uri::parse(&inv.uri)?;
    assert_eq!(
        uri.user.as_deref(),
        Some("0155512345"),
        "prefix digit stripped: {}",
        inv.uri
    );
    assert_eq!(uri.host, carrier_out.addr().ip().to_string());
    assert_eq!(uri.port, Some(carrier_out.addr().port()));
    assert_eq!(sdp::session_name(&inv.body).as_deref(), Some("gw-in"));
    carrier_out.expect_request(Method::Ack).await?;

    assert_eq!(carrier_in.bye(&d).await?.status, 200);
    carrier_out.expect_request(Method::Bye).await?;
    server.wait_idle().await?;

    let cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].end_reason, "normal");
    assert_eq!(cdrs[0].trunk.as_deref(), Some("out"));
    Ok(())
}

#[tokio::test]
async fn user_calls_out_through_a_trunk_after_auth() -> Result<()> {
    let mut carrier = Ua::bind("gw").await?;
    let mut cfg = TestServer::config();
    cfg.trunks.push(trunk("pstn", carrier.addr(), &["0"], 0));
    let server = TestServer::start_with(cfg).await?;
    carrier.set_server(server.sip);
    let mut alice = server.ua("alice").await?;
    carrier.answer_next_invite(Answer::ok());

    let d = alice.call("0301234").await?;
    let inv = carrier.expect_new_invite().await?;
    assert_eq!(Uri::parse(&inv.uri)?.user.as_deref(), Some("0301234"));
    assert_eq!(alice.bye(&d).await?.status, 200);
    carrier.expect_request(Method::Bye).await?;
    server.wait_idle().await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_callees() -> Result<()> {
    let server = TestServer::start().await?;
    let mut alice = server.ua("alice").await?;
    let out = alice.invite("nobody")?;
    let r = alice.wait_final(&out).await?;
    assert_eq!(r.status, 404, "unknown user: {} {}", r.status, r.reason);
    // bob is a configured user with no registered contact.
    let out = alice.invite("bob")?;
    let r = alice.wait_final(&out).await?;
    assert_eq!(
        r.status, 480,
        "known user, no contact: {} {}",
        r.status, r.reason
    );
    assert_eq!(server.counts().await?.calls, 0);
    server.wait_idle().await?;
    Ok(())
}
