//! The UA's receive task: reads datagrams, absorbs retransmissions it already handled
//! (re-sending its last response or ACK), answers what a phone answers by itself according to
//! the [`super::Policy`], and queues every new message for `expect`.

use std::sync::Arc;

use bytes::Bytes;
use understudy::sip::{HeaderName, Message, Method, Request, Response, SipMessage, parse_datagram};

use super::answer;
use super::build::{ack_for_failure, branch_of, with_credentials};
use super::dialog::{Dialog, DialogId, DialogState};
use super::notifier;
use super::state::{ClientTx, Peer, Reply, ServerTx, Shared, State, TxKey};

/// Read until the socket fails (the task is aborted when the UA is dropped).
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, src) = match shared.sock.recv_from(&mut buf).await {
            Ok(v) => v,
            // ICMP port unreachable from an earlier send surfaces here on Linux.
            Err(_) => continue,
        };
        match parse_datagram(&buf[..n]) {
            Ok(p) => dispatch(&shared, p.message, Peer::udp(src)),
            Err(e) => eprintln!("ua {}: unparseable datagram from {src}: {e}", shared.user),
        }
    }
}

/// Handle one message from `src` (a datagram or a framed TCP message).
pub(crate) fn dispatch(shared: &Arc<Shared>, msg: Message, src: Peer) {
    match msg {
        Message::Request(r) => on_request(shared, r, src),
        Message::Response(r) => on_response(shared, r, src),
    }
}

fn dialog_id(m: &impl SipMessage, local_tag: String, remote_tag: Option<String>) -> DialogId {
    DialogId {
        call_id: m.call_id().unwrap_or_default().to_string(),
        local_tag,
        remote_tag: remote_tag.unwrap_or_default(),
    }
}

fn on_response(shared: &Arc<Shared>, resp: Response, src: Peer) {
    let Ok(cseq) = resp.cseq() else {
        return;
    };
    let key: TxKey = (branch_of(&resp), cseq.method.to_string());
    let mut guard = shared.lock();
    let st = &mut *guard;
    let Some(tx) = st.client_txs.get_mut(&key) else {
        drop(guard);
        shared.deliver(Message::Response(resp), src);
        return;
    };
    let is_invite = cseq.method == Method::Invite;
    let status = resp.status;
    let first = tx.seen.insert((status, resp.to_tag()));
    let (request, dest, auth_tried) = (tx.request.clone(), tx.dest, tx.auth_tried);
    if !first {
        shared.absorb();
        // A retransmission: repeat our ACK for a final response to INVITE.
        if is_invite && status >= 300 {
            shared.send(&ack_for_failure(&request, &resp).to_bytes(), dest);
        } else if is_invite && status >= 200 {
            let call_id = resp.call_id().unwrap_or_default().to_string();
            let k = (call_id, cseq.seq, resp.to_tag().unwrap_or_default());
            if let Some((ack, to, true)) = st.acks.get(&k) {
                shared.send(ack, *to);
            }
        }
        return;
    }
    if is_invite && status >= 300 {
        shared.send(&ack_for_failure(&request, &resp).to_bytes(), dest);
    }
    if matches!(status, 401 | 407) && st.policy.auto_auth && !auth_tried {
        tx.auth_tried = true;
        if let Some(retry) = retry_with_credentials(shared, st, &request, &resp, dest) {
            shared.send(&retry.to_bytes(), dest);
            return;
        }
    }
    let id = dialog_id(&resp, request.from_tag().unwrap_or_default(), resp.to_tag());
    let initial = request.to_tag().is_none();
    if is_invite && status > 100 && status < 300 && resp.to_tag().is_some() {
        if initial
            && !st.dialogs.contains_key(&id)
            && let Some(d) = Dialog::as_uac(&request, &resp, dest)
        {
            st.dialogs.insert(id.clone(), d);
        }
        if status >= 200
            && let Some(d) = st.dialogs.get_mut(&id)
        {
            d.state = DialogState::Confirmed;
            d.refresh_target(&resp, src);
            if !resp.body.is_empty() {
                d.remote_sdp = Some(resp.body.clone());
            }
        }
        if status >= 200 {
            let ack = st
                .dialogs
                .get(&id)
                .map(|d| (d.ack(cseq.seq, shared.local), d.peer()));
            if let Some((ack, to)) = ack {
                let bytes = ack.to_bytes();
                let send = st.policy.auto_ack;
                if send {
                    shared.send(&bytes, to);
                }
                let k = (id.call_id.clone(), cseq.seq, id.remote_tag.clone());
                st.acks.insert(k, (bytes, to, send));
            }
        }
    }
    if is_invite && initial && status >= 300 {
        for d in st.dialogs.values_mut() {
            if d.id.call_id == id.call_id && d.id.local_tag == id.local_tag {
                d.state = DialogState::Terminated;
            }
        }
    }
    if cseq.method == Method::Bye
        && status >= 200
        && let Some(d) = st.dialogs.get_mut(&id)
    {
        d.state = DialogState::Terminated;
    }
    drop(guard);
    shared.deliver(Message::Response(resp), src);
}

