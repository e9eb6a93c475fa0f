//! The test UA as a "smart endpoint" (what takeover tests rely on), driven directly by a raw
//! socket playing the new active: the dialog query (RFC 4235 dialog-info as the server parses
//! it), the offerless re-INVITE with the answer due in the ACK, the target refresh that moves
//! later requests to the new address, and the check-sync reset.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sip_tests::raw::{RawClient, Received};
use sip_tests::{Answer, Dialog, QueryReply, Ua, sdp};
use understudy::pair::dialoginfo;
use understudy::sip::{HeaderName, Message, Method, Request, SipMessage, response_to};

use crate::common::alice_and_bob;

const WAIT: Duration = Duration::from_secs(2);

fn subscribe(raw: &RawClient, ua: &Ua, call_id: &str) -> Vec<u8> {
    let me = raw.addr();
    format!(
        "SUBSCRIBE {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:takeover@{me}>;tag=sub-{call_id}\r\n\
         To: <{uri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:{me}>\r\n\
         Event: dialog\r\n\
         Accept: application/dialog-info+xml\r\n\
         Expires: 0\r\n\
         Content-Length: 0\r\n\r\n",
        uri = ua.contact_uri(),
    )
    .into_bytes()
}

/// Receive until `n` messages arrived (or `WAIT` passed).
async fn recv_n(raw: &RawClient, n: usize) -> Result<Vec<Received>> {
    let mut out = Vec::new();
    while out.len() < n {
        match raw.recv(WAIT).await? {
            Some(r) => out.push(r),
            None => break,
        }
    }
    Ok(out)
}

fn request_of(r: &Received) -> Option<&Request> {
    match &r.message {
        Some(Message::Request(q)) => Some(q),
        _ => None,
    }
}

