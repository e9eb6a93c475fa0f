//! Call transfer by REFER (RFC 3515), done by the B2BUA itself (RFC 5589 flows, RFC 3725
//! style joins): the transferor gets 202 and NOTIFYs with the progress (`message/sipfrag`),
//! the target an offerless INVITE, the transferee a re-INVITE with the target's offer and
//! never a REFER; RTP flows between transferee and target through the relay; the two parts
//! of the call have one CDR each, linked by `transfer_of`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sip_tests::rtp::{Receiver, Sender, sdp_addr};
use sip_tests::{Answer, DialogId, TestServer, Ua};
use tokio::net::UdpSocket;
use understudy::config::MediaMode;
use understudy::sip::{Method, SipMessage};

async fn relay_server(lo: u16, hi: u16) -> Result<TestServer> {
    let mut cfg = TestServer::config();
    cfg.media.mode = MediaMode::Relay;
    cfg.media.rtp_ports = (lo, hi);
    let mut carol = cfg.users.first().context("a built-in user")?.clone();
    carol.name = "carol".into();
    carol.password = "carol-secret".into();
    cfg.users.push(carol);
    TestServer::start_with(cfg).await
}

async fn registered(server: &TestServer, name: &str) -> Result<Ua> {
    let mut ua = server.ua(name).await?;
    ensure!(ua.register().await?.status == 200, "{name} registers");
    Ok(ua)
}

/// The dialog `ua` has in call `call_id`.
fn dialog_in(ua: &Ua, call_id: &str) -> Result<DialogId> {
    ua.live_dialogs()
        .into_iter()
        .find(|d| d.id.call_id == call_id)
        .map(|d| d.id)
        .with_context(|| format!("{} has no dialog in {call_id}", ua.user()))
}

/// The next re-INVITE (an INVITE inside the dialog) `ua` gets in call `call_id`.
pub(crate) async fn expect_reinvite(
    ua: &mut Ua,
    call_id: &str,
) -> Result<understudy::sip::Request> {
    let m = ua
        .expect("a re-INVITE", |m| {
            m.request().is_some_and(|r| {
                r.method == Method::Invite
                    && r.to_tag().is_some()
                    && r.call_id().ok() == Some(call_id)
            })
        })
        .await?;
    m.request().cloned().context("a request")
}

/// The transferor's NOTIFYs in call `call_id` up to the one that ends the subscription:
/// their sipfrag status lines, in order.
pub(crate) async fn notifies_until_done(ua: &mut Ua, call_id: &str) -> Result<Vec<String>> {
    let mut progress = Vec::new();
    loop {
        let n = ua.expect_request_in(call_id, Method::Notify).await?;
        ensure!(
            n.headers.get(&understudy::sip::HeaderName::Event) == Some("refer"),
            "a NOTIFY for another event: {n:?}"
        );
        progress.push(sipfrag(&n));
        let state = n
            .headers
            .get(&understudy::sip::HeaderName::SubscriptionState)
            .unwrap_or("");
        if state.starts_with("terminated") {
            return Ok(progress);
        }
        ensure!(progress.len() < 5, "NOTIFYs without an end: {progress:?}");
    }
}