fn retry_with_credentials(
    shared: &Shared,
    st: &mut State,
    request: &Request,
    resp: &Response,
    dest: Peer,
) -> Option<Request> {
    let password = st.password.clone()?;
    let retry = with_credentials(
        request,
        resp,
        &shared.user,
        &password,
        st.policy.prefer_sha256,
        shared.local,
        dest.transport,
    )?;
    let key = (branch_of(&retry), retry.method.to_string());
    let call_id = retry.call_id().unwrap_or_default().to_string();
    let seq = retry.cseq().map(|c| c.seq).unwrap_or(0);
    let out = st.out_cseq.entry(call_id.clone()).or_insert(0);
    *out = (*out).max(seq);
    if retry.method == Method::Invite && retry.to_tag().is_none() {
        st.invites.insert(call_id, key.clone());
    }
    st.client_txs.insert(
        key,
        ClientTx {
            request: retry.clone(),
            dest,
            seen: Default::default(),
            auth_tried: true,
        },
    );
    Some(retry)
}

fn on_request(shared: &Arc<Shared>, req: Request, src: Peer) {
    let branch = branch_of(&req);
    let mut st = shared.lock();
    if req.method == Method::Ack {
        if !st.acks_seen.insert(branch.clone()) {
            shared.absorb();
        } else {
            on_ack(shared, &mut st, &req);
            drop(st);
            shared.deliver(Message::Request(req), src);
        }
        return;
    }
    let key: TxKey = (branch, req.method.to_string());
    if let Some(tx) = st.server_txs.get(&key) {
        if let Some(last) = &tx.last {
            shared.send(last, src);
        }
        shared.absorb();
        return;
    }
    st.server_txs.insert(
        key.clone(),
        ServerTx {
            request: req.clone(),
            source: src,
            to_tag: None,
            last: None,
            final_status: None,
        },
    );
    match (&req.method, req.to_tag()) {
        (Method::Cancel, _) => on_cancel(shared, &mut st, &key),
        (_, Some(tag)) => in_dialog(shared, &mut st, &key, &req, tag, src),
        (Method::Invite, None) => {
            if let Some(plan) = st.plans.pop_front() {
                answer::start(shared, &mut st, key, plan);
            }
        }
        (Method::Options, None) => {
            if let Reply::Status(s) = st.policy.options {
                let extra = capabilities();
                shared.respond(&mut st, &key, s, None, &extra);
            }
        }
        (Method::Subscribe, None) => notifier::on_subscribe(shared, &mut st, &key, &req, src),
        (Method::Notify, None) => notifier::on_notify(shared, &mut st, &key, &req),
        _ => {}
    }
    drop(st);
    shared.deliver(Message::Request(req), src);
}

fn capabilities() -> Vec<(HeaderName, String)> {
    vec![
        (
            HeaderName::Allow,
            "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY, SUBSCRIBE".into(),
        ),
        (HeaderName::Accept, "application/sdp".into()),
        (HeaderName::Supported, "timer".into()),
    ]
}

/// An ACK: it confirms our 2xx, and after an offerless re-INVITE it must carry the answer
/// to the offer in our 2xx (RFC 3261 §13.2.1; RFC 3725 flow I, the re-bind after takeover).
fn on_ack(shared: &Shared, st: &mut State, req: &Request) {
    let id = dialog_id(req, req.to_tag().unwrap_or_default(), req.from_tag());
    let mut error = None;
    if let Some(d) = st.dialogs.get_mut(&id) {
        if d.awaiting_answer {
            d.awaiting_answer = false;
            if req.body.is_empty() {
                error = Some(format!(
                    "ACK without the SDP answer owed for our offer (offerless re-INVITE) in {}",
                    id.call_id
                ));
            } else {
                d.answers_in_ack += 1;
            }
        }
        if !req.body.is_empty() {
            d.remote_sdp = Some(req.body.clone());
        }
    }
    if let Some(e) = error {
        shared.error(st, e);
    }
}

