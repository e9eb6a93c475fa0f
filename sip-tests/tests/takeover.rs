//! Takeover tests: a real main and stand-by (`understudy` processes, [`Pair`]), test UAs as
//! phones and trunks, calls set up through the main, `kill -9` of the main, and then what the
//! new active does (DESIGN "Hot takeover", "Second source: the dialog digest", "Cold
//! takeover"):
//!
//! - a. the dialog query (RFC 4235) finds 100 calls, each re-bound (RFC 3725) and then hung
//!   up through the new active; CDRs `recovered`;
//! - b. cold mode: one check-sync each, no calls kept, 481 for a stale BYE;
//! - c. notifiers and 489s mixed, with the cold fallback and orphans;
//! - d. the dialog digest re-binds 200 calls nobody would report;
//! - e. ringing calls are failed on both sides;
//! - f. TCP legs are re-bound over TCP;
//! - g. a witness decides whether an isolated stand-by takes over;
//! - h. silence and 481 count as "not a notifier";
//! - i. 491 on the re-bind is retried, 481 ends the call on the other leg;
//! - j. an unreachable TCP leg keeps its call until its next request;
//! - k. a TCP trunk reports 150 calls in one NOTIFY bigger than a datagram;
//! - l. digest and query together: early calls from the digest, late ones by query.
//!
//! Each test starts its own pair on fresh ports; both nodes' logs are copied to
//! [`sip_tests::cluster::log_dir`] when it ends. Nothing sleeps in place of synchronisation:
//! tests poll `/status` with a bounded wait or await the messages the endpoints receive.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use sip_tests::cluster::{Node, Pair, PairSpec, TrunkSpec, password_of};
use sip_tests::{Answer, DialogId, Incoming, QueryReply, Transport, Ua, sdp};
use tokio::task::JoinSet;
use understudy::b2bua::{Side, parse_tag};
use understudy::cdr::CdrRecord;
use understudy::sip::{
    HeaderName, Message, Method, Request, SipMessage, Uri, new_tag, parse_datagram, response_to,
};

// ---- helpers ------------------------------------------------------------------------------