/// The sipfrag status line of a NOTIFY.
fn sipfrag(n: &understudy::sip::Request) -> String {
    String::from_utf8_lossy(&n.body)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// RTP both ways between two phones, each sending to the relay address its SDP names.
async fn media_flows(x: &Ua, x_id: &DialogId, y: &Ua, y_id: &DialogId) -> Result<()> {
    let relay_of = |ua: &Ua, id: &DialogId| -> Result<std::net::SocketAddr> {
        let d = ua.dialog(id).context("dialog")?;
        sdp_addr(&d.remote_sdp.context("no SDP")?).context("no media address")
    };
    let own = |ua: &Ua| sdp_addr(sip_tests::sdp::body(ua.addr(), "x", 1).as_bytes()).context("sdp");
    let xs = Arc::new(UdpSocket::bind(own(x)?).await?);
    let ys = Arc::new(UdpSocket::bind(own(y)?).await?);
    let (at_x, at_y) = (Receiver::start(xs.clone()), Receiver::start(ys.clone()));
    let from_x = Sender::start(xs, relay_of(x, x_id)?, 0x1001);
    let from_y = Sender::start(ys, relay_of(y, y_id)?, 0x2002);
    let ok_y = at_y.wait_for(20, Duration::from_secs(5)).await;
    let ok_x = at_x.wait_for(20, Duration::from_secs(5)).await;
    let (n_x, n_y) = (at_x.packets(), at_y.packets());
    from_x.stop().await;
    from_y.stop().await;
    at_x.stop().await;
    at_y.stop().await;
    ensure!(
        ok_x && ok_y,
        "RTP {} → {}: {n_y}, back: {n_x}",
        x.user(),
        y.user()
    );
    Ok(())
}

/// A blind transfer by the callee (`by_callee`) or by the caller, to carol.
async fn blind_transfer(by_callee: bool, ports: (u16, u16)) -> Result<()> {
    let server = relay_server(ports.0, ports.1).await?;
    let mut alice = registered(&server, "alice").await?;
    let mut bob = registered(&server, "bob").await?;
    let mut carol = registered(&server, "carol").await?;
    bob.answer_next_invite(Answer::ok());
    carol.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    let b_invite_call_id = bob
        .live_dialogs()
        .first()
        .map(|d| d.id.call_id.clone())
        .context("bob's dialog")?;
    let b = dialog_in(&bob, &b_invite_call_id)?;
    media_flows(&alice, &a, &bob, &b).await?;

    // The transferor refers the transferee to carol.
    let (transferor, t_id, transferee, e_id) = if by_callee {
        (&mut bob, b.clone(), &mut alice, a.clone())
    } else {
        (&mut alice, a.clone(), &mut bob, b.clone())
    };
    let r = transferor
        .refer(&t_id, &format!("<sip:carol@{}>", "pbx.local"))
        .await?;
    ensure!(r.status == 202, "REFER: {} {}", r.status, r.reason);
    let trying = transferor
        .expect_request_in(&t_id.call_id, Method::Notify)
        .await?;
    ensure!(
        trying.headers.get(&understudy::sip::HeaderName::Event) == Some("refer")
            && sipfrag(&trying) == "SIP/2.0 100 Trying",
        "first NOTIFY: {}",
        sipfrag(&trying)
    );

    // carol gets an offerless INVITE from the B2BUA; the transferee a re-INVITE with her offer.
    let to_carol = carol.expect_new_invite().await?;
    ensure!(
        to_carol.body.is_empty(),
        "the INVITE to the target is offerless"
    );
    let re = expect_reinvite(transferee, &e_id.call_id).await?;
    ensure!(
        !re.body.is_empty(),
        "the transferee's re-INVITE carries the target's offer"
    );
    let progress = notifies_until_done(transferor, &t_id.call_id).await?;
    ensure!(
        progress.last().map(String::as_str) == Some("SIP/2.0 200 OK"),
        "NOTIFYs after 100 Trying: {progress:?}"
    );
    let _bye = transferor
        .expect_request_in(&t_id.call_id, Method::Bye)
        .await?;
    // Phones send their own BYE after the final NOTIFY; crossing ours, it gets 200.
    let own = transferor.bye(&t_id).await?;
    ensure!(
        own.status == 200,
        "the transferor's own BYE: {}",
        own.status
    );
    let c = dialog_in(&carol, to_carol.call_id()?)?;

    // The transferee and carol talk through the relay.
    media_flows(transferee, &e_id, &carol, &c).await?;
    let calls = server.get_json("/calls").await?;
    ensure!(
        calls["calls"].as_array().map(Vec::len) == Some(1),
        "one call after the transfer: {calls}"
    );

    // carol hangs up: the transferee gets the BYE.
    ensure!(carol.bye(&c).await?.status == 200, "carol's BYE");
    transferee
        .expect_request_in(&e_id.call_id, Method::Bye)
        .await?;
    let cdrs = server.stop().await?;
    ensure!(cdrs.len() == 2, "two CDRs, one per part: {cdrs:?}");
    let (before, after) = (&cdrs[0], &cdrs[1]);
    ensure!(
        before.token == after.token
            && before.end_reason == "transferred"
            && before.callee == "bob"
            && after.end_reason == "normal"
            && after.transfer_of.as_deref() == Some(t_id.call_id.as_str())
            && (before.call_id == t_id.call_id || before.b_call_id == t_id.call_id),
        "the CDR chain: {cdrs:#?}"
    );
    if by_callee {
        ensure!(after.callee.contains("carol"), "{after:?}");
    } else {
        ensure!(after.caller.contains("carol"), "{after:?}");
    }
    Ok(())
}

#[tokio::test]
async fn blind_transfer_by_the_callee_joins_caller_and_target() -> Result<()> {
    blind_transfer(true, (34000, 34099)).await
}

#[tokio::test]
async fn blind_transfer_by_the_caller_joins_callee_and_target() -> Result<()> {
    blind_transfer(false, (34100, 34199)).await
}

/// A transfer that fails keeps the original call: a target that does not exist gets the
/// REFER refused; a busy target gets the transferor a NOTIFY with 486, and caller and callee
/// still talk, and end with one normal CDR.
#[tokio::test]
async fn a_failed_transfer_keeps_the_original_call() -> Result<()> {
    let server = relay_server(34200, 34299).await?;
    let mut alice = registered(&server, "alice").await?;
    let mut bob = registered(&server, "bob").await?;
    let carol = registered(&server, "carol").await?;
    bob.answer_next_invite(Answer::ok());
    carol.answer_next_invite(Answer::busy());
    let a = alice.call("bob").await?;
    let b = bob
        .live_dialogs()
        .first()
        .map(|d| d.id.clone())
        .context("bob's dialog")?;

    let r = bob.refer(&b, "<sip:nobody@pbx.local>").await?;
    ensure!(
        r.status == 404,
        "REFER to an unknown user: {} {}",
        r.status,
        r.reason
    );

    let r = bob.refer(&b, "<sip:carol@pbx.local>").await?;
    ensure!(r.status == 202, "REFER: {} {}", r.status, r.reason);
    let progress = notifies_until_done(&mut bob, &b.call_id).await?;
    ensure!(
        progress
            .last()
            .is_some_and(|l| l.starts_with("SIP/2.0 486")),
        "NOTIFYs: {progress:?}"
    );
    media_flows(&alice, &a, &bob, &b).await?;
    ensure!(alice.bye(&a).await?.status == 200, "BYE");
    bob.expect_request_in(&b.call_id, Method::Bye).await?;
    let cdrs = server.stop().await?;
    ensure!(
        cdrs.len() == 1 && cdrs[0].end_reason == "normal" && cdrs[0].transfer_of.is_none(),
        "{cdrs:#?}"
    );
    Ok(())
}

/// `s` %-escaped for a URI header value.
pub(crate) fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('@', "%40")
        .replace(';', "%3B")
        .replace('=', "%3D")
}

