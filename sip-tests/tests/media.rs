//! Media relay (`[media] mode = "relay"`): RTP and RTCP through the B2BUA between real
//! sockets, SDP rewritten to the relay, symmetric latching, counters in `/calls` and the CDR,
//! and a clean 503 when the port range runs out.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sip_tests::rtp::{Receiver, Sender, sdp_addr};
use sip_tests::{Answer, TestServer};
use tokio::net::UdpSocket;
use understudy::config::MediaMode;

async fn relay_server(lo: u16, hi: u16) -> Result<TestServer> {
    let mut cfg = TestServer::config();
    cfg.media.mode = MediaMode::Relay;
    cfg.media.rtp_ports = (lo, hi);
    TestServer::start_with(cfg).await
}

#[tokio::test]
async fn rtp_flows_both_ways_through_the_relay_and_the_cdr_counts_it() -> Result<()> {
    let server = relay_server(24000, 24099).await?;
    let mut alice = server.ua("alice").await?;
    let mut bob = server.ua("bob").await?;
    assert_eq!(alice.register().await?.status, 200);
    assert_eq!(bob.register().await?.status, 200);
    bob.answer_next_invite(Answer::ok());
    let out = alice.invite("bob")?;
    let inv = bob.expect_new_invite().await?;
    let ok = alice.wait_final(&out).await?;
    assert_eq!(ok.status, 200);

    // Each side sees the relay, not the other party, in the SDP it got.
    let to_b = sdp_addr(&inv.body).context("SDP in the B-leg INVITE")?;
    let to_a = sdp_addr(&ok.body).context("SDP in the 200 to A")?;
    for a in [to_a, to_b] {
        assert!(
            a.ip().is_loopback() && (24000..=24099).contains(&a.port()),
            "{a}"
        );
    }
    assert_ne!(to_a, to_b, "one port pair per leg");
    let alice_sdp =
        sdp_addr(sip_tests::sdp::body(alice.addr(), "x", 1).as_bytes()).context("sdp")?;
    let bob_sdp = sdp_addr(sip_tests::sdp::body(bob.addr(), "x", 1).as_bytes()).context("sdp")?;
    assert_ne!(to_b, alice_sdp);

    // Bob listens where his SDP says; Alice sends from another socket than hers (like real
    // soft-phones): the relay must latch onto it for Bob's packets.
    let bob_rtp = Arc::new(UdpSocket::bind(bob_sdp).await?);
    let alice_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let at_bob = Receiver::start(bob_rtp.clone());
    let at_alice = Receiver::start(alice_rtp.clone());
    let from_alice = Sender::start(alice_rtp.clone(), to_a, 1111);
    assert!(
        at_bob.wait_for(5, Duration::from_secs(3)).await,
        "Alice's RTP reaches Bob"
    );
    let from_bob = Sender::start(bob_rtp.clone(), to_b, 2222);
    assert!(
        at_alice.wait_for(5, Duration::from_secs(3)).await,
        "Bob's RTP reaches Alice's latched address"
    );
    assert!(at_bob.wait_for(100, Duration::from_secs(5)).await);

    // Live counters in /calls.
    let calls = server.get_json("/calls").await?;
    let media = &calls["calls"][0]["media"];
    assert!(media["a_to_b_packets"].as_u64().unwrap_or(0) > 0, "{calls}");
    assert!(media["b_to_a_packets"].as_u64().unwrap_or(0) > 0, "{calls}");

    let sent_a = from_alice.stop().await;
    let sent_b = from_bob.stop().await;
    // Let the last packets cross the relay before counting.
    assert!(at_bob.wait_for(sent_a, Duration::from_secs(2)).await);
    assert!(at_alice.wait_for(sent_b, Duration::from_secs(2)).await);
    let got_b = at_bob.stop().await;
    let got_a = at_alice.stop().await;
    assert_eq!(got_b.packets, sent_a);
    assert_eq!(got_b.lost, 0);
    assert_eq!(got_a.packets, sent_b);
    assert!(got_b.longest_gap < Duration::from_millis(200), "{got_b:?}");

    let dialog = sip_tests::ua::DialogId {
        call_id: out.call_id.clone(),
        local_tag: out.local_tag.clone(),
        remote_tag: understudy::sip::SipMessage::to_tag(&ok).unwrap_or_default(),
    };
    assert_eq!(alice.bye(&dialog).await?.status, 200);
    let cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), 1);
    let m = cdrs[0].media.context("media counters in the CDR")?;
    let within = |got: u64, sent: u64| got.abs_diff(sent) * 100 <= sent.max(1);
    assert!(
        within(m.a_to_b_packets, sent_a),
        "CDR a→b {} vs sent {sent_a}",
        m.a_to_b_packets
    );
    assert!(
        within(m.b_to_a_packets, sent_b),
        "CDR b→a {} vs sent {sent_b}",
        m.b_to_a_packets
    );
    assert_eq!(m.a_to_b_lost, 0);
    Ok(())
}

