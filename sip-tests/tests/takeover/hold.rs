//! A call on hold across a takeover: the holder's `sendonly` survives the re-bind on both
//! legs, the relay sends nothing towards the holder (before and after the kill), and the
//! call resumes with media both ways through the new active.

use std::sync::Arc;

use sip_tests::rtp::{Receiver, Sender, sdp_addr};
use tokio::net::UdpSocket;

use super::*;

/// The direction of the last SDP `ua` got from the B2BUA in dialog `id`.
fn got_direction(ua: &Ua, id: &DialogId) -> Result<&'static str> {
    let d = ua.dialog(id).context("dialog gone")?;
    let sdp = d.remote_sdp.context("no SDP received")?;
    Ok(sdp::direction(&sdp))
}

/// RTP from each phone's media socket to the relay port its SDP names; returns what each
/// phone receives. `alice_to`/`bob_to`: the relay address in the SDP each phone got.
struct Media {
    at_alice: Receiver,
    at_bob: Receiver,
    from_alice: Sender,
    from_bob: Sender,
}

impl Media {
    async fn start(alice: &Ua, bob: &Ua, alice_to: SocketAddr, bob_to: SocketAddr) -> Result<Self> {
        let sock = |ua: &Ua| {
            sdp_addr(sdp::body(ua.addr(), "x", 1).as_bytes()).context("the phone's RTP address")
        };
        let a = Arc::new(UdpSocket::bind(sock(alice)?).await?);
        let b = Arc::new(UdpSocket::bind(sock(bob)?).await?);
        Ok(Self {
            at_alice: Receiver::start(a.clone()),
            at_bob: Receiver::start(b.clone()),
            from_alice: Sender::start(a, alice_to, 0xa1),
            from_bob: Sender::start(b, bob_to, 0xb0b),
        })
    }

    async fn stop(self) {
        self.from_alice.stop().await;
        self.from_bob.stop().await;
        self.at_alice.stop().await;
        self.at_bob.stop().await;
    }
}

/// The relay address a phone got in dialog `id`.
fn relay_of(ua: &Ua, id: &DialogId) -> Result<SocketAddr> {
    let d = ua.dialog(id).context("dialog gone")?;
    sdp_addr(&d.remote_sdp.context("no SDP")?).context("no media address")
}

/// Wait until the node's relay counted `n` packets from Bob (leg B) in the one call.
async fn relay_got_from_bob(node: &Node, n: u64) -> Result<()> {
    node.wait_json(
        Duration::from_secs(5),
        "/calls",
        "the relay counting Bob's RTP",
        |v| {
            v["calls"][0]["media"]["b_to_a_packets"]
                .as_u64()
                .unwrap_or(0)
                >= n
        },
    )
    .await?;
    Ok(())
}

/// Issue acceptance: a call on hold stays on hold across a takeover, then resumes with media
/// both ways (relay mode, so the media path moves with the takeover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_hold_stays_on_hold_across_a_takeover_then_resumes() -> Result<()> {
    let names = vec!["alice".to_string(), "bob".to_string()];
    let spec = PairSpec {
        extra: "[media]\nmode = \"relay\"\nrtp_ports = \"31000-31099\"\n".into(),
        ..PairSpec::default()
    }
    .with_users(&names);
    let mut pair = Pair::start("hold", &spec).await?;
    let mut uas = phones(&names, pair.main.sip, false).await?;
    let bob = uas.pop().context("bob")?;
    let mut alice = uas.pop().context("alice")?;
    wait_synced(&pair.standby, &names).await?;
    answer_n(&bob, 1, &Answer::ok());
    let a = alice.call("bob").await?;
    let b = bob
        .live_dialogs()
        .first()
        .map(|d| d.id.clone())
        .context("bob's dialog")?;

    // Alice holds: her re-INVITE offers sendonly, Bob answers recvonly.
    alice.set_hold(&a, true)?;
    let r = alice.reinvite(&a).await?;
    ensure!(r.status == 200, "hold re-INVITE: {} {}", r.status, r.reason);
    ensure!(
        got_direction(&bob, &b)? == "sendonly",
        "Bob was offered {}",
        got_direction(&bob, &b)?
    );
    ensure!(
        got_direction(&alice, &a)? == "recvonly",
        "Alice got {}",
        got_direction(&alice, &a)?
    );

    // On hold, the relay carries Alice's packets to Bob and nothing towards Alice.
    let media = Media::start(&alice, &bob, relay_of(&alice, &a)?, relay_of(&bob, &b)?).await?;
    ensure!(
        media.at_bob.wait_for(20, Duration::from_secs(5)).await,
        "Alice → Bob on hold"
    );
    relay_got_from_bob(&pair.main, 20).await?;
    ensure!(
        media.at_alice.packets() == 0,
        "the relay sent {} of Bob's packets to Alice, who holds the call",
        media.at_alice.packets()
    );
    media.stop().await;

    let report = kill_and_settle(&mut pair, 1, 1, Duration::from_secs(15), "hold").await?;
    check_report(&report, &[("recovered", 1), ("failed", 0), ("orphaned", 0)])?;
    let standby = pair.standby.sip;
    // Bob got alice's hold re-INVITE before the re-bind's; alice only the re-bind's.
    let rebound = |ua: &Ua, id: &DialogId| {
        let want = if ua.user() == "bob" { 2 } else { 1 };
        ua.dialog(id)
            .is_some_and(|d| d.reinvites >= want && d.last_reinvite_from == Some(standby))
    };
    ensure!(
        rebound(&alice, &a) && rebound(&bob, &b),
        "both legs re-bound by the stand-by"
    );
    // Still on hold: the re-bind carried Alice's sendonly to Bob, Bob's recvonly to Alice.
    ensure!(
        got_direction(&bob, &b)? == "sendonly",
        "after the re-bind Bob has {}",
        got_direction(&bob, &b)?
    );
    ensure!(
        got_direction(&alice, &a)? == "recvonly",
        "after the re-bind Alice has {}",
        got_direction(&alice, &a)?
    );
    let media = Media::start(&alice, &bob, relay_of(&alice, &a)?, relay_of(&bob, &b)?).await?;
    ensure!(
        media.at_bob.wait_for(20, Duration::from_secs(5)).await,
        "Alice → Bob via the new active"
    );
    relay_got_from_bob(&pair.standby, 20).await?;
    ensure!(
        media.at_alice.packets() == 0,
        "the new active's relay sent {} of Bob's packets to Alice, who holds the call",
        media.at_alice.packets()
    );
    media.stop().await;

    // Resume: media both ways through the new active.
    alice.set_hold(&a, false)?;
    let r = alice.reinvite(&a).await?;
    ensure!(
        r.status == 200,
        "resume re-INVITE: {} {}",
        r.status,
        r.reason
    );
    ensure!(
        got_direction(&bob, &b)? == "sendrecv" && got_direction(&alice, &a)? == "sendrecv",
        "resumed"
    );
    let media = Media::start(&alice, &bob, relay_of(&alice, &a)?, relay_of(&bob, &b)?).await?;
    ensure!(
        media.at_bob.wait_for(20, Duration::from_secs(5)).await,
        "Alice → Bob resumed"
    );
    ensure!(
        media.at_alice.wait_for(20, Duration::from_secs(5)).await,
        "Bob → Alice resumed"
    );
    media.stop().await;

    ensure!(
        alice.bye(&a).await?.status == 200,
        "BYE through the new active"
    );
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure!(
        cdrs.len() == 1 && cdrs[0].recovered && cdrs[0].end_reason == "normal",
        "CDRs: {cdrs:?}"
    );
    Ok(())
}