/// The Replaces value naming dialog `d` as the PBX (the other end) sees it.
pub(crate) fn replaces_of(d: &DialogId) -> String {
    format!(
        "{};to-tag={};from-tag={}",
        d.call_id, d.remote_tag, d.local_tag
    )
}

/// Attended transfer: alice talks to bob; bob calls carol (the consultation), then REFERs
/// alice to carol with Replaces naming his call with carol. carol's leg is joined to alice's
/// call in bob's place; bob's two legs are hung up; three CDRs: both of bob's calls end
/// `transferred`, and alice–carol's names bob's leg in `transfer_of`.
#[tokio::test]
async fn attended_transfer_joins_the_consultation_party() -> Result<()> {
    let server = relay_server(34300, 34399).await?;
    let mut alice = registered(&server, "alice").await?;
    let mut bob = registered(&server, "bob").await?;
    let mut carol = registered(&server, "carol").await?;
    bob.answer_next_invite(Answer::ok());
    carol.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    let b1 = bob
        .live_dialogs()
        .first()
        .map(|d| d.id.clone())
        .context("bob's leg")?;
    let b2 = bob.call("carol").await?;
    let c = carol
        .live_dialogs()
        .first()
        .map(|d| d.id.clone())
        .context("carol's leg")?;
    let calls = server.get_json("/calls").await?;
    ensure!(
        calls["calls"].as_array().map(Vec::len) == Some(2),
        "{calls}"
    );

    // As Twinkle writes it: the consultation's remote target (our Contact, no user part).
    let contact = bob
        .dialog(&b2)
        .map(|d| d.remote_target)
        .context("bob's consultation dialog")?;
    let refer_to = format!("<{contact}?Replaces={}>", escape(&replaces_of(&b2)));
    let r = bob.refer(&b1, &refer_to).await?;
    ensure!(
        r.status == 202,
        "REFER with Replaces: {} {}",
        r.status,
        r.reason
    );
    let to_carol = expect_reinvite(&mut carol, &c.call_id).await?;
    ensure!(
        to_carol.body.is_empty(),
        "carol's re-INVITE is offerless (she offers)"
    );
    let to_alice = expect_reinvite(&mut alice, &a.call_id).await?;
    ensure!(
        !to_alice.body.is_empty(),
        "alice's re-INVITE carries carol's offer"
    );
    let progress = notifies_until_done(&mut bob, &b1.call_id).await?;
    ensure!(
        progress.last().map(String::as_str) == Some("SIP/2.0 200 OK"),
        "{progress:?}"
    );
    bob.expect_request_in(&b1.call_id, Method::Bye).await?;
    bob.expect_request_in(&b2.call_id, Method::Bye).await?;
    media_flows(&alice, &a, &carol, &c).await?;
    let calls = server.get_json("/calls").await?;
    ensure!(
        calls["calls"].as_array().map(Vec::len) == Some(1),
        "one call left: {calls}"
    );

    ensure!(carol.bye(&c).await?.status == 200, "carol's BYE");
    alice.expect_request_in(&a.call_id, Method::Bye).await?;
    let cdrs = server.stop().await?;
    ensure!(cdrs.len() == 3, "three CDRs: {cdrs:#?}");
    let last = &cdrs[2];
    ensure!(
        cdrs[..2].iter().all(|c| c.end_reason == "transferred")
            && last.end_reason == "normal"
            && last.transfer_of.as_deref() == Some(b1.call_id.as_str())
            && last.call_id == a.call_id
            && last.b_call_id == c.call_id
            && last.callee == "carol",
        "the CDR chain: {cdrs:#?}"
    );
    Ok(())
}