#[tokio::test]
async fn running_out_of_ports_refuses_the_call_with_503() -> Result<()> {
    // Two port pairs: exactly one call.
    let server = relay_server(24200, 24203).await?;
    let mut alice = server.ua("alice").await?;
    let mut bob = server.ua("bob").await?;
    assert_eq!(alice.register().await?.status, 200);
    assert_eq!(bob.register().await?.status, 200);
    bob.answer_next_invite(Answer::ok());
    let first = alice.call("bob").await?;
    let out = alice.invite("bob")?;
    let r = alice.wait_final(&out).await?;
    assert_eq!(r.status, 503, "{} {}", r.status, r.reason);
    // When the first call ends its ports are free again.
    assert_eq!(alice.bye(&first).await?.status, 200);
    bob.answer_next_invite(Answer::ok());
    let again = alice.call("bob").await?;
    assert_eq!(alice.bye(&again).await?.status, 200);
    Ok(())
}

/// Hijack-proof latching (`src/media/latch.rs`): once a leg's media is latched, a third
/// party sending RTP to that leg's relay port — with its own SSRC or the caller's — reaches
/// nobody, and the relay keeps sending the other side's media to the real caller.
#[tokio::test]
async fn a_third_party_rtp_stream_cannot_take_over_the_media() -> Result<()> {
    let server = relay_server(24300, 24399).await?;
    let mut alice = server.ua("alice").await?;
    let mut bob = server.ua("bob").await?;
    assert_eq!(alice.register().await?.status, 200);
    assert_eq!(bob.register().await?.status, 200);
    bob.answer_next_invite(Answer::ok());
    let out = alice.invite("bob")?;
    let inv = bob.expect_new_invite().await?;
    let ok = alice.wait_final(&out).await?;
    assert_eq!(ok.status, 200);
    let to_b = sdp_addr(&inv.body).context("SDP in the B-leg INVITE")?;
    let to_a = sdp_addr(&ok.body).context("SDP in the 200 to A")?;
    let bob_sdp = sdp_addr(sip_tests::sdp::body(bob.addr(), "x", 1).as_bytes()).context("sdp")?;

    let bob_rtp = Arc::new(UdpSocket::bind(bob_sdp).await?);
    let alice_rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let intruder = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let at_bob = Receiver::start(bob_rtp.clone());
    let at_alice = Receiver::start(alice_rtp.clone());
    let at_intruder = Receiver::start(intruder.clone());
    let from_alice = Sender::start(alice_rtp.clone(), to_a, 1111);
    let from_bob = Sender::start(bob_rtp.clone(), to_b, 2222);
    assert!(at_bob.wait_for(10, Duration::from_secs(3)).await);
    assert!(at_alice.wait_for(10, Duration::from_secs(3)).await);

    // Mid-call: a stream from a third address into leg A's relay port, first with a new
    // SSRC, then with the caller's own.
    for ssrc in [6666, 1111] {
        let inject = Sender::start(intruder.clone(), to_a, ssrc);
        let before = at_alice.packets();
        // 30 of Bob's packets reach Alice meanwhile: the injection ran for about 0.6 s.
        assert!(at_alice.wait_for(before + 30, Duration::from_secs(5)).await);
        let injected = inject.stop().await;
        assert!(injected >= 20, "the intruder sent {injected}");
    }
    let alice_sent = from_alice.sent();
    assert!(
        at_bob
            .wait_for(alice_sent.saturating_sub(5), Duration::from_secs(3))
            .await
    );
    assert_eq!(
        at_bob.from_ssrc(6666),
        0,
        "the intruder's stream reached Bob"
    );
    assert!(
        at_bob.from_ssrc(1111) <= alice_sent,
        "more packets with Alice's SSRC than Alice sent: {} > {alice_sent}",
        at_bob.from_ssrc(1111)
    );
    assert_eq!(
        at_intruder.packets(),
        0,
        "Bob's media was diverted to the intruder"
    );
    let calls = server.get_json("/calls").await?;
    let foreign = calls["calls"][0]["media"]["a_foreign"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        foreign >= 40,
        "dropped foreign packets are counted: {calls}"
    );
    from_alice.stop().await;
    from_bob.stop().await;
    Ok(())
}