#[tokio::test]
async fn smart_ua_answers_a_dialog_query_with_its_own_view_of_its_dialogs() -> Result<()> {
    let (_server, mut alice, bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    let b: Dialog = bob.live_dialogs().pop().context("bob has the call")?;
    let raw = RawClient::bind(bob.addr()).await?;
    raw.send(&subscribe(&raw, &bob, "query1")).await?;
    let got = recv_n(&raw, 2).await?;
    ensure!(
        got.len() == 2,
        "want a 200 and a NOTIFY, got {:?}",
        got.iter().map(Received::first_line).collect::<Vec<_>>()
    );
    let ok = got
        .iter()
        .find(|r| r.status() == Some(200))
        .and_then(|r| r.message.clone())
        .context("no 200 to the SUBSCRIBE")?;
    let tag = ok.to_tag().context("200 to SUBSCRIBE without To tag")?;
    ensure!(
        ok.headers().get(&HeaderName::Contact).is_some(),
        "no Contact"
    );
    let notify = got
        .iter()
        .find_map(request_of)
        .context("no NOTIFY")?
        .clone();
    ensure!(notify.method == Method::Notify);
    ensure!(
        notify.call_id()? == "query1",
        "NOTIFY outside the subscription"
    );
    ensure!(
        notify.from_tag().as_deref() == Some(tag.as_str()),
        "From tag"
    );
    ensure!(notify.to_tag().as_deref() == Some("sub-query1"), "To tag");
    ensure!(
        notify.uri == format!("sip:{}", raw.addr()),
        "R-URI {}",
        notify.uri
    );
    ensure!(notify.headers.get(&HeaderName::Event) == Some("dialog"));
    let ss = notify
        .headers
        .get(&HeaderName::SubscriptionState)
        .unwrap_or_default();
    ensure!(ss.starts_with("terminated"), "Subscription-State: {ss}");
    ensure!(notify.headers.get(&HeaderName::ContentType) == Some("application/dialog-info+xml"));
    raw.send(&response_to(&notify, 200, None).to_bytes())
        .await?;
    // The document, as the server's parser reads it: bob's own view of the B leg.
    let info = dialoginfo::parse(&String::from_utf8_lossy(&notify.body))?;
    ensure!(info.full && info.dialogs.len() == 1, "{info:?}");
    let d = &info.dialogs[0];
    ensure!(d.call_id == b.id.call_id, "call-id {}", d.call_id);
    ensure!(d.local_tag == b.id.local_tag, "local-tag is bob's own tag");
    ensure!(d.remote_tag == b.id.remote_tag, "remote-tag is the B2BUA's");
    ensure!(d.state == "confirmed" && d.direction.as_deref() == Some("recipient"));
    ensure!(
        d.local_identity.as_deref() == Some("sip:bob@pbx.local"),
        "{d:?}"
    );
    ensure!(
        d.local_target.as_deref() == Some(bob.contact_uri().as_str()),
        "{d:?}"
    );
    ensure!(d.duration.is_some(), "no duration");
    // The caller's document says initiator.
    let ai = dialoginfo::parse(&alice.dialog_info())?;
    ensure!(
        ai.dialogs.len() == 1
            && ai.dialogs[0].call_id == a.call_id
            && ai.dialogs[0].local_tag == a.local_tag
            && ai.dialogs[0].direction.as_deref() == Some("initiator"),
        "{ai:?}"
    );

    // NOTIFY before 200.
    bob.set_policy(|p| p.dialog_query = QueryReply::NotifyFirst);
    raw.send(&subscribe(&raw, &bob, "query2")).await?;
    let got = recv_n(&raw, 2).await?;
    ensure!(
        got.len() == 2 && request_of(&got[0]).is_some() && got[1].status() == Some(200),
        "want NOTIFY then 200: {:?}",
        got.iter().map(Received::first_line).collect::<Vec<_>>()
    );
    // Not a notifier: 489 and nothing else.
    bob.set_policy(|p| p.dialog_query = QueryReply::Refuse(489));
    let got = raw.exchange(&subscribe(&raw, &bob, "query3"), WAIT).await?;
    let lines: Vec<String> = got.iter().map(Received::first_line).collect();
    ensure!(
        got.len() == 1 && got[0].status() == Some(489),
        "refusal: {lines:?}"
    );
    // Silent: nothing at all.
    bob.set_policy(|p| p.dialog_query = QueryReply::Ignore);
    let got = raw.exchange(&subscribe(&raw, &bob, "query4"), WAIT).await?;
    let lines: Vec<String> = got.iter().map(Received::first_line).collect();
    ensure!(got.is_empty(), "a silent UA answered: {lines:?}");
    ensure!(bob.queries_answered() == 2);
    Ok(())
}

/// An in-dialog request in `d` as the B2BUA would send it from a new address.
fn in_dialog(raw: &RawClient, d: &Dialog, method: &str, seq: u32, body: Option<&str>) -> String {
    let me = raw.addr();
    let (ct, body) = match body {
        Some(b) => ("Content-Type: application/sdp\r\n", b),
        None => ("", ""),
    };
    format!(
        "{method} {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{method}{seq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: {remote};tag={rtag}\r\n\
         To: {local};tag={ltag}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {seq} {method}\r\n\
         Contact: <sip:{me}>\r\n\
         {ct}Content-Length: {len}\r\n\r\n{body}",
        target = d.local_uri.trim_matches(['<', '>']),
        remote = d.remote_uri,
        rtag = d.id.remote_tag,
        local = d.local_uri,
        ltag = d.id.local_tag,
        cid = d.id.call_id,
        len = body.len(),
    )
}

#[tokio::test]
async fn smart_ua_follows_an_offerless_reinvite_from_a_new_address() -> Result<()> {
    let (_server, mut alice, mut bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ok());
    alice.call("bob").await?;
    let d = bob.live_dialogs().pop().context("bob has the call")?;
    let new_active = RawClient::bind(bob.addr()).await?;

    // Offerless re-INVITE with a new Contact and a much higher CSeq: 200 with an offer.
    let inv = in_dialog(&new_active, &d, "INVITE", 65_537, None);
    let got = new_active.exchange(inv.as_bytes(), WAIT).await?;
    let ok = got
        .iter()
        .find(|r| r.status() == Some(200))
        .context("no 200 to the re-INVITE")?;
    let body = ok
        .message
        .as_ref()
        .map(|m| m.body().clone())
        .unwrap_or_default();
    ensure!(
        sdp::session_name(&body).as_deref() == Some("bob"),
        "the 200 carries bob's offer"
    );
    // ACK without the answer: the UA records a protocol error.
    let ack = in_dialog(&new_active, &d, "ACK", 65_537, None);
    new_active.exchange(ack.as_bytes(), WAIT).await?;
    let errors = bob.protocol_errors();
    ensure!(
        errors.len() == 1 && errors[0].contains("SDP answer"),
        "{errors:?}"
    );
    // Again, this time the ACK carries the answer.
    let inv = in_dialog(&new_active, &d, "INVITE", 65_538, None);
    new_active.exchange(inv.as_bytes(), WAIT).await?;
    let answer = sdp::body(new_active.addr(), "answer", 1);
    let ack = in_dialog(&new_active, &d, "ACK", 65_538, Some(&answer));
    new_active.exchange(ack.as_bytes(), WAIT).await?;
    ensure!(bob.protocol_errors().len() == 1, "no new error");
    // A re-INVITE with an offer: 200 with an answer, the ACK needs no body.
    let offer = sdp::body(new_active.addr(), "offer", 2);
    let inv = in_dialog(&new_active, &d, "INVITE", 65_539, Some(&offer));
    let got = new_active.exchange(inv.as_bytes(), WAIT).await?;
    ensure!(got.iter().any(|r| r.status() == Some(200)), "no 200");
    let ack = in_dialog(&new_active, &d, "ACK", 65_539, None);
    new_active.exchange(ack.as_bytes(), WAIT).await?;
    ensure!(bob.protocol_errors().len() == 1, "no new error");
    let now = bob.dialog(&d.id).context("dialog")?;
    ensure!(now.peer == new_active.addr(), "target refreshed");
    ensure!(now.reinvites == 3 && now.answers_in_ack == 1, "{now:?}");
    ensure!(
        now.remote_sdp
            .as_ref()
            .and_then(|b| sdp::session_name(b))
            .as_deref()
            == Some("offer")
    );

    // bob hangs up: the BYE goes to the new address.
    let bye = bob.send_in_dialog(&d.id, Method::Bye)?;
    let r = new_active
        .recv(WAIT)
        .await?
        .context("no BYE at the new address")?;
    let Some(Message::Request(req)) = r.message else {
        anyhow::bail!("not a request: {}", r.first_line());
    };
    ensure!(req.method == Method::Bye && req.call_id()? == d.id.call_id);
    new_active
        .send(&response_to(&req, 200, None).to_bytes())
        .await?;
    let st = bob.expect_status(&d.id.call_id, Method::Bye, 200).await?;
    ensure!(st.cseq()?.seq == bye.cseq()?.seq);
    Ok(())
}

fn check_sync(raw: &RawClient, ua: &Ua, event: &str) -> String {
    let me = raw.addr();
    format!(
        "NOTIFY {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKcs{n:x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:pbx@{me}>;tag=cs\r\n\
         To: <{uri}>\r\n\
         Call-ID: cs-{n:x}\r\n\
         CSeq: 1 NOTIFY\r\n\
         Contact: <sip:{me}>\r\n\
         Event: {event}\r\n\
         Subscription-State: terminated\r\n\
         Content-Length: 0\r\n\r\n",
        uri = ua.contact_uri(),
        n = rand::random::<u32>(),
    )
}

#[tokio::test]
async fn smart_ua_obeys_check_sync() -> Result<()> {
    let (_server, mut alice, bob) = alice_and_bob().await?;
    bob.answer_next_invite(Answer::ok());
    alice.call("bob").await?;
    bob.set_policy(|p| p.drop_on_check_sync = true);
    let raw = RawClient::bind(bob.addr()).await?;
    let got = raw
        .exchange(check_sync(&raw, &bob, "foo").as_bytes(), WAIT)
        .await?;
    ensure!(
        got.len() == 1 && got[0].status() == Some(489),
        "unknown event"
    );
    ensure!(bob.live_dialogs().len() == 1);
    let got = raw
        .exchange(
            check_sync(&raw, &bob, "check-sync;reboot=true").as_bytes(),
            WAIT,
        )
        .await?;
    ensure!(
        got.len() == 1 && got[0].status() == Some(200),
        "check-sync answered {:?}",
        got.iter().map(Received::first_line).collect::<Vec<_>>()
    );
    ensure!(bob.live_dialogs().is_empty(), "bob kept its call");
    Ok(())
}