/// An INVITE with Replaces from a phone (RFC 3891): carol takes bob's place in his call
/// with alice; alice is re-INVITEd with carol's offer, bob gets a BYE; carol's own 200
/// carries alice's answer.
#[tokio::test]
async fn an_invite_with_replaces_takes_the_legs_place() -> Result<()> {
    let server = relay_server(34400, 34499).await?;
    let mut alice = registered(&server, "alice").await?;
    let mut bob = registered(&server, "bob").await?;
    let mut carol = registered(&server, "carol").await?;
    bob.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    let b = bob
        .live_dialogs()
        .first()
        .map(|d| d.id.clone())
        .context("bob's leg")?;

    // A Replaces that names nothing: 481.
    let bad = carol.invite_with(
        "bob",
        Some(sip_tests::sdp::body(carol.addr(), "carol", 1)),
        &[(
            understudy::sip::HeaderName::Replaces,
            "nothing@x;to-tag=a;from-tag=b".into(),
        )],
    )?;
    let r = carol.wait_final(&bad).await?;
    ensure!(r.status == 481, "Replaces naming no dialog: {}", r.status);

    let out = carol.invite_with(
        "bob",
        Some(sip_tests::sdp::body(carol.addr(), "carol", 1)),
        &[(understudy::sip::HeaderName::Replaces, replaces_of(&b))],
    )?;
    let to_alice = expect_reinvite(&mut alice, &a.call_id).await?;
    ensure!(
        !to_alice.body.is_empty(),
        "alice's re-INVITE carries carol's offer"
    );
    let ok = carol.wait_final(&out).await?;
    ensure!(
        ok.status == 200 && !ok.body.is_empty(),
        "carol's INVITE: {}",
        ok.status
    );
    let c = Ua::dialog_of(&out, &ok);
    bob.expect_request_in(&b.call_id, Method::Bye).await?;
    media_flows(&alice, &a, &carol, &c).await?;

    ensure!(alice.bye(&a).await?.status == 200, "alice's BYE");
    carol.expect_request_in(&c.call_id, Method::Bye).await?;
    let cdrs = server.stop().await?;
    ensure!(
        cdrs.len() == 2
            && cdrs[0].end_reason == "replaced"
            && cdrs[1].end_reason == "normal"
            && cdrs[1].transfer_of.as_deref() == Some(b.call_id.as_str())
            && cdrs[1].b_call_id == c.call_id,
        "the CDR chain: {cdrs:#?}"
    );
    Ok(())
}

/// A REFER loop (bob and carol passing alice back and forth) stops at the limit of 8
/// transfers per call with 403, not in a storm; the call itself goes on.
#[tokio::test]
async fn a_transfer_loop_stops_at_the_limit() -> Result<()> {
    let server = relay_server(34500, 34599).await?;
    let mut alice = registered(&server, "alice").await?;
    let mut parties = [
        registered(&server, "bob").await?,
        registered(&server, "carol").await?,
    ];
    parties[0].answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    let first = parties[0].expect_new_invite().await?;
    let mut leg = dialog_in(&parties[0], first.call_id()?)?;
    for i in 0..8 {
        let (x, y) = (i % 2, (i + 1) % 2);
        let target = parties[y].user().to_string();
        parties[y].answer_next_invite(Answer::ok());
        let r = parties[x]
            .refer(&leg, &format!("<sip:{target}@pbx.local>"))
            .await?;
        ensure!(
            r.status == 202,
            "transfer {}: {} {}",
            i + 1,
            r.status,
            r.reason
        );
        let n = notifies_until_done(&mut parties[x], &leg.call_id).await?;
        ensure!(
            n.last().map(String::as_str) == Some("SIP/2.0 200 OK"),
            "{n:?}"
        );
        parties[x]
            .expect_request_in(&leg.call_id, Method::Bye)
            .await?;
        let inv = parties[y].expect_new_invite().await?;
        leg = dialog_in(&parties[y], inv.call_id()?)?;
    }
    let r = parties[0].refer(&leg, "<sip:carol@pbx.local>").await?;
    ensure!(
        r.status == 403,
        "the ninth transfer: {} {}",
        r.status,
        r.reason
    );
    ensure!(alice.bye(&a).await?.status == 200, "the call is still up");
    let cdrs = server.stop().await?;
    ensure!(
        cdrs.len() == 9
            && cdrs
                .iter()
                .filter(|c| c.end_reason == "transferred")
                .count()
                == 8,
        "{cdrs:#?}"
    );
    Ok(())
}