/// CANCEL: 200 for the CANCEL, then 487 for its INVITE unless that already has a final
/// response (RFC 3261 §9.2).
fn on_cancel(shared: &Shared, st: &mut State, key: &TxKey) {
    let invite: TxKey = (key.0.clone(), Method::Invite.to_string());
    if !st.server_txs.contains_key(&invite) {
        shared.respond(st, key, 481, None, &[]);
        return;
    }
    let tag = st.server_txs.get(&invite).and_then(|t| t.to_tag.clone());
    if let (Some(tag), Some(c)) = (tag, st.server_txs.get_mut(key)) {
        // The CANCEL's 200 carries the same To tag as the INVITE's responses.
        c.to_tag = Some(tag);
    }
    shared.respond(st, key, 200, None, &[]);
    shared.respond(st, &invite, 487, None, &[]);
}

fn in_dialog(shared: &Shared, st: &mut State, key: &TxKey, req: &Request, tag: String, src: Peer) {
    let id = dialog_id(req, tag, req.from_tag());
    let seq = req.cseq().map(|c| c.seq).unwrap_or(0);
    let up = match st.dialogs.get_mut(&id) {
        Some(d) if d.is_up() => {
            d.remote_cseq = Some(seq);
            true
        }
        // A BYE that crosses ours still gets its 200.
        Some(d) if d.state == DialogState::Terminating && req.method == Method::Bye => true,
        _ => false,
    };
    if !up {
        shared.respond(st, key, 481, None, &[]);
        return;
    }
    let policy = st.policy;
    match req.method {
        Method::Bye => {
            if let Reply::Status(s) = policy.bye {
                shared.respond(st, key, s, None, &[]);
            }
        }
        Method::Invite | Method::Update => {
            let reply = if req.method == Method::Invite {
                policy.reinvite
            } else {
                policy.in_dialog
            };
            if let Some(d) = st.dialogs.get_mut(&id) {
                d.refresh_target(req, src);
                if !req.body.is_empty() {
                    d.remote_sdp = Some(req.body.clone());
                }
                if req.method == Method::Invite {
                    d.reinvites += 1;
                    d.last_reinvite_from = Some(src.addr);
                    d.last_reinvite_offerless = req.body.is_empty();
                    // Our 2xx will carry an offer; the answer is due in the ACK.
                    d.awaiting_answer = req.body.is_empty()
                        && matches!(reply, Reply::Status(s) if (200..300).contains(&s));
                }
            }
            if let Reply::Status(s) = reply {
                let body = if (200..300).contains(&s) {
                    let offer = (!req.body.is_empty()).then_some(&req.body[..]);
                    next_sdp(shared, st, &id, offer)
                } else {
                    None
                };
                shared.respond(st, key, s, body.map(|b| ("application/sdp", b)), &[]);
            }
        }
        Method::Options => {
            if let Reply::Status(s) = policy.in_dialog {
                shared.respond(st, key, s, None, &capabilities());
            }
        }
        _ => {
            if let Reply::Status(s) = policy.in_dialog {
                shared.respond(st, key, s, None, &[]);
            }
        }
    }
}

/// Our next SDP body in dialog `id` (session version + 1): an answer to `offer`, or an offer
/// of our own; its direction follows our hold state and the offer's.
pub(crate) fn next_sdp(
    shared: &Shared,
    st: &mut State,
    id: &DialogId,
    offer: Option<&[u8]>,
) -> Option<Bytes> {
    let d = st.dialogs.get_mut(id)?;
    d.sdp_version += 1;
    let direction = match offer {
        Some(o) => crate::sdp::answer_direction(crate::sdp::direction(o), d.hold),
        None if d.hold => "sendonly",
        None => "sendrecv",
    };
    Some(Bytes::from(crate::sdp::body_with(
        shared.local,
        &shared.user,
        d.sdp_version,
        direction,
    )))
}
