//! Calls: two legs per call, routing, relaying of provisional and final responses, CANCEL,
//! BYE, pass-through of re-INVITE/UPDATE/INFO/OPTIONS, parallel forking, session timers
//! (RFC 4028) and CDR events. Sans-IO: the caller passes time and the lower layers in
//! [`Env`], and drains CDRs with [`B2bua::take_cdrs`].

mod call;
mod digest;
mod media;
mod rebind;
mod routing;
mod session;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use call::{Call, CallState, Side, parse_tag, tag_for};
use call::{Fork, Relay, idx};
pub use media::{MediaCommand, MediaPlan};
pub use rebind::{Adopted, Outcome, Source};
pub use routing::{Route, Target, resolve};

use crate::cdr::CdrRecord;
use crate::config::Config;
use crate::dialog::{Dialog, DialogState, LocalContact};
use crate::registrar::Registrar;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, Uri, response_to};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};
use crate::transport::Flow;

/// Methods we accept and advertise in `Allow`.
pub const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REGISTER, SUBSCRIBE, NOTIFY";

/// Headers copied from the caller's INVITE to the callee's.
const COPIED: [&str; 6] = [
    "Subject",
    "Alert-Info",
    "Call-Info",
    "Priority",
    "P-Asserted-Identity",
    "Privacy",
];

/// How long a call may ring before we give up (RFC 3261 Timer C is "> 3 minutes").
const RING_TIMEOUT: Duration = Duration::from_secs(180);

/// What the B2BUA needs from the rest of the server for one call.
pub struct Env<'a> {
    /// Monotonic now.
    pub now: Instant,
    /// Wall clock, unix ms.
    pub now_ms: u64,
    /// The transaction layer.
    pub tx: &'a mut TransactionLayer,
    /// The registrar (location lookups).
    pub registrar: &'a Registrar,
    /// Configuration.
    pub cfg: &'a Config,
    /// Our Via/Contact addresses.
    pub me: &'a LocalContact,
    /// Current epoch (CSeq base, DESIGN: `epoch × 65536 + n`).
    pub epoch: u32,
    /// Node name (for CDRs).
    pub node: &'a str,
}

impl Env<'_> {
    fn cseq_base(&self) -> u32 {
        self.epoch.saturating_mul(65536)
    }
}

/// What a client transaction of ours was for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Fork,
    Relay,
    Bye,
    Cancel,
    Refresh { side: Side, cseq: u32 },
    Rebind(Side),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Ring,
    Session(u8),
    RebindRetry,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Calls created.
    pub created: u64,
    /// Calls answered.
    pub answered: u64,
    /// Calls ended (any reason).
    pub ended: u64,
    /// Initial INVITEs refused before a call was created (404, 480, 503...).
    pub refused: u64,
    /// Calls adopted at takeover.
    pub adopted: u64,
    /// Adopted calls whose re-bind succeeded.
    pub recovered: u64,
    /// Legs hung up at takeover because their partner never turned up.
    pub orphaned: u64,
}

/// The B2BUA.
#[derive(Debug, Default)]
pub struct B2bua {
    calls: HashMap<u64, Box<Call>>,
    client: HashMap<ClientTxId, (u64, Purpose)>,
    server_invites: HashMap<ServerTxId, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    cdrs: Vec<CdrRecord>,
    rebind_outcomes: Vec<(u64, Outcome)>,
    digest_on: bool,
    digest_out: Vec<crate::pair::digest::Entry>,
    media: Option<MediaPlan>,
    /// Counters.
    pub stats: Stats,
}

fn reason_for(status: u16) -> String {
    match status {
        486 | 600 => "busy".into(),
        487 => "cancelled".into(),
        s => format!("failed:{s}"),
    }
}

fn copy_body(from: &impl SipMessage, body: &Bytes, to_headers: &mut crate::sip::Headers) -> Bytes {
    if body.is_empty() {
        return Bytes::new();
    }
    if let Some(ct) = from.headers().get(&HeaderName::ContentType) {
        to_headers.push(HeaderName::ContentType, ct);
    }
    // Copy so the call does not pin the whole received datagram.
    Bytes::copy_from_slice(body)
}

impl B2bua {
    /// An empty B2BUA.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls in progress.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Client transactions the B2BUA is tracking.
    pub fn tracked_transactions(&self) -> usize {
        self.client.len() + self.server_invites.len()
    }