/// Run `f` on every UA at once; each task owns its UA and hands it back. Fails with every
/// UA's error when any fails.
async fn par<T, F, Fut>(uas: Vec<Ua>, f: F) -> Result<(Vec<Ua>, Vec<T>)>
where
    T: Send + 'static,
    F: Fn(usize, Ua) -> Fut,
    Fut: Future<Output = (Ua, Result<T>)> + Send + 'static,
{
    let n = uas.len();
    let mut set = JoinSet::new();
    for (i, ua) in uas.into_iter().enumerate() {
        let fut = f(i, ua);
        set.spawn(async move {
            let (ua, r) = fut.await;
            (i, ua, r)
        });
    }
    let mut slots: Vec<Option<(Ua, Result<T>)>> = (0..n).map(|_| None).collect();
    while let Some(j) = set.join_next().await {
        let (i, ua, r) = j.context("a UA task panicked")?;
        slots[i] = Some((ua, r));
    }
    let (mut uas, mut out, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (ua, r) in slots.into_iter().flatten() {
        match r {
            Ok(t) => out.push(t),
            Err(e) => errors.push(format!("{}: {e:#}", ua.user())),
        }
        uas.push(ua);
    }
    if !errors.is_empty() {
        bail!("{} UA task(s) failed:\n{}", errors.len(), errors.join("\n"));
    }
    Ok((uas, out))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Every name of the groups, in order (the users of a pair).
fn users_of(groups: &[&[String]]) -> Vec<String> {
    groups.concat()
}

/// Per caller `i`, the numbers `number(i, k)` for `k` in `0..per_caller`.
fn numbers(
    callers: usize,
    per_caller: usize,
    number: impl Fn(usize, usize) -> String,
) -> Vec<Vec<String>> {
    (0..callers)
        .map(|i| (0..per_caller).map(|k| number(i, k)).collect())
        .collect()
}

/// UAs registered at `server` (over TCP when `tcp`), one per name.
async fn phones(names: &[String], server: SocketAddr, tcp: bool) -> Result<Vec<Ua>> {
    let mut out = Vec::new();
    for n in names {
        let mut ua = if tcp {
            let ua = Ua::bind_tcp(n).await?;
            ua.set_server_tcp(server);
            ua
        } else {
            let ua = Ua::bind(n).await?;
            ua.set_server(server);
            ua
        };
        ua.set_password(&password_of(n));
        let r = ua.register().await?;
        ensure!(
            r.status == 200,
            "{n}: REGISTER got {} {}",
            r.status,
            r.reason
        );
        out.push(ua);
    }
    Ok(out)
}

/// Wait until the stand-by learned every user's registration from the main (reg event).
async fn wait_synced(standby: &Node, users: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let aors = standby.registered_aors(true).await?;
        let missing: Vec<&String> = users
            .iter()
            .filter(|u| {
                !aors
                    .iter()
                    .any(|a| a == *u || *a == format!("sip:{u}@pbx.local"))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the stand-by never learned the registrations of {missing:?}; it has {aors:?}\n{}",
                standby.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each caller calls its targets one after the other (all callers at once); returns the
/// callers' dialogs, per caller in target order.
async fn place_calls(
    callers: Vec<Ua>,
    targets: Vec<Vec<String>>,
) -> Result<(Vec<Ua>, Vec<Vec<DialogId>>)> {
    par(callers, |i, mut ua| {
        let targets = targets[i].clone();
        async move {
            let mut ids = Vec::new();
            for t in &targets {
                match ua.call(t).await {
                    Ok(id) => ids.push(id),
                    Err(e) => return (ua, Err(e)),
                }
            }
            (ua, Ok(ids))
        }
    })
    .await
}

/// [`place_calls`], then [`match_calls`] with `callees`: exactly `want` calls must be up.
async fn set_up_calls(
    callers: Vec<Ua>,
    targets: Vec<Vec<String>>,
    callees: &[Ua],
    want: usize,
) -> Result<(Vec<Ua>, Vec<Call>)> {
    let (callers, a_ids) = place_calls(callers, targets).await?;
    let calls = match_calls(&a_ids, callees)?;
    ensure!(calls.len() == want, "{} calls set up", calls.len());
    Ok((callers, calls))
}

/// One call through the B2BUA: the caller's dialog (leg A) and the callee's (leg B).
#[derive(Debug, Clone)]
struct Call {
    token: u64,
    caller: usize,
    callee: usize,
    a: DialogId,
    b: DialogId,
}

/// Pair the callers' dialogs with the callees' by the call token in the B2BUA's tags.
fn match_calls(a_ids: &[Vec<DialogId>], callees: &[Ua]) -> Result<Vec<Call>> {
    let mut b_by_token = HashMap::new();
    for (j, ua) in callees.iter().enumerate() {
        for d in ua.live_dialogs() {
            if let Some((token, Side::B)) = parse_tag(&d.id.remote_tag) {
                b_by_token.insert(token, (j, d.id));
            }
        }
    }
    let mut calls = Vec::new();
    for (i, ids) in a_ids.iter().enumerate() {
        for a in ids {
            let (token, side) = parse_tag(&a.remote_tag)
                .with_context(|| format!("{:?} is not a B2BUA A-leg tag", a.remote_tag))?;
            ensure!(side == Side::A, "caller got a {side:?} tag");
            let (j, b) = b_by_token
                .remove(&token)
                .with_context(|| format!("no callee dialog for token {token:016x}"))?;
            calls.push(Call {
                token,
                caller: i,
                callee: j,
                a: a.clone(),
                b,
            });
        }
    }
    Ok(calls)
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Wait until the node is active, its takeover report is closed and every call it found
/// has a re-bind outcome; returns the report.
async fn wait_settled(node: &Node, limit: Duration) -> Result<Value> {
    let v = node
        .wait_status(limit, "done with its takeover", |v| {
            let t = &v["takeover"];
            v["role"] == "active"
                && t.is_object()
                && t["in_progress"] == false
                && num(t, "recovered")
                    + num(t, "failed")
                    + num(t, "ended")
                    + num(t, "tcp_unreachable")
                    >= num(t, "calls_found")
        })
        .await?;
    Ok(v["takeover"].clone())
}

/// Check report fields; the error shows the whole report.
fn check_report(report: &Value, want: &[(&str, u64)]) -> Result<()> {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, n)| report[*k].as_u64() != Some(*n))
        .map(|(k, n)| format!("{k} = {} (want {n})", report[*k]))
        .collect();
    ensure!(
        wrong.is_empty(),
        "takeover report: {}\n{report:#}",
        wrong.join(", ")
    );
    Ok(())
}

fn show_report(label: &str, report: &Value, killed: Instant) {
    eprintln!(
        "[{label}] takeover report ({:?} after the kill): {report}",
        killed.elapsed()
    );
}

/// Whether `m` was sent by the node at `node`: over UDP its source is the node's SIP socket;
/// over TCP the connection may come from any port, so its top Via's sent-by must be the node.
fn from_node(m: &Incoming, node: SocketAddr) -> bool {
    match m.transport {
        Transport::Udp => m.source == node,
        Transport::Tcp => {
            m.source.ip() == node.ip()
                && (m.response().is_some()
                    || m.request()
                        .and_then(|r| r.top_via().ok())
                        .is_some_and(|v| v.sent_by() == node.to_string()))
        }
    }
}

fn is_request_in(m: &Incoming, method: &Method, id: &DialogId) -> bool {
    m.request().is_some_and(|r| {
        &r.method == method
            && r.call_id().ok() == Some(id.call_id.as_str())
            && r.to_tag().as_deref() == Some(id.local_tag.as_str())
    })
}

/// The re-bind of one leg as its endpoint sees it (RFC 3725 flow I as the design uses it):
/// a re-INVITE from the new active with its Contact and a CSeq in the new epoch's range,
/// offerless on leg A (our 200 offers; the ACK must carry the answer, whose session name is
/// `peer_name`), with `peer_name`'s offer on leg B; then the dialog targets the new active.
async fn expect_rebound(
    ua: &mut Ua,
    id: &DialogId,
    new_active: SocketAddr,
    _leg: Side,
    peer_name: &str,
) -> Result<()> {
    let m = ua
        .expect(&format!("re-INVITE in {}", id.call_id), |m| {
            is_request_in(m, &Method::Invite, id)
        })
        .await?;
    let r = m.request().cloned().context("a request")?;
    let transport = ua.dialog(id).context("dialog gone")?.transport;
    ensure!(
        m.transport == transport,
        "re-INVITE over {:?} on a {transport:?} leg",
        m.transport
    );
    ensure!(
        from_node(&m, new_active),
        "re-INVITE from {} ({:?}) instead of the new active {new_active}",
        m.source,
        r.headers.get(&HeaderName::Via)
    );
    let contact = r.contact().map(|c| c.uri.to_string()).unwrap_or_default();
    let c = Uri::parse(&contact).map_err(|e| anyhow!("re-INVITE Contact {contact:?}: {e}"))?;
    ensure!(
        c.host == new_active.ip().to_string() && c.port == Some(new_active.port()),
        "re-INVITE Contact {contact} is not the new active {new_active}"
    );
    let seq = r.cseq()?.seq;
    ensure!(
        seq > 65_536,
        "re-INVITE CSeq {seq} is not in a takeover epoch's range (epoch × 65536 + n)"
    );
    // RFC 3725: the leg re-INVITEd first gets no offer (it makes one in its 200 and gets the
    // answer in the ACK); the other leg gets that offer. Leg A goes first unless only leg B
    // is over TCP (the leg likelier to be unreachable goes first).
    let offerless = r.body.is_empty();
    if !offerless {
        ensure!(
            sdp::session_name(&r.body).as_deref() == Some(peer_name),
            "a re-INVITE with an offer must carry the other party's offer (s={peer_name}), got {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let ack = ua
        .expect(&format!("ACK to the re-INVITE in {}", id.call_id), |m| {
            is_request_in(m, &Method::Ack, id) && from_node(m, new_active)
        })
        .await?;
    let ack = ack.request().cloned().context("a request")?;
    ensure!(
        ack.cseq()?.seq == seq,
        "ACK CSeq {} for re-INVITE {seq}",
        ack.cseq()?.seq
    );
    if offerless {
        ensure!(
            sdp::session_name(&ack.body).as_deref() == Some(peer_name),
            "the offerless leg's ACK must carry the other party's answer (s={peer_name}), got {:?}",
            String::from_utf8_lossy(&ack.body)
        );
    }
    let d = ua.dialog(id).context("dialog gone")?;
    ensure!(
        d.peer == new_active,
        "after the re-bind the dialog targets {} (not the new active {new_active})",
        d.peer
    );
    ensure!(
        d.reinvites == 1,
        "{} re-INVITEs in {}",
        d.reinvites,
        id.call_id
    );
    let errors = ua.protocol_errors();
    ensure!(errors.is_empty(), "protocol errors: {errors:?}");
    Ok(())
}

/// Every UA checks the re-bind of its legs in `legs` (index into `uas`, dialog, side,
/// the other party's name).
async fn expect_all_rebound(uas: Vec<Ua>, legs: Legs, new_active: SocketAddr) -> Result<Vec<Ua>> {
    let (uas, _) = par(uas, |i, mut ua| {
        let legs = legs[i].clone();
        async move {
            for (id, side, peer) in &legs {
                if let Err(e) = expect_rebound(&mut ua, id, new_active, *side, peer).await {
                    return (ua, Err(e));
                }
            }
            (ua, Ok(()))
        }
    })
    .await?;
    Ok(uas)
}

/// Every UA sends BYE in its dialogs of `send` (checking a 200 from the new active) and
/// receives the BYE from the new active in its dialogs of `receive` (answered 200 by the UA).
async fn hang_up(
    uas: Vec<Ua>,
    send: Vec<Vec<DialogId>>,
    receive: Vec<Vec<DialogId>>,
    new_active: SocketAddr,
) -> Result<Vec<Ua>> {
    let (uas, _) = par(uas, |i, mut ua| {
        let (send, receive) = (send[i].clone(), receive[i].clone());
        async move {
            let r = async {
                for id in &send {
                    let bye = ua.send_in_dialog(id, Method::Bye)?;
                    let seq = bye.cseq()?.seq;
                    let m = ua
                        .expect(&format!("final response to BYE in {}", id.call_id), |m| {
                            m.is_response_to(&id.call_id, &Method::Bye)
                                && m.response().is_some_and(|r| {
                                    r.status >= 200 && r.cseq().is_ok_and(|c| c.seq == seq)
                                })
                        })
                        .await?;
                    let status = m.response().map_or(0, |r| r.status);
                    ensure!(status == 200, "BYE in {} got {status}", id.call_id);
                    ensure!(
                        from_node(&m, new_active),
                        "the 200 to BYE came from {}, not the new active",
                        m.source
                    );
                }
                for id in &receive {
                    let m = ua
                        .expect(&format!("BYE in {}", id.call_id), |m| {
                            is_request_in(m, &Method::Bye, id)
                        })
                        .await?;
                    ensure!(
                        from_node(&m, new_active),
                        "BYE from {}, not the new active",
                        m.source
                    );
                    let d = ua.dialog(id).context("dialog gone")?;
                    ensure!(!d.is_up(), "the UA did not end {} on BYE", id.call_id);
                }
                Ok(())
            }
            .await;
            (ua, r)
        }
    })
    .await?;
    Ok(uas)
}

/// Hang up `calls` through the new active: the caller of every even call, the callee of
/// every odd one. `callers` and `callees` are the UAs the calls index.
async fn hang_up_calls(
    callers: Vec<Ua>,
    callees: Vec<Ua>,
    calls: &[&Call],
    new_active: SocketAddr,
) -> Result<(Vec<Ua>, Vec<Ua>)> {
    let nc = callers.len();
    let all: Vec<Ua> = callers.into_iter().chain(callees).collect();
    let mut send = vec![Vec::new(); all.len()];
    let mut receive = vec![Vec::new(); all.len()];
    for (k, c) in calls.iter().enumerate() {
        let (a, b) = (c.caller, nc + c.callee);
        if k % 2 == 0 {
            send[a].push(c.a.clone());
            receive[b].push(c.b.clone());
        } else {
            send[b].push(c.b.clone());
            receive[a].push(c.a.clone());
        }
    }
    let mut all = hang_up(all, send, receive, new_active).await?;
    let callees = all.split_off(nc);
    Ok((all, callees))
}

/// Per UA: the legs it must see re-bound (dialog, side, the other party's name).
type Legs = Vec<Vec<(DialogId, Side, String)>>;

/// The legs of `calls` per UA, for [`expect_all_rebound`]: callers' A legs (the other
/// party is the callee), callees' B legs (the other party is the caller).
fn legs_of(calls: &[&Call], callers: &[Ua], callees: &[Ua]) -> (Legs, Legs) {
    let mut a = vec![Vec::new(); callers.len()];
    let mut b = vec![Vec::new(); callees.len()];
    for c in calls {
        let (caller, callee) = (callers[c.caller].user(), callees[c.callee].user());
        a[c.caller].push((c.a.clone(), Side::A, callee.to_string()));
        b[c.callee].push((c.b.clone(), Side::B, caller.to_string()));
    }
    (a, b)
}

/// Re-bind checks for callers and callees at once.
async fn expect_calls_rebound(
    callers: Vec<Ua>,
    callees: Vec<Ua>,
    calls: &[&Call],
    new_active: SocketAddr,
) -> Result<(Vec<Ua>, Vec<Ua>)> {
    let (la, lb) = legs_of(calls, &callers, &callees);
    let nc = callers.len();
    let all: Vec<Ua> = callers.into_iter().chain(callees).collect();
    let legs: Vec<_> = la.into_iter().chain(lb).collect();
    let mut all = expect_all_rebound(all, legs, new_active).await?;
    let callees = all.split_off(nc);
    Ok((all, callees))
}

/// The orphaned legs of `lost` calls: each caller gets a BYE from the new active in the A
/// leg of every such call of its own (and answers 200).
async fn expect_orphan_byes(
    callers: Vec<Ua>,
    lost: &[&Call],
    new_active: SocketAddr,
) -> Result<Vec<Ua>> {
    let mut orphan_legs = vec![Vec::new(); callers.len()];
    for c in lost {
        orphan_legs[c.caller].push(c.a.clone());
    }
    let none = vec![Vec::new(); callers.len()];
    hang_up(callers, none, orphan_legs, new_active).await
}

/// Wait (up to 5 s) until the node carries no call.
async fn wait_no_calls(node: &Node) -> Result<()> {
    node.wait_status(Duration::from_secs(5), "without calls", |v| {
        num(&v["counts"], "calls") == 0
    })
    .await?;
    Ok(())
}

/// Once the node carries no call ([`wait_no_calls`]): [`stop_and_read_cdrs`].
async fn cdrs_when_idle(node: &mut Node) -> Result<Vec<CdrRecord>> {
    wait_no_calls(node).await?;
    stop_and_read_cdrs(node).await
}

/// The CDRs of `calls` (each exactly once, [`cdrs_by_token`]) are all recovered and ended
/// normally; the error names the CDR as `what`.
fn ensure_recovered_normal(cdrs: &[CdrRecord], calls: &[&Call], what: &str) -> Result<()> {
    for c in cdrs_by_token(cdrs, calls)? {
        ensure!(
            c.recovered && c.end_reason == "normal",
            "{what} {}: recovered {} end_reason {}",
            c.token,
            c.recovered,
            c.end_reason
        );
    }
    Ok(())
}

/// No UA saw a protocol error.
fn ensure_no_protocol_errors<'a>(uas: impl IntoIterator<Item = &'a Ua>) -> Result<()> {
    for ua in uas {
        let e = ua.protocol_errors();
        ensure!(e.is_empty(), "{}: {e:?}", ua.user());
    }
    Ok(())
}

/// Stop the node with SIGTERM (CDRs are flushed) and read its CDRs.
async fn stop_and_read_cdrs(node: &mut Node) -> Result<Vec<CdrRecord>> {
    let st = node.terminate().await?;
    ensure!(
        st.success(),
        "{} exited with {st} on SIGTERM\n{}",
        node.name,
        node.log_tail(20)
    );
    node.cdrs()
}

/// CDRs of `calls` by token, each exactly once.
fn cdrs_by_token<'a>(cdrs: &'a [CdrRecord], calls: &[&Call]) -> Result<Vec<&'a CdrRecord>> {
    let mut by: HashMap<&str, Vec<&CdrRecord>> = HashMap::new();
    for c in cdrs {
        by.entry(c.token.as_str()).or_default().push(c);
    }
    let mut out = Vec::new();
    for c in calls {
        let t = format!("{:016x}", c.token);
        match by.get(t.as_str()).map(Vec::as_slice) {
            Some([one]) => out.push(*one),
            other => bail!("call {t}: {} CDRs", other.map_or(0, <[_]>::len)),
        }
    }
    Ok(out)
}

fn is_check_sync(m: &Incoming) -> bool {
    m.request().is_some_and(|r| {
        r.method == Method::Notify
            && r.to_tag().is_none()
            && r.headers
                .get(&HeaderName::Event)
                .is_some_and(|e| e.to_ascii_lowercase().starts_with("check-sync"))
    })
}

/// The check-sync NOTIFYs a UA received so far (each a distinct transaction: the UA absorbs
/// retransmissions). This drains the UA's queue.
fn check_syncs(ua: &mut Ua) -> Vec<Incoming> {
    ua.take_unmatched()
        .into_iter()
        .filter(is_check_sync)
        .collect()
}

/// Await one endpoint's reset: an out-of-dialog `NOTIFY Event: check-sync;reboot=true`,
/// `Subscription-State: terminated`, from the new active.
async fn expect_check_sync(ua: &mut Ua, new_active: SocketAddr) -> Result<()> {
    let m = ua.expect("check-sync NOTIFY", is_check_sync).await?;
    let r = m.request().context("a request")?;
    ensure!(m.source == new_active, "check-sync from {}", m.source);
    let event = r.headers.get(&HeaderName::Event).unwrap_or_default();
    ensure!(
        event.replace(' ', "") == "check-sync;reboot=true",
        "{}: Event: {event}",
        ua.user()
    );
    let ss = r
        .headers
        .get(&HeaderName::SubscriptionState)
        .unwrap_or_default();
    ensure!(
        ss.starts_with("terminated"),
        "{}: Subscription-State: {ss}",
        ua.user()
    );
    Ok(())
}

/// The SUBSCRIBEs (dialog queries) and check-sync NOTIFYs a UA received so far. This drains
/// the UA's queue.
fn queries_and_resets(ua: &mut Ua) -> (usize, usize) {
    let all = ua.take_unmatched();
    let q = all
        .iter()
        .filter(|m| m.is_request(&Method::Subscribe))
        .count();
    (q, all.iter().filter(|m| is_check_sync(m)).count())
}

/// Queue `n` answer plans.
fn answer_n(ua: &Ua, n: usize, plan: &Answer) {
    for _ in 0..n {
        ua.answer_next_invite(plan.clone());
    }
}

/// Kill the main with SIGKILL once the stand-by's digest knows `digest_calls` calls (skip
/// the wait with 0); returns the moment of the kill.
async fn kill_main(pair: &mut Pair, calls: u64, digest_calls: u64) -> Result<Instant> {
    pair.main
        .wait_status(Duration::from_secs(5), "carrying every call", |v| {
            num(&v["counts"], "calls") == calls
        })
        .await?;
    if digest_calls > 0 {
        pair.standby
            .wait_status(
                Duration::from_secs(5),
                "knowing every call from the digest",
                |v| num(&v["digest"], "calls_known") >= digest_calls,
            )
            .await?;
    }
    pair.main.kill9();
    Ok(Instant::now())
}

/// [`kill_main`], then [`wait_settled`] on the stand-by within `limit`; shows the report
/// as `label` and returns it.
async fn kill_and_settle(
    pair: &mut Pair,
    calls: u64,
    digest_calls: u64,
    limit: Duration,
    label: &str,
) -> Result<Value> {
    let killed = kill_main(pair, calls, digest_calls).await?;
    let report = wait_settled(&pair.standby, limit).await?;
    show_report(label, &report, killed);
    Ok(report)
}

// ---- a. the query path ---------------------------------------------------------------------

/// Issue acceptance: 100 calls between registered phones, the main killed, every call found
/// by the dialog query (no digest) and re-bound; then each is hung up through the new active
/// and written as a recovered, normal CDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_path_recovers_100_calls() -> Result<()> {
    let (caller_names, callee_names) = (names("alice", 10), names("bob", 10));
    let users = users_of(&[&caller_names, &callee_names]);
    let spec = PairSpec {
        dialog_digest: false,
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("query", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    for (j, ua) in callees.iter().enumerate() {
        answer_n(ua, caller_names.len(), &Answer::ok());
        // Half the callees send their NOTIFY before the 200 to the SUBSCRIBE.
        if j % 2 == 1 {
            ua.set_policy(|p| p.dialog_query = QueryReply::NotifyFirst);
        }
    }
    wait_synced(&pair.standby, &users).await?;

    let targets = vec![callee_names.clone(); caller_names.len()];
    let (callers, calls) = set_up_calls(callers, targets, &callees, 100).await?;
    let report = kill_and_settle(&mut pair, 100, 0, Duration::from_secs(15), "a query").await?;
    check_report(
        &report,
        &[
            ("endpoints", 20),
            ("queried", 20),
            ("answered", 20),
            ("not_notifiers", 0),
            ("calls_found", 100),
            ("recovered", 100),
            ("recovered_via_query", 100),
            ("recovered_via_digest", 0),
            ("orphaned", 0),
            ("failed", 0),
            ("reset", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let all: Vec<&Call> = calls.iter().collect();
    let (mut callers, mut callees) =
        expect_calls_rebound(callers, callees, &all, new_active).await?;
    for ua in callers.iter_mut().chain(callees.iter_mut()) {
        let (queries, resets) = queries_and_resets(ua);
        ensure!(
            ua.queries_answered() == 1 && queries == 1,
            "{} got {queries} dialog queries and answered {} (want 1)",
            ua.user(),
            ua.queries_answered()
        );
        ensure!(resets == 0, "{}: hot mode sent check-sync", ua.user());
    }
    let calls_now = pair.standby.calls().await?;
    ensure!(
        calls_now.len() == 100 && calls_now.iter().all(|c| c["recovered"] == true),
        "/calls on the new active: {} calls, not all recovered",
        calls_now.len()
    );

    let (_callers, _callees) = hang_up_calls(callers, callees, &all, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure!(cdrs.len() == 100, "{} CDRs on the new active", cdrs.len());
    ensure_recovered_normal(&cdrs, &all, "CDR")
}

// ---- b. cold mode --------------------------------------------------------------------------

/// Cold mode: every known endpoint (registered phones and every trunk) gets exactly one
/// `check-sync;reboot=true` NOTIFY, the new active starts without calls, and an in-dialog BYE
/// for an old call gets 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_mode_resets_every_endpoint_and_forgets_calls() -> Result<()> {
    let (caller_names, callee_names) = (names("carol", 5), names("dave", 5));
    let users = users_of(&[&caller_names, &callee_names]);
    let carrier = Ua::bind("carrier").await?;
    let spec = PairSpec {
        mode: "cold",
        ..PairSpec::default()
    }
    .with_users(&users);
    let spec = PairSpec {
        trunks: vec![TrunkSpec::new("carrier", carrier.addr(), "9")],
        ..spec
    };
    let mut pair = Pair::start("cold", &spec).await?;
    carrier.set_server(pair.main.sip);
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    for ua in &callers {
        ua.set_policy(|p| p.drop_on_check_sync = true);
    }
    for ua in &callees {
        answer_n(ua, caller_names.len(), &Answer::ok());
    }
    answer_n(&carrier, caller_names.len(), &Answer::ok());
    wait_synced(&pair.standby, &users).await?;
    let mut targets = vec![callee_names.clone(); caller_names.len()];
    for t in &mut targets {
        t.push("90001".into());
    }
    let mut callees = callees;
    callees.push(carrier);
    let (mut callers, calls) = set_up_calls(callers, targets, &callees, 30).await?;
    let killed = kill_main(&mut pair, 30, 0).await?;

    let report = pair
        .standby
        .wait_takeover_done(Duration::from_secs(10))
        .await?;
    show_report("b cold", &report, killed);
    check_report(
        &report,
        &[
            ("endpoints", 11),
            ("reset", 11),
            ("queried", 0),
            ("recovered", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    // Every endpoint got its reset (the report counts sends; await each arrival).
    for ua in callers.iter_mut().chain(callees.iter_mut()) {
        expect_check_sync(ua, new_active).await?;
    }
    let calls_now = pair.standby.calls().await?;
    ensure!(
        calls_now.is_empty(),
        "/calls after a cold takeover: {calls_now:?}"
    );
    // A callee still thinks its call is up and sends BYE, now to the new active: 481.
    let stale = &calls[0];
    let dave = &mut callees[stale.callee];
    dave.redirect_dialog(&stale.b, new_active)?;
    let r = dave.bye(&stale.b).await?;
    ensure!(r.status == 481, "stale BYE got {} {}", r.status, r.reason);
    // The callers dropped their calls on check-sync (policy), nothing else was sent to them.
    for ua in &callers {
        ensure!(
            ua.live_dialogs().is_empty(),
            "{} kept calls after check-sync",
            ua.user()
        );
    }
    // Exactly one each: nothing more arrived meanwhile.
    for ua in callers.iter_mut().chain(callees.iter_mut()) {
        let more = check_syncs(ua);
        ensure!(
            more.is_empty(),
            "{} got {} more check-sync NOTIFYs",
            ua.user(),
            more.len()
        );
    }
    Ok(())
}

// ---- c. mixed: notifiers and not ---------------------------------------------------------

/// Query path with `fallback = "cold"`: half the callees refuse the dialog query (489). Their
/// 50 calls cannot be paired: the callee gets the cold reset, the caller's orphaned leg a BYE
/// (CDR `takeover_orphan`). The other 50 calls are re-bound. The report counts both groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_notifiers_recover_half_and_reset_the_rest() -> Result<()> {
    let (caller_names, callee_names) = (names("erin", 10), names("frank", 10));
    let users = users_of(&[&caller_names, &callee_names]);
    let spec = PairSpec {
        dialog_digest: false,
        fallback: "cold",
        query_timeout_ms: 1500,
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("mixed", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    let refuses = |j: usize| j < 5;
    for (j, ua) in callees.iter().enumerate() {
        answer_n(ua, caller_names.len(), &Answer::ok());
        if refuses(j) {
            ua.set_policy(|p| {
                p.dialog_query = QueryReply::Refuse(489);
                p.drop_on_check_sync = true;
            });
        }
    }
    wait_synced(&pair.standby, &users).await?;
    let targets = vec![callee_names.clone(); caller_names.len()];
    let mut callees = callees;
    let (callers, calls) = set_up_calls(callers, targets, &callees, 100).await?;
    let report = kill_and_settle(&mut pair, 100, 0, Duration::from_secs(15), "c mixed").await?;
    check_report(
        &report,
        &[
            ("endpoints", 20),
            ("queried", 20),
            ("answered", 15),
            ("not_notifiers", 5),
            ("reset", 5),
            ("calls_found", 50),
            ("recovered", 50),
            ("recovered_via_query", 50),
            ("orphaned", 50),
            ("failed", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let (lost, kept): (Vec<&Call>, Vec<&Call>) = calls.iter().partition(|c| refuses(c.callee));
    // The refusing callees were reset (once each) and dropped their calls; the others were
    // not reset (they answered the query).
    for (j, ua) in callees.iter_mut().enumerate() {
        if refuses(j) {
            expect_check_sync(ua, new_active).await?;
            ensure!(ua.live_dialogs().is_empty(), "{} kept its calls", ua.user());
        }
    }
    // Orphans: every caller gets a BYE for each call whose callee refused.
    let callers = expect_orphan_byes(callers, &lost, new_active).await?;
    let (callers, mut callees) = expect_calls_rebound(callers, callees, &kept, new_active).await?;
    for (j, ua) in callees.iter_mut().enumerate() {
        let n = check_syncs(ua).len();
        ensure!(
            n == 0,
            "{}: {n} (more) check-sync NOTIFYs (refused: {})",
            ua.user(),
            refuses(j)
        );
    }
    let (_callers, _callees) = hang_up_calls(callers, callees, &kept, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &kept, "recovered call's CDR")?;
    for c in cdrs_by_token(&cdrs, &lost)? {
        ensure!(
            c.end_reason == "takeover_orphan",
            "orphaned call's CDR {}: end_reason {}",
            c.token,
            c.end_reason
        );
    }
    ensure!(cdrs.len() == 100, "{} CDRs", cdrs.len());
    Ok(())
}

// ---- d. the dialog digest ----------------------------------------------------------------

/// Dialog digest: 200 calls from phones that refuse the dialog query to a trunk that refuses
/// it too. The new active knows the calls from the keep-alives, re-binds them at once, and
/// asks only the trunk (configured `dialog_query = true`), never the phones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_path_rebinds_200_calls_without_notifiers() -> Result<()> {
    let caller_names = names("gina", 10);
    let per_caller = 20;
    let pstn = Ua::bind("pstn").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec {
            dialog_query: true,
            ..TrunkSpec::new("pstn", pstn.addr(), "9")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("digest", &spec).await?;
    pstn.set_server(pair.main.sip);
    pstn.set_policy(|p| p.dialog_query = QueryReply::Refuse(489));
    answer_n(&pstn, caller_names.len() * per_caller, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    for ua in &callers {
        ua.set_policy(|p| p.dialog_query = QueryReply::Refuse(489));
    }
    // The stand-by knows the phones (so not asking them is a choice, not ignorance).
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = numbers(caller_names.len(), per_caller, |i, k| {
        format!("9{i:02}{k:03}")
    });
    let callees = vec![pstn];
    let (callers, calls) = set_up_calls(callers, targets, &callees, 200).await?;
    let report = kill_and_settle(&mut pair, 200, 200, Duration::from_secs(20), "d digest").await?;
    let via_digest = num(&report, "recovered_via_digest");
    ensure!(
        via_digest >= 199 && num(&report, "recovered") >= 199,
        "only {via_digest} calls re-bound from the digest:\n{report:#}"
    );
    check_report(
        &report,
        &[
            // Every endpoint is asked (the digest may miss the calls of its last interval):
            // the 10 callers and the trunk, none of which is a notifier.
            ("endpoints", 11),
            ("queried", 11),
            ("not_notifiers", 11),
            ("failed", 0),
            ("ended", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let recovered: HashSet<String> = pair
        .standby
        .calls()
        .await?
        .iter()
        .filter(|c| c["recovered"] == true)
        .filter_map(|c| c["token"].as_str().map(str::to_string))
        .collect();
    let rebound: Vec<&Call> = calls
        .iter()
        .filter(|c| recovered.contains(&format!("{:016x}", c.token)))
        .collect();
    ensure!(
        rebound.len() as u64 == num(&report, "recovered"),
        "/calls shows {} recovered calls, the report {}",
        rebound.len(),
        num(&report, "recovered")
    );
    let (mut callers, mut callees) =
        expect_calls_rebound(callers, callees, &rebound, new_active).await?;
    for ua in callers.iter_mut() {
        let (queries, resets) = queries_and_resets(ua);
        // One query (it answers 489: not a notifier), and never a reset: fallback is none.
        ensure!(
            queries == 1 && resets == 0,
            "{} got {queries} queries and {resets} resets (want 1 query, no reset)",
            ua.user()
        );
    }
    let (queries, _) = queries_and_resets(&mut callees[0]);
    ensure!(
        queries == 1,
        "the dialog_query trunk was asked {queries} times (want 1)"
    );
    let (_callers, _callees) = hang_up_calls(callers, callees, &rebound, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &rebound, "CDR")
}

// ---- e. ringing calls --------------------------------------------------------------------

/// Calls still ringing at the kill (the callee sent 180 with a To tag and never answers):
/// within 2 s of the takeover every caller has a final response (487 or 503) and every
/// callee has been told (CANCEL of the old INVITE, or BYE on its early dialog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_calls_are_failed_cleanly() -> Result<()> {
    let caller_names = names("hank", 4);
    let per_caller = 5;
    let total = caller_names.len() * per_caller;
    let ringer = Ua::bind("ringer").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec::new("ringer", ringer.addr(), "7")],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("ringing", &spec).await?;
    ringer.set_server(pair.main.sip);
    answer_n(&ringer, total, &Answer::ring());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    // Each caller places its calls and waits for the 180 (with the B2BUA's To tag) on each.
    let (callers, outs) = par(callers, |i, mut ua| async move {
        let r = async {
            let mut outs = Vec::new();
            for k in 0..per_caller {
                let out = ua.invite(&format!("7{i}{k:02}"))?;
                let r = ua.expect_status(&out.call_id, Method::Invite, 180).await?;
                ensure!(r.to_tag().is_some(), "180 without To tag");
                outs.push(out);
            }
            Ok(outs)
        }
        .await;
        (ua, r)
    })
    .await?;
    let mut ringer = ringer;
    let mut b_invites = Vec::new();
    for _ in 0..total {
        b_invites.push(ringer.expect_new_invite().await?);
    }
    let killed = kill_main(&mut pair, total as u64, total as u64).await?;
    pair.standby
        .wait_status(Duration::from_secs(5), "active", |v| v["role"] == "active")
        .await?;
    let active_at = Instant::now();
    let deadline = active_at + Duration::from_secs(2);

    let (_callers, finals) = par(callers, |i, mut ua| {
        let outs = outs[i].clone();
        async move {
            let r = async {
                let mut got = Vec::new();
                for out in &outs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let m = ua
                        .expect_within(left, "final response to the ringing INVITE", |m| {
                            m.is_response_to(&out.call_id, &Method::Invite)
                                && m.response().is_some_and(|r| r.status >= 200)
                        })
                        .await?;
                    let r = m.response().context("a response")?;
                    let status = r.status;
                    ensure!(
                        status == 487 || status == 503,
                        "ringing call {} ended with {status}",
                        out.call_id
                    );
                    ensure!(
                        status != 503 || r.headers.get(&HeaderName::RetryAfter).is_some(),
                        "503 without Retry-After"
                    );
                    got.push(status);
                }
                Ok(got)
            }
            .await;
            (ua, r)
        }
    })
    .await?;
    for inv in &b_invites {
        let call_id = inv.call_id()?.to_string();
        let left = deadline.saturating_duration_since(Instant::now());
        let m = ringer
            .expect_within(left, &format!("CANCEL or BYE in {call_id}"), |m| {
                m.call_id() == Some(call_id.as_str())
                    && (m.is_request(&Method::Cancel) || m.is_request(&Method::Bye))
            })
            .await?;
        ensure!(
            m.source == pair.standby.sip,
            "{} from {}, not the new active",
            m.summary(),
            m.source
        );
    }
    ensure!(
        ringer.live_dialogs().is_empty(),
        "the callee still has early dialogs"
    );
    let report = wait_settled(&pair.standby, Duration::from_secs(5)).await?;
    show_report("e ringing", &report, killed);
    check_report(&report, &[("ringing_failed", total as u64)])?;
    let statuses: Vec<u16> = finals.into_iter().flatten().collect();
    eprintln!(
        "[e ringing] final responses to the callers within {:?} of the takeover: {statuses:?}",
        active_at.elapsed()
    );
    Ok(())
}

// ---- f. TCP legs ---------------------------------------------------------------------------

/// Calls whose legs both use TCP (phones registered over TCP, a trunk with `transport =
/// "tcp"`): the new active re-binds them over new TCP connections to the recorded
/// addresses, and the BYEs afterwards go over TCP to the new active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_legs_are_rebound_over_tcp() -> Result<()> {
    let caller_names = names("ivan", 4);
    let per_caller = 5;
    let total = caller_names.len() * per_caller;
    let trunk = Ua::bind_tcp("tcptrunk").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec {
            tcp: true,
            ..TrunkSpec::new("tcptrunk", trunk.addr(), "8")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("tcp", &spec).await?;
    trunk.set_server_tcp(pair.main.sip);
    answer_n(&trunk, total, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, true).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = numbers(caller_names.len(), per_caller, |i, k| format!("8{i}{k:02}"));
    let callees = vec![trunk];
    let (callers, calls) = set_up_calls(callers, targets, &callees, total).await?;
    for ua in callers.iter().chain(&callees) {
        for d in ua.live_dialogs() {
            ensure!(
                d.transport == Transport::Tcp,
                "{}: a leg set up over {:?}",
                ua.user(),
                d.transport
            );
        }
    }
    let accepted_before: Vec<usize> = callers
        .iter()
        .chain(&callees)
        .map(|u| u.tcp_accepted().len())
        .collect();
    let report = kill_and_settle(
        &mut pair,
        total as u64,
        total as u64,
        Duration::from_secs(15),
        "f tcp",
    )
    .await?;
    check_report(
        &report,
        &[
            ("recovered", total as u64),
            ("tcp_unreachable", 0),
            ("failed", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let all: Vec<&Call> = calls.iter().collect();
    let (callers, callees) = expect_calls_rebound(callers, callees, &all, new_active).await?;
    for (ua, before) in callers.iter().chain(&callees).zip(accepted_before) {
        ensure!(
            ua.tcp_accepted().len() > before,
            "{} accepted no new TCP connection for the re-bind",
            ua.user()
        );
        for d in ua.live_dialogs() {
            ensure!(
                d.transport == Transport::Tcp,
                "a leg moved to {:?}",
                d.transport
            );
        }
    }
    let (_callers, _callees) = hang_up_calls(callers, callees, &all, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &all, "CDR")
}

// ---- g. witnesses --------------------------------------------------------------------------

/// A witness the test controls: a UDP socket that records the OPTIONS it gets and answers
/// them 200 only once `answer` is set.
struct Witness {
    addr: SocketAddr,
    answer: Arc<AtomicBool>,
    seen: tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl Witness {
    async fn bind() -> Result<Self> {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let answer = Arc::new(AtomicBool::new(false));
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let flag = answer.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(p) = parse_datagram(&buf[..n]) else {
                    continue;
                };
                let Message::Request(r) = p.message else {
                    continue;
                };
                if r.method != Method::Options {
                    continue;
                }
                let answered = flag.load(Ordering::SeqCst);
                if answered {
                    let resp = response_to(&r, 200, Some(&new_tag()));
                    let _ = sock.send_to(&resp.to_bytes(), from).await;
                }
                let _ = tx.send((from, answered));
            }
        });
        Ok(Self {
            addr,
            answer,
            seen,
            task,
        })
    }

    /// The next OPTIONS the witness got (source, whether it answered), within `limit`.
    async fn next(&mut self, limit: Duration) -> Result<(SocketAddr, bool)> {
        tokio::time::timeout(limit, self.seen.recv())
            .await
            .context("no OPTIONS reached the witness")?
            .context("witness task ended")
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// With a witness configured, a stand-by cut off from the main takes over only when the
/// witness answers: while it is silent the stand-by stays stand-by and reports itself
/// isolated; once it answers OPTIONS, the stand-by takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_decides_whether_an_isolated_standby_takes_over() -> Result<()> {
    let mut witness = Witness::bind().await?;
    let spec = PairSpec {
        witnesses: vec![witness.addr],
        ..PairSpec::default()
    };
    let pair = Pair::start("witness", &spec).await?;
    let epoch0 = num(&pair.standby.status().await?, "epoch");
    for n in [&pair.main, &pair.standby] {
        let r = n.post("/test/partition?on").await?;
        ensure!(r.contains("true"), "{}: partition on: {r}", n.name);
    }
    // The stand-by misses the keep-alives, its probe fails, it asks the witness: silence.
    let v = pair
        .standby
        .wait_status(Duration::from_secs(5), "isolated", |v| {
            v["peer"]["isolated"] == true
        })
        .await?;
    ensure!(v["role"] == "standby", "isolated but {}", v["role"]);
    let (from, answered) = witness.next(Duration::from_secs(1)).await?;
    ensure!(
        from == pair.standby.sip && !answered,
        "witness OPTIONS from {from}"
    );
    // Still stand-by after its next attempt at the witness (the OPTIONS that follows).
    let (from, _) = witness.next(Duration::from_secs(5)).await?;
    ensure!(from == pair.standby.sip, "witness OPTIONS from {from}");
    let v = pair.standby.status().await?;
    ensure!(
        v["role"] == "standby" && num(&v, "epoch") == epoch0,
        "a stand-by without its witness took over: {v}"
    );
    // The witness answers: the stand-by takes over.
    witness.answer.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let v = pair
        .standby
        .wait_status(Duration::from_secs(5), "active", |v| v["role"] == "active")
        .await?;
    ensure!(num(&v, "epoch") > epoch0, "epoch did not rise: {v}");
    ensure!(v["peer"]["isolated"] == false, "still isolated: {v}");
    eprintln!(
        "[g witness] stand-by took over {:?} after the witness started answering",
        t0.elapsed()
    );
    Ok(())
}

// ---- h. silence and 481 are "not a notifier" too ------------------------------------------

/// Real soft-phones answer the dialog query with 481 or not at all (research notes): both
/// count as "not a notifier" exactly like 489, the silent one after `query_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_481_endpoints_are_not_notifiers() -> Result<()> {
    let (caller_names, callee_names) = (names("kim", 2), names("lee", 3));
    let users = users_of(&[&caller_names, &callee_names]);
    let query_timeout_ms = 1000;
    let spec = PairSpec {
        dialog_digest: false,
        fallback: "cold",
        query_timeout_ms,
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("silent", &spec).await?;
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    let callees = phones(&callee_names, pair.main.sip, false).await?;
    let policy = [
        QueryReply::Notify,
        QueryReply::Ignore,
        QueryReply::Refuse(481),
    ];
    for (ua, q) in callees.iter().zip(policy) {
        answer_n(ua, caller_names.len(), &Answer::ok());
        ua.set_policy(|p| {
            p.dialog_query = q;
            p.drop_on_check_sync = true;
        });
    }
    wait_synced(&pair.standby, &users).await?;
    let targets = vec![callee_names.clone(); caller_names.len()];
    let mut callees = callees;
    let (callers, calls) = set_up_calls(callers, targets, &callees, 6).await?;
    let report = kill_and_settle(&mut pair, 6, 0, Duration::from_secs(10), "h silent").await?;
    check_report(
        &report,
        &[
            ("endpoints", 5),
            ("queried", 5),
            ("answered", 3),
            ("not_notifiers", 2),
            ("reset", 2),
            ("recovered", 2),
            ("orphaned", 4),
        ],
    )?;
    ensure!(
        num(&report, "total_ms") >= query_timeout_ms,
        "the silent endpoint was not waited for: total_ms {}",
        report["total_ms"]
    );
    let new_active = pair.standby.sip;
    for ua in callees.iter_mut().skip(1) {
        expect_check_sync(ua, new_active).await?;
    }
    let (lost, kept): (Vec<&Call>, Vec<&Call>) = calls.iter().partition(|c| c.callee != 0);
    let callers = expect_orphan_byes(callers, &lost, new_active).await?;
    let (callers, mut callees) = expect_calls_rebound(callers, callees, &kept, new_active).await?;
    ensure!(
        check_syncs(&mut callees[0]).is_empty(),
        "the notifier got a check-sync"
    );
    hang_up_calls(callers, callees, &kept, new_active).await?;
    Ok(())
}

// ---- i. re-bind answers other than 200 -------------------------------------------------------

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

// ---- j. a TCP leg that cannot be reached ----------------------------------------------------

/// A TCP trunk that cannot be reached at takeover (its connections died with the main and
/// it does not listen): the call is kept, and adopted when the trunk's next in-dialog
/// request (here its BYE, sent to the new active) arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_tcp_leg_is_adopted_on_its_next_request() -> Result<()> {
    let caller_names = names("olga", 1);
    let trunk = Ua::bind_tcp("tcpgone").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec {
            tcp: true,
            ..TrunkSpec::new("tcpgone", trunk.addr(), "6")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("tcpgone", &spec).await?;
    trunk.set_server_tcp(pair.main.sip);
    answer_n(&trunk, 2, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = vec![vec!["600".to_string(), "601".to_string()]];
    let callees = vec![trunk];
    let (callers, calls) = set_up_calls(callers, targets, &callees, 2).await?;
    let killed = kill_main(&mut pair, 2, 2).await?;
    // The main's connections are gone with it; the trunk stops listening too.
    callees[0].close_tcp();
    let new_active = pair.standby.sip;
    // Leg B (TCP) is re-INVITEd first (the leg likelier to be unreachable goes first), so
    // when it cannot be reached nothing is owed to leg A, which is left alone: no re-INVITE,
    // no BYE. The call waits for the trunk to come back on a connection of its own.
    let report = wait_settled(&pair.standby, Duration::from_secs(15)).await?;
    show_report("j tcp unreachable", &report, killed);
    check_report(
        &report,
        &[("tcp_unreachable", 2), ("failed", 0), ("ended", 0)],
    )?;
    let listed = pair.standby.calls().await?;
    ensure!(
        listed.len() == 2,
        "the new active must keep both calls: /calls = {listed:?}"
    );
    // The trunk comes back: it sends its BYEs to the new active.
    let mut send = vec![Vec::new(), Vec::new()];
    let mut receive = vec![Vec::new(), Vec::new()];
    for c in &calls {
        callees[0].redirect_dialog(&c.b, new_active)?;
        send[1].push(c.b.clone());
        receive[0].push(c.a.clone());
    }
    let all: Vec<Ua> = callers.into_iter().chain(callees).collect();
    let all = hang_up(all, send, receive, new_active).await?;
    ensure_no_protocol_errors(&all)?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    let all_calls: Vec<&Call> = calls.iter().collect();
    ensure_recovered_normal(&cdrs, &all_calls, "CDR")
}

// ---- k. a big dialog report over TCP ---------------------------------------------------------

/// A trunk on TCP with `dialog_query = true` carrying 150 calls answers the query with one
/// NOTIFY of about 90 KB (more than a UDP datagram can hold); with no digest, that report
/// and the phones' own reports are how all 150 calls are found and re-bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_trunk_reports_150_calls_in_one_notify() -> Result<()> {
    let caller_names = names("pam", 10);
    let per_caller = 15;
    let total = caller_names.len() * per_caller;
    let trunk = Ua::bind_tcp("bigtrunk").await?;
    let spec = PairSpec {
        dialog_digest: false,
        trunks: vec![TrunkSpec {
            tcp: true,
            dialog_query: true,
            ..TrunkSpec::new("bigtrunk", trunk.addr(), "5")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("bignotify", &spec).await?;
    trunk.set_server_tcp(pair.main.sip);
    answer_n(&trunk, total, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = numbers(caller_names.len(), per_caller, |i, k| format!("5{i}{k:02}"));
    let callees = vec![trunk];
    let (callers, calls) = set_up_calls(callers, targets, &callees, total).await?;
    let report_size = callees[0].dialog_info().len();
    ensure!(
        report_size > 65_535,
        "the trunk's report is only {report_size} bytes"
    );
    let report = kill_and_settle(
        &mut pair,
        total as u64,
        0,
        Duration::from_secs(15),
        "k big notify",
    )
    .await?;
    eprintln!("[k big notify] the trunk's dialog-info is {report_size} bytes");
    check_report(
        &report,
        &[
            ("endpoints", 11),
            ("answered", 11),
            ("recovered", total as u64),
            ("recovered_via_query", total as u64),
            ("orphaned", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let all: Vec<&Call> = calls.iter().collect();
    let (callers, callees) = expect_calls_rebound(callers, callees, &all, new_active).await?;
    let (_callers, _callees) = hang_up_calls(callers, callees, &all, new_active).await?;
    wait_no_calls(&pair.standby).await
}

// ---- l. digest and query together --------------------------------------------------------

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
