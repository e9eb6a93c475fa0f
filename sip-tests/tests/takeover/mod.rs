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
//! - l. digest and query together: early calls from the digest, late ones by query;
//! - SIGTERM with 100 live calls writes 100 CDRs `shutdown`.
//!
//! Each test starts its own pair on fresh ports; both nodes' logs are copied to
//! [`sip_tests::cluster::log_dir`] when it ends. Nothing sleeps in place of synchronisation:
//! tests poll `/status` with a bounded wait or await the messages the endpoints receive.
//!
//! One file per scenario; the helpers they share are here.

mod balancer;
mod big_notify;
mod cold;
mod digest;
mod digest_and_query;
mod drain;
mod hold;
mod mixed;
mod nat;
mod nat_sipp;
mod not_notifiers;
mod query;
mod rebind_answers;
mod ringing;
mod sigterm;
mod tcp;
mod transfer;
mod trunk_register;
mod unreachable_tcp;
mod upgrade;
mod wan;
mod witness;

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
        Transport::Tcp | Transport::Tls => {
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

/// The users of [`ten_calls`] with this prefix.
fn ten_call_users(prefix: &str) -> Vec<String> {
    let (callers, callees) = (
        names(&format!("{prefix}a"), 5),
        names(&format!("{prefix}b"), 5),
    );
    users_of(&[&callers, &callees])
}

/// Five callers each call two of five callees through the main (ten calls), once the
/// stand-by knows every registration.
async fn ten_calls(pair: &Pair, prefix: &str) -> Result<(Vec<Ua>, Vec<Ua>, Vec<Call>)> {
    let callers = names(&format!("{prefix}a"), 5);
    let callees = names(&format!("{prefix}b"), 5);
    let ec = phones(&callers, pair.main.sip, false).await?;
    let ee = phones(&callees, pair.main.sip, false).await?;
    for ua in &ee {
        answer_n(ua, 2, &Answer::ok());
    }
    wait_synced(&pair.standby, &ten_call_users(prefix)).await?;
    let targets: Vec<Vec<String>> = (0..callers.len())
        .map(|i| vec![callees[i].clone(), callees[(i + 1) % callees.len()].clone()])
        .collect();
    let (ec, calls) = set_up_calls(ec, targets, &ee, 10).await?;
    Ok((ec, ee, calls))
}

/// After a takeover by the stand-by: every call of `calls` re-bound to it, hung up through
/// it without a protocol error, and recorded there once (recovered, normal).
async fn rebound_then_ended_at_the_standby(
    pair: &mut Pair,
    callers: Vec<Ua>,
    callees: Vec<Ua>,
    calls: &[Call],
) -> Result<()> {
    let refs: Vec<&Call> = calls.iter().collect();
    let new_active = pair.standby.sip;
    let (ec, ee) = expect_calls_rebound(callers, callees, &refs, new_active).await?;
    let (ec, ee) = hang_up_calls(ec, ee, &refs, new_active).await?;
    ensure_no_protocol_errors(ec.iter().chain(&ee))?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &refs, "CDR")
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