    /// All calls.
    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values().map(|c| &**c)
    }

    /// Give back table memory after a burst (see `TransactionLayer::compact`).
    pub fn compact(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 1024 && m.capacity() > 4 * m.len() {
                m.shrink_to(m.len() * 2);
            }
        }
        shrink(&mut self.calls);
        shrink(&mut self.client);
        shrink(&mut self.server_invites);
    }

    /// Relay media through this node from `ip`, with RTP ports `lo..=hi`.
    pub fn enable_relay(&mut self, ip: std::net::IpAddr, lo: u16, hi: u16) {
        self.media = Some(MediaPlan::new(ip, lo, hi));
    }

    /// Commands for the media relay since the last call.
    pub fn take_media_commands(&mut self) -> Vec<MediaCommand> {
        self.media
            .as_mut()
            .map(MediaPlan::take_commands)
            .unwrap_or_default()
    }

    /// Free media port pairs (relay mode).
    pub fn media_ports_available(&self) -> Option<usize> {
        self.media.as_ref().map(MediaPlan::available)
    }

    /// Forget every call without sending anything (this node no longer owns them).
    pub fn abandon_all(&mut self) -> usize {
        let tokens: Vec<u64> = self.calls.keys().copied().collect();
        if let Some(m) = self.media.as_mut() {
            for t in tokens {
                m.release(t);
            }
        }
        let n = self.calls.len();
        self.calls.clear();
        self.client.clear();
        self.server_invites.clear();
        self.timers.clear();
        n
    }

    /// Take the CDRs of calls that ended.
    pub fn take_cdrs(&mut self) -> Vec<CdrRecord> {
        std::mem::take(&mut self.cdrs)
    }

    fn new_token(&self) -> u64 {
        loop {
            let t: u64 = rand::random();
            if t != 0 && !self.calls.contains_key(&t) {
                return t;
            }
        }
    }

    /// A new INVITE outside any dialog, already authenticated (or from a trunk).
    pub fn on_invite(
        &mut self,
        env: &mut Env<'_>,
        id: ServerTxId,
        req: Request,
        source: Flow,
        from_trunk: Option<&str>,
    ) {
        let refuse = |env: &mut Env<'_>, status: u16, reason: Option<&str>| {
            let mut r = response_to(&req, status, Some(&crate::sip::new_tag()));
            if let Some(reason) = reason {
                r.reason = reason.to_string();
            }
            let _ = env.tx.respond(env.now, id, &r);
        };
        let Some(user) = Uri::parse(&req.uri).ok().and_then(|u| u.user_unescaped()) else {
            self.stats.refused += 1;
            return refuse(env, 484, None);
        };
        if self.calls.len() >= env.cfg.calls.max_calls {
            self.stats.refused += 1;
            return refuse(env, 503, Some("Call Limit Reached"));
        }
        // RFC 4028 §8.1: a Session-Expires below our Min-SE gets 422.
        let a_se = session::requested(&req);
        if let Some((s, _)) = a_se
            && s < env.cfg.calls.min_se_s
        {
            let mut r = response_to(&req, 422, Some(&crate::sip::new_tag()));
            r.headers
                .push(HeaderName::MinSe, env.cfg.calls.min_se_s.to_string());
            let _ = env.tx.respond(env.now, id, &r);
            self.stats.refused += 1;
            return;
        }
        let route = match resolve(env.cfg, env.registrar, &user, env.now) {
            Ok(r) => r,
            Err(status) => {
                self.stats.refused += 1;
                return refuse(env, status, None);
            }
        };
        let token = self.new_token();
        let Some(mut a) = Dialog::as_uas(&req, &tag_for(token, Side::A), source) else {
            self.stats.refused += 1;
            return refuse(env, 400, Some("Cannot Build Dialog"));
        };
        a.local_cseq = env.cseq_base();
        let Ok(from) = req.from() else {
            return refuse(env, 400, None);
        };
        let mf = req
            .header_u32(&HeaderName::MaxForwards)
            .and_then(Result::ok)
            .unwrap_or(70)
            .saturating_sub(1);
        let host = env.me.udp.split(':').next().unwrap_or("understudy");
        let b_call_id = format!(
            "{:016x}{:08x}@{host}",
            rand::random::<u64>(),
            rand::random::<u32>()
        );
        if let Some(m) = self.media.as_mut()
            && !m.alloc(token)
        {
            self.stats.refused += 1;
            tracing::warn!("no free media ports: call refused");
            return refuse(env, 503, Some("No Media Ports"));
        }
        let b_cseq = env.cseq_base() + 1;
        let mut b_from = from.clone();
        b_from.params.set("tag", Some(&tag_for(token, Side::B)));
        let mut forks = Vec::with_capacity(route.targets.len());
        for target in &route.targets {
            let mut b = Request::new(Method::Invite, target.uri.clone());
            let h = &mut b.headers;
            h.push(HeaderName::Via, env.me.via(target.flow.proto));
            h.push(HeaderName::MaxForwards, mf.to_string());
            h.push(HeaderName::From, b_from.to_string());
            h.push(HeaderName::To, target.to.clone());
            h.push(HeaderName::CallId, b_call_id.clone());
            h.push(HeaderName::CSeq, format!("{b_cseq} INVITE"));
            h.push(HeaderName::Contact, env.me.contact(target.flow.proto));
            h.push(HeaderName::Allow, ALLOW);
            h.push(HeaderName::Supported, "timer");
            if env.cfg.calls.session_expires_s > 0 {
                h.push(
                    HeaderName::SessionExpires,
                    format!("{};refresher=uac", env.cfg.calls.session_expires_s),
                );
                h.push(HeaderName::MinSe, env.cfg.calls.min_se_s.to_string());
            }
            for name in COPIED {
                let n = HeaderName::from_wire(name);
                for v in req.headers.get_all(&n) {
                    h.push(n.clone(), v);
                }
            }
            let body = copy_body(&req, &req.body, &mut b.headers);
            b.body = media::relay(&mut self.media, token, Side::A, body);
            match env.tx.send_request(env.now, &b, target.flow) {
                Ok(tx) => {
                    self.client.insert(tx, (token, Purpose::Fork));
                    forks.push(Fork {
                        tx,
                        request: b,
                        flow: target.flow,
                        provisional: false,
                        cancel_wanted: false,
                        done: false,
                        early_tag: None,
                        early_target: None,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot start B-leg INVITE"),
            }
        }
        if forks.is_empty() {
            self.stats.refused += 1;
            if let Some(m) = self.media.as_mut() {
                m.release(token);
            }
            return refuse(env, 500, None);
        }
        tracing::debug!(
            token = format!("{token:016x}"),
            user,
            forks = forks.len(),
            "call created"
        );
        let last_a_sdp = (!req.body.is_empty()).then(|| Bytes::copy_from_slice(&req.body));
        let call = Call {
            token,
            state: CallState::Calling,
            a,
            a_invite: Some((id, req)),
            invite_tx: Some(id),
            b: None,
            b_call_id,
            b_invite_cseq: b_cseq,
            forks,
            b_acked: false,
            b_ack_body: None,
            b_tx: None,
            reinvite: None,
            relay_tx: None,
            relays: HashMap::new(),
            last_sdp: [None, last_a_sdp],
            timers: [None, None],
            peer_update: [false, false],
            caller: from.uri.to_string(),
            callee: user,
            trunk: route.trunk.or_else(|| from_trunk.map(str::to_string)),
            start_ms: env.now_ms,
            answer_ms: None,
            created: env.now,
            recovered: false,
            cancelled: false,
            rebind: None,
            rebind_acks: [None, None],
            rebind_txs: Vec::new(),
        };
        self.stats.created += 1;
        self.server_invites.insert(id, token);
        self.calls.insert(token, Box::new(call));
        self.timers
            .push(Reverse((env.now + RING_TIMEOUT, token, TimerKind::Ring)));
        self.digest_ringing(token);
    }

    /// A CANCEL matched the initial INVITE on server transaction `invite` (the CANCEL itself
    /// has been answered 200 by the caller of this method).
    pub fn on_cancel(&mut self, env: &mut Env<'_>, invite: ServerTxId) {
        let Some(&token) = self.server_invites.get(&invite) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some((id, req)) = call.a_invite.take() else {
            return;
        };
        let r = response_to(&req, 487, Some(&call.a.local_tag));
        let _ = env.tx.respond(env.now, id, &r);
        call.cancelled = true;
        self.cancel_forks(env, token, None);
        self.maybe_finish_unanswered(env, token);
    }

    fn cancel_forks(&mut self, env: &mut Env<'_>, token: u64, except: Option<ClientTxId>) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let mut sends = Vec::new();
        for f in call
            .forks
            .iter_mut()
            .filter(|f| !f.done && Some(f.tx) != except)
        {
            if f.provisional {
                sends.push((cancel_for(&f.request), f.flow));
            } else {
                f.cancel_wanted = true;
            }
        }
        for (c, flow) in sends {
            if let Ok(tx) = env.tx.send_request(env.now, &c, flow) {
                self.client.insert(tx, (token, Purpose::Cancel));
            }
        }
    }

    /// End an unanswered call once every fork has a final response.
    fn maybe_finish_unanswered(&mut self, env: &mut Env<'_>, token: u64) {
        let Some(call) = self.calls.get(&token) else {
            return;
        };
        if call.b.is_none() && call.forks.iter().all(|f| f.done) {
            let reason = if call.cancelled {
                "cancelled".to_string()
            } else {
                "failed:500".to_string()
            };
            self.finish(env, token, &reason, &[]);
        }
    }

    /// A response for one of our client transactions. Returns whether it was ours.
    pub fn on_response(&mut self, env: &mut Env<'_>, id: ClientTxId, resp: Response) -> bool {
        let Some(&(token, purpose)) = self.client.get(&id) else {
            return false;
        };
        if resp.status >= 200
            && !matches!(purpose, Purpose::Fork | Purpose::Relay | Purpose::Rebind(_))
        {
            self.client.remove(&id);
        }
        if !self.calls.contains_key(&token) {
            self.client.remove(&id);
            return true;
        }
        match purpose {
            Purpose::Fork => self.fork_response(env, token, id, resp),
            Purpose::Relay => self.relay_response(env, token, id, resp),
            Purpose::Refresh { side, cseq } => {
                session::refresh_response(self, env, token, side, cseq, &resp)
            }
            Purpose::Rebind(side) => {
                let done = self.calls.get(&token).is_some_and(|c| c.rebind.is_none());
                if done && (200..300).contains(&resp.status) {
                    self.rebind_reack(env, token, side);
                } else {
                    self.rebind_response(env, token, side, resp);
                }
            }
            Purpose::Bye | Purpose::Cancel => {}
        }
        true
    }

    /// The transport could not reach the destination of a client transaction. During a
    /// re-bind this is a TCP leg whose endpoint cannot be reached from here: the call is kept
    /// as it is, so the endpoint can come back on a connection of its own.
    pub fn on_unreachable(&mut self, env: &mut Env<'_>, id: ClientTxId) -> bool {
        let Some(&(token, purpose)) = self.client.get(&id) else {
            return false;
        };
        if let Purpose::Rebind(side) = purpose {
            self.client.remove(&id);
            let mut unreachable = Response::new(503);
            unreachable.status = 0;
            self.rebind_response(env, token, side, unreachable);
            return true;
        }
        self.on_timeout(env, id)
    }

    /// A client transaction timed out (Timer B/F): treated as 408.
    pub fn on_timeout(&mut self, env: &mut Env<'_>, id: ClientTxId) -> bool {
        let Some(&(token, purpose)) = self.client.get(&id) else {
            return false;
        };
        let Some(call) = self.calls.get(&token) else {
            self.client.remove(&id);
            return true;
        };
        let req = match purpose {
            Purpose::Fork => call
                .forks
                .iter()
                .find(|f| f.tx == id)
                .map(|f| f.request.clone()),
            _ => None,
        };
        match (purpose, req) {
            (Purpose::Fork, Some(r)) => {
                let resp = response_to(&r, 408, None);
                self.fork_response(env, token, id, resp);
            }
            (Purpose::Relay, _) => {
                // The other leg did not answer: end the call cleanly.
                self.client.remove(&id);
                let relay = self.calls.get_mut(&token).and_then(|c| c.reinvite.take());
                if let Some(r) = relay {
                    let resp = response_to(&r.request, 408, None);
                    let _ = env.tx.respond(env.now, r.server, &resp);
                }
                self.finish(env, token, "failed:408", &[Side::A, Side::B]);
            }
            (Purpose::Rebind(side), _) => {
                let resp = Response::new(408);
                self.rebind_response(env, token, side, resp);
            }
            (Purpose::Refresh { side, cseq }, _) => {
                self.client.remove(&id);
                let resp = Response::new(408);
                session::refresh_response(self, env, token, side, cseq, &resp);
            }
            _ => {
                self.client.remove(&id);
            }
        }
        true
    }

    fn fork_response(&mut self, env: &mut Env<'_>, token: u64, id: ClientTxId, resp: Response) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(fi) = call.forks.iter().position(|f| f.tx == id) else {
            // The forks are gone: a retransmitted 2xx of the winner gets a fresh ACK.
            if call.b_tx == Some(id)
                && (200..300).contains(&resp.status)
                && call.b_acked
                && let Some(b) = call.b.as_mut()
            {
                let ack = b.ack(env.me, call.b_invite_cseq, call.b_ack_body.clone());
                env.tx.send_stateless(b.next_hop(), ack.to_bytes());
            }
            return;
        };
        let status = resp.status;
        if status < 200 {
            if status == 100 {
                return;
            }
            let fork = &mut call.forks[fi];
            fork.provisional = true;
            let new_early = fork.early_tag.is_none() && resp.to_tag().is_some();
            if new_early {
                fork.early_tag = resp.to_tag();
                fork.early_target = resp.contact().map(|c| c.uri.to_string());
            }
            if fork.cancel_wanted && !fork.done {
                fork.cancel_wanted = false;
                let c = cancel_for(&fork.request);
                let flow = fork.flow;
                if let Ok(tx) = env.tx.send_request(env.now, &c, flow) {
                    self.client.insert(tx, (token, Purpose::Cancel));
                }
                return;
            }
            if let Some((sid, req)) = &call.a_invite {
                let mut r = response_to(req, status, Some(&call.a.local_tag));
                r.reason = resp.reason.clone();
                if resp.to_tag().is_some() {
                    r.headers
                        .push(HeaderName::Contact, env.me.contact(call.a.flow.proto));
                }
                let body = copy_body(&resp, &resp.body, &mut r.headers);
                r.body = media::relay(&mut self.media, token, Side::B, body);
                let _ = env.tx.respond(env.now, *sid, &r);
                call.state = CallState::Ringing;
            }
            if new_early {
                self.digest_ringing(token);
            }
            return;
        }
        if (200..300).contains(&status) {
            let tag = resp.to_tag();
            let same_dialog = call
                .b
                .as_ref()
                .is_some_and(|b| Some(&b.remote_tag) == tag.as_ref());
            if call.forks[fi].done && same_dialog {
                // A retransmitted 2xx: ACK it again if we already did.
                if call.b_acked
                    && let Some(b) = call.b.as_mut()
                {
                    let ack = b.ack(env.me, call.b_invite_cseq, call.b_ack_body.clone());
                    env.tx.send_stateless(b.next_hop(), ack.to_bytes());
                }
                return;
            }
            call.forks[fi].done = true;
            let fork_req = call.forks[fi].request.clone();
            let fork_flow = call.forks[fi].flow;
            let Some(mut dialog) = Dialog::as_uac(&fork_req, &resp, fork_flow) else {
                return;
            };
            if call.b.is_some() || call.a_invite.is_none() {
                // Another fork already won, or the caller cancelled: ACK and hang up this one.
                let ack = dialog.ack(env.me, call.b_invite_cseq, None);
                env.tx.send_stateless(dialog.next_hop(), ack.to_bytes());
                let bye = dialog.request(Method::Bye, env.me, None);
                if let Ok(tx) = env.tx.send_request(env.now, &bye, dialog.next_hop()) {
                    self.client.insert(tx, (token, Purpose::Bye));
                }
                self.maybe_finish_unanswered(env, token);
                return;
            }
            dialog.state = DialogState::Confirmed;
            call.peer_update[idx(Side::B)] = resp.has_token(&HeaderName::Allow, "UPDATE");
            session::arm_b(call, env, &resp);
            call.b = Some(dialog);
            call.state = CallState::Answered;
            call.answer_ms = Some(env.now_ms);
            self.stats.answered += 1;
            let Some((sid, req)) = call.a_invite.take() else {
                return;
            };
            let mut r = response_to(&req, status, Some(&call.a.local_tag));
            r.reason = resp.reason.clone();
            r.headers
                .push(HeaderName::Contact, env.me.contact(call.a.flow.proto));
            r.headers.push(HeaderName::Allow, ALLOW);
            r.headers.push(HeaderName::Supported, "timer");
            session::arm_a(call, env, &req, &mut r);
            let body = copy_body(&resp, &resp.body, &mut r.headers);
            r.body = media::relay(&mut self.media, token, Side::B, body);
            if !r.body.is_empty() {
                call.last_sdp[idx(Side::A)] = Some(r.body.clone());
            }
            let _ = env.tx.respond(env.now, sid, &r);
            for t in session::deadlines(call) {
                self.timers.push(Reverse(t));
            }
            self.cancel_forks(env, token, Some(id));
            self.digest_legs(token);
            if let Some(call) = self.calls.get_mut(&token) {
                call.b_tx = Some(id);
                for f in call.forks.iter_mut().filter(|f| f.done) {
                    f.shed();
                }
                call.compact_forks();
            }
            return;
        }
        // 3xx–6xx on this fork.
        call.forks[fi].done = true;
        if call.b.is_some() {
            call.forks[fi].shed();
            call.compact_forks();
        }
        if call.b.is_some() {
            return;
        }
        if !call.forks.iter().all(|f| f.done) {
            return;
        }
        if let Some((sid, req)) = call.a_invite.take() {
            let mut r = response_to(&req, status, Some(&call.a.local_tag));
            r.reason = resp.reason.clone();
            for name in [
                HeaderName::RetryAfter,
                HeaderName::Warning,
                HeaderName::Reason,
            ] {
                for v in resp.headers.get_all(&name) {
                    r.headers.push(name.clone(), v);
                }
            }
            let _ = env.tx.respond(env.now, sid, &r);
            self.finish(env, token, &reason_for(status), &[]);
        } else {
            self.maybe_finish_unanswered(env, token);
        }
    }

    /// An ACK that matched no transaction: the ACK for one of our 2xx.
    pub fn on_ack(&mut self, env: &mut Env<'_>, req: &Request) {
        let Some((token, side)) = req.to_tag().as_deref().and_then(parse_tag) else {
            return;
        };
        let Some(call) = self.calls.get(&token) else {
            return;
        };
        let Some(leg) = call.leg(side) else {
            return;
        };
        if req.call_id().ok() != Some(leg.call_id.as_str()) {
            return;
        }
        let sdp = (!req.body.is_empty()).then(|| {
            let ct = req
                .headers
                .get(&HeaderName::ContentType)
                .unwrap_or("application/sdp")
                .to_string();
            let body = media::relay(
                &mut self.media,
                token,
                side,
                Bytes::copy_from_slice(&req.body),
            );
            (body, ct)
        });
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        if side == Side::A
            && call.state == CallState::Answered
            && cseq == call.a.remote_cseq.unwrap_or(cseq)
        {
            call.state = CallState::Confirmed;
            if let Some(b) = call.b.as_mut() {
                if let Some((body, _)) = &sdp {
                    call.last_sdp[idx(Side::B)] = Some(body.clone());
                }
                call.b_ack_body = sdp.clone();
                let ack = b.ack(env.me, call.b_invite_cseq, sdp);
                env.tx.send_stateless(b.next_hop(), ack.to_bytes());
                call.b_acked = true;
            }
            return;
        }
        // The ACK of a relayed re-INVITE: forward to the other leg.
        if let Some(relay) = &call.reinvite
            && relay.from == side
        {
            let out_cseq = relay.out_cseq;
            call.reinvite = None;
            let other = side.other();
            if let Some((body, _)) = &sdp {
                call.last_sdp[idx(other)] = Some(body.clone());
            }
            if let Some(d) = call.leg_mut(other) {
                let ack = d.ack(env.me, out_cseq, sdp);
                env.tx.send_stateless(d.next_hop(), ack.to_bytes());
            }
        }
    }

    /// A request inside a dialog (To tag present). Returns `false` when no call matches: the
    /// caller answers 481.
    pub fn on_in_dialog(
        &mut self,
        env: &mut Env<'_>,
        id: ServerTxId,
        req: Request,
        source: Flow,
    ) -> bool {
        let Some((token, side)) = req.to_tag().as_deref().and_then(parse_tag) else {
            return false;
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return false;
        };
        let Some(leg) = call.leg_mut(side) else {
            return false;
        };
        if req.call_id().ok() != Some(leg.call_id.as_str()) {
            return false;
        }
        if !leg.accept_remote_cseq(&req) {
            let r = response_to(&req, 500, None);
            let _ = env.tx.respond(env.now, id, &r);
            return true;
        }
        // A request from a leg tells us where it is now (adopted TCP legs, NAT rebinding).
        if source.proto == leg.flow.proto {
            leg.flow = source;
        }
        match req.method {
            Method::Bye => {
                let r = response_to(&req, 200, None);
                let _ = env.tx.respond(env.now, id, &r);
                if side == Side::A && call.b.is_none() {
                    call.cancelled = true;
                    self.cancel_forks(env, token, None);
                }
                self.finish(env, token, "normal", &[side.other()]);
            }
            Method::Update if req.body.is_empty() => {
                // A session refresh without an offer: answered here, for this leg only.
                let mut r = response_to(&req, 200, None);
                session::refreshed_by_peer(call, env, side, &req, &mut r);
                r.headers
                    .push(HeaderName::Contact, env.me.contact(source.proto));
                let _ = env.tx.respond(env.now, id, &r);
                for t in session::deadlines(call) {
                    self.timers.push(Reverse(t));
                }
            }
            _ => self.relay_request(env, token, side, id, req),
        }
        true
    }

    fn relay_request(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        side: Side,
        id: ServerTxId,
        req: Request,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let is_invite = req.method == Method::Invite;
        if (is_invite || req.method == Method::Update)
            && (call.reinvite.is_some() || call.rebind.is_some())
        {
            // Glare (RFC 3261 §14.2): one re-INVITE at a time per call.
            let mut r = response_to(&req, 491, None);
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = env.tx.respond(env.now, id, &r);
            return;
        }
        if is_invite || req.method == Method::Update {
            if let Some(leg) = call.leg_mut(side) {
                leg.refresh_target(req.contact());
            }
        }
        let other = side.other();
        let Some(out_leg) = call.leg_mut(other) else {
            let r = response_to(&req, 491, None);
            let _ = env.tx.respond(env.now, id, &r);
            return;
        };
        let mut out = out_leg.request(req.method.clone(), env.me, None);
        let out_cseq = out_leg.local_cseq;
        let hop = out_leg.next_hop();
        for name in [
            HeaderName::Event,
            HeaderName::SubscriptionState,
            HeaderName::Accept,
            HeaderName::Reason,
        ] {
            for v in req.headers.get_all(&name) {
                out.headers.push(name.clone(), v);
            }
        }
        if is_invite || req.method == Method::Update {
            out.headers.push(HeaderName::Allow, ALLOW);
            out.headers.push(HeaderName::Supported, "timer");
        }
        let body = copy_body(&req, &req.body, &mut out.headers);
        out.body = media::relay(&mut self.media, token, side, body);
        if !out.body.is_empty() && (is_invite || req.method == Method::Update) {
            call.last_sdp[idx(other)] = Some(out.body.clone());
        }
        match env.tx.send_request(env.now, &out, hop) {
            Ok(tx) => {
                self.client.insert(tx, (token, Purpose::Relay));
                let relay = Relay {
                    from: side,
                    server: id,
                    request: req,
                    out_cseq,
                };
                if is_invite {
                    call.reinvite = Some(relay);
                } else {
                    call.relays_insert(tx, relay);
                }
                if is_invite {
                    call.relay_tx = Some(tx);
                }
            }
            Err(_) => {
                let r = response_to(&req, 500, None);
                let _ = env.tx.respond(env.now, id, &r);
            }
        }
    }

    fn relay_response(&mut self, env: &mut Env<'_>, token: u64, id: ClientTxId, resp: Response) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let final_ = resp.status >= 200;
        let relay_is_invite = call.relay_tx == Some(id);
        let (from, server, original) = if relay_is_invite {
            let Some(r) = &call.reinvite else {
                // A 2xx retransmission after the ACK went out: nothing to relay.
                return;
            };
            (r.from, r.server, r.request.clone())
        } else {
            let Some(r) = call.relays.get(&id) else {
                return;
            };
            (r.from, r.server, r.request.clone())
        };
        if resp.status == 100 {
            return;
        }
        let mut r = response_to(&original, resp.status, None);
        r.reason = resp.reason.clone();
        let other = from.other();
        if (200..300).contains(&resp.status)
            && matches!(original.method, Method::Invite | Method::Update)
        {
            if let Some(d) = call.leg_mut(other) {
                d.refresh_target(resp.contact());
            }
            r.headers
                .push(HeaderName::Contact, env.me.contact(call.a.flow.proto));
            for t in session::touch(call, env) {
                self.timers.push(Reverse(t));
            }
        }
        let body = copy_body(&resp, &resp.body, &mut r.headers);
        r.body = media::relay(&mut self.media, token, other, body);
        if !r.body.is_empty() && original.method == Method::Invite {
            call.last_sdp[idx(from)] = Some(r.body.clone());
        }
        let _ = env.tx.respond(env.now, server, &r);
        if final_ {
            if relay_is_invite {
                if resp.status >= 300 {
                    call.reinvite = None;
                    call.relay_tx = None;
                    self.client.remove(&id);
                }
            } else {
                call.relays.remove(&id);
                self.client.remove(&id);
            }
            if matches!(resp.status, 408 | 481) {
                // The other endpoint no longer knows the dialog: end the call on both legs.
                self.finish(env, token, &format!("failed:{}", resp.status), &[from]);
            }
        }
    }

    /// No ACK arrived for a final response we sent on an INVITE server transaction.
    pub fn on_no_ack(&mut self, env: &mut Env<'_>, id: ServerTxId) {
        if let Some(token) = self.server_invites.remove(&id)
            && let Some(call) = self.calls.get(&token)
            && call.state == CallState::Answered
        {
            tracing::info!(
                token = format!("{token:016x}"),
                "caller never ACKed the 2xx; ending call"
            );
            self.finish(env, token, "failed:408", &[Side::A, Side::B]);
        }
    }

    /// End a call: BYE the legs in `bye` that are up, write its CDR, forget it.
    pub fn finish(&mut self, env: &mut Env<'_>, token: u64, reason: &str, bye: &[Side]) {
        let Some(mut call) = self.calls.remove(&token) else {
            return;
        };
        // Requests relayed across the call that have no final answer yet: the call is gone,
        // so they end with 487 (RFC 3261 §15.1.2) instead of hanging.
        let mut pending: Vec<Relay> = call.relays.drain().map(|(_, r)| r).collect();
        pending.extend(call.reinvite.take());
        for r in pending {
            if env.tx.is_pending(r.server) {
                let resp = response_to(&r.request, 487, None);
                let _ = env.tx.respond(env.now, r.server, &resp);
            }
        }
        {
            for &side in bye {
                let up = match side {
                    Side::A => matches!(
                        call.state,
                        CallState::Answered | CallState::Confirmed | CallState::Rebinding
                    ),
                    Side::B => call.b.is_some(),
                };
                if !up {
                    continue;
                }
                if let Some(d) = call.leg_mut(side) {
                    let r = d.request(Method::Bye, env.me, None);
                    if let Ok(tx) = env.tx.send_request(env.now, &r, d.next_hop()) {
                        self.client.insert(tx, (token, Purpose::Bye));
                    }
                }
            }
        }
        for f in &call.forks {
            self.client.remove(&f.tx);
        }
        for tx in &call.rebind_txs {
            self.client.remove(tx);
        }
        if let Some(tx) = call.relay_tx {
            self.client.remove(&tx);
        }
        for tx in call.relays.keys() {
            self.client.remove(tx);
        }
        if let Some(id) = call.invite_tx {
            self.server_invites.remove(&id);
        }
        self.stats.ended += 1;
        self.digest_gone(token);
        if let Some(m) = self.media.as_mut() {
            m.release(token);
        }
        let answer = call.answer_ms;
        let end = env.now_ms;
        self.cdrs.push(CdrRecord {
            call_id: call.a.call_id.clone(),
            b_call_id: call.b_call_id.clone(),
            token: format!("{token:016x}"),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            trunk: call.trunk.clone(),
            start_ms: call.start_ms as i64,
            answer_ms: answer.map(|a| a as i64),
            end_ms: end as i64,
            duration_ms: answer.map_or(0, |a| end.saturating_sub(a) as i64),
            end_reason: reason.to_string(),
            recovered: call.recovered,
            node: env.node.to_string(),
            media: None,
        });
        tracing::debug!(token = format!("{token:016x}"), reason, "call ended");
    }

    /// Fire due call timers (ring timeout, session timers).
    pub fn handle_timeout(&mut self, env: &mut Env<'_>) {
        // Timers of ended calls are skipped lazily; keep the heap from growing with the call
        // rate by dropping them once they outnumber the live calls' timers.
        if self.timers.len() > 64 + 8 * self.calls.len() {
            let calls = &self.calls;
            self.timers
                .retain(|Reverse((_, token, _))| calls.contains_key(token));
        }
        while let Some(Reverse((at, token, kind))) = self.timers.peek().copied() {
            if at > env.now {
                break;
            }
            self.timers.pop();
            let Some(call) = self.calls.get_mut(&token) else {
                continue;
            };
            match kind {
                TimerKind::Ring => {
                    if let Some((sid, req)) = call.a_invite.take() {
                        let r = response_to(&req, 408, Some(&call.a.local_tag));
                        let _ = env.tx.respond(env.now, sid, &r);
                        call.cancelled = true;
                        self.cancel_forks(env, token, None);
                        self.maybe_finish_unanswered(env, token);
                    }
                }
                TimerKind::Session(i) => session::fire(self, env, token, i, at),
                TimerKind::RebindRetry => self.rebind_retry(env, token),
            }
        }
    }

    /// When [`Self::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// A CANCEL for a request we sent (RFC 3261 §9.1).
fn cancel_for(req: &Request) -> Request {
    let mut c = Request::new(Method::Cancel, req.uri.clone());
    for name in [
        HeaderName::Via,
        HeaderName::Route,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::MaxForwards,
    ] {
        if name == HeaderName::Via {
            if let Some(v) = req.headers.get(&name) {
                c.headers.push(name.clone(), v);
            }
            continue;
        }
        for v in req.headers.get_all(&name) {
            c.headers.push(name.clone(), v);
        }
    }
    if let Ok(cs) = req.cseq() {
        c.headers
            .push(HeaderName::CSeq, format!("{} CANCEL", cs.seq));
    }
    c
}
