//! Takeover without replication (DESIGN "Hot takeover", "Cold takeover"; seed figures 2–7).
//!
//! Hot: ask every known endpoint for its dialogs (`SUBSCRIBE Event: dialog`, `Expires: 0`,
//! at most `takeover.parallel` at once, each within `query_timeout_ms`), pair the reported
//! legs by the call token in our tags, and hand complete calls to the B2BUA to re-bind. A leg
//! whose partner never turns up is hung up (`takeover_orphan`). Endpoints that are not
//! notifiers (any non-2xx, or silence) are reset the cold way when `takeover.fallback = cold`.
//! Cold: send each endpoint `NOTIFY Event: check-sync` and start with every line idle.

use std::collections::VecDeque;

use crate::entropy::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::b2bua::{Adopted, Outcome, Side, Source, parse_tag};
use crate::config::{Config, Fallback, PairMode, TrunkTransport};
use crate::dialog::{Dialog, DialogState, LocalContact, uri_flow};
use crate::net::Flow;
use crate::pair::dialoginfo::{self, DialogReport};
use crate::pair::digest::{DigestCall, LegRecord, RingRecord};
use crate::registrar::Registrar;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, Uri, new_tag, response_to};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};

use super::pacing::{self, Pacer, Verdict};
use super::waiting::{WaitQueue, Waiting};

/// How many calls in a row the pacer may refuse before a tick stops looking further down the
/// waiting queue (their destinations are full; the rest waits for the next tick).
const REFUSED_RUN: usize = 64;

/// The waiting queue is looked at most once per this interval when re-binds end: each look
/// may pass over a run of refused calls, and re-binds end thousands of times a second in a
/// large takeover (a millisecond's wait is small beside a re-bind's round trips).
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// How often an otherwise idle takeover counts the re-binds still running to see whether it
/// is finished.
const FINISH_CHECK: Duration = Duration::from_millis(20);

/// Interval between batches of reset NOTIFYs (cold takeover or fallback).
const RESET_PACE: Duration = Duration::from_millis(20);

/// Default reset event (DESIGN: the seed asks endpoints to drop their calls and re-initialise).
const DEFAULT_RESET: &str = "check-sync;reboot=true";

/// How many parties a takeover report names per list.
pub(crate) const NAMED: usize = 100;

/// An endpoint to query or reset.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    label: String,
    uri: String,
    flow: Flow,
    reset_event: String,
    priority: i32,
    registered_at: u64,
}

/// Every endpoint we know: registrations (local and learned from the peer) and trunks with
/// `dialog_query = true` (all trunks for a reset), in priority order; and how many were
/// left out because this node cannot reach them: phones behind NAT over UDP that registered
/// at the peer only (their router drops what this node sends; asking them would only hold a
/// query slot until its timeout).
pub(crate) fn endpoints(
    cfg: &Config,
    registrar: &Registrar,
    now: Instant,
    for_reset: bool,
) -> (Vec<Endpoint>, usize) {
    let mut out = Vec::new();
    let mut behind_nat = 0;
    let mut seen = HashSet::default();
    let users: HashMap<&str, &crate::config::UserConfig> =
        cfg.users.iter().map(|u| (u.name.as_str(), u)).collect();
    for (aor, _) in registrar.location().iter() {
        let user = users.get(aor.as_str()).copied();
        // One per contact: the flow the phone opened to this node before the peer's.
        for b in registrar.location().lookup(aor, now) {
            let Some(flow) = b.source.or_else(|| uri_flow(&b.contact.uri)) else {
                continue;
            };
            if b.origin.is_learned()
                && !flow.proto.is_reliable()
                && crate::dialog::behind_nat(crate::dialog::uri_addr(&b.contact.uri), flow)
            {
                behind_nat += 1;
                continue;
            }
            if !seen.insert((flow.remote, b.contact.uri.to_string())) {
                continue;
            }
            out.push(Endpoint {
                label: aor.clone(),
                uri: b.contact.uri.to_string(),
                flow,
                reset_event: user
                    .and_then(|u| u.reset_event.clone())
                    .unwrap_or_else(|| DEFAULT_RESET.into()),
                priority: user.map_or(0, |u| u.priority),
                registered_at: b.registered_at_s,
            });
        }
    }
    // Trunks named by a host are left out: their addresses live in the DNS cache, and the
    // digest carries their calls.
    for t in cfg
        .trunks
        .iter()
        .filter(|t| (for_reset || t.dialog_query) && t.host.is_none())
    {
        let addr = t.target();
        let flow = match t.transport {
            TrunkTransport::Tcp => Flow::tcp(addr),
            TrunkTransport::Tls => Flow::tls(addr),
            TrunkTransport::Udp => Flow::udp(addr),
        };
        if !seen.insert((addr, format!("sip:{addr}"))) {
            continue;
        }
        out.push(Endpoint {
            label: t.name.clone(),
            uri: format!("sip:{addr}"),
            flow,
            reset_event: t
                .reset_event
                .clone()
                .unwrap_or_else(|| DEFAULT_RESET.into()),
            priority: t.priority,
            registered_at: u64::MAX,
        });
    }
    out.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.registered_at.cmp(&a.registered_at))
    });
    (out, behind_nat)
}

/// The takeover report (in `/status` and the log).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: String,
    pub(crate) in_progress: bool,
    pub(crate) endpoints: usize,
    pub(crate) queried: usize,
    pub(crate) answered: usize,
    pub(crate) not_notifiers: usize,
    pub(crate) reset: usize,
    /// Not notifiers, but not reset because a call of theirs was recovered.
    pub(crate) reset_skipped: usize,
    /// Re-binds refused with 503 (overloaded endpoint) and tried again later.
    pub(crate) deferred: usize,
    /// Calls whose endpoint hung up before their re-bind started: ended on both legs.
    pub(crate) ended_before_rebind: usize,
    pub(crate) calls_found: usize,
    pub(crate) recovered: usize,
    pub(crate) recovered_via_query: usize,
    pub(crate) recovered_via_digest: usize,
    pub(crate) ended: usize,
    pub(crate) failed: usize,
    pub(crate) orphaned: usize,
    pub(crate) ringing_failed: usize,
    pub(crate) digest_calls: usize,
    pub(crate) tcp_unreachable: usize,
    /// Legs re-bound over the flow their phone opened to this node (`nat`).
    pub(crate) nat_own_flow: usize,
    /// Legs of phones behind NAT with no flow to this node ("NAT: no flow"): re-bound at
    /// the address the old active recorded, which their router may not admit.
    pub(crate) nat_no_flow: usize,
    /// Who they are (the first [`NAMED`] of them).
    pub(crate) nat_no_flow_parties: Vec<String>,
    /// Endpoints behind NAT without a flow to this node: not queried (nor reset).
    pub(crate) endpoints_behind_nat: usize,
    /// From takeover start to the last successful re-bind.
    pub(crate) rebind_ms: Option<u64>,
    /// From takeover start to the end of the whole procedure.
    pub(crate) total_ms: Option<u64>,
}

#[derive(Debug)]
struct Query {
    ep: Endpoint,
    deadline: Instant,
    answered: bool,
}

#[derive(Debug, Clone)]
struct Leg {
    dialog: Dialog,
    /// The endpoint's own identity (caller for A, callee for B).
    party: String,
    start_ms: u64,
}

#[derive(Debug, Default)]
struct Pending {
    a: Option<Leg>,
    b: Option<Leg>,
}

/// What the server must do for the takeover.
#[derive(Debug)]
pub(crate) enum Step {
    /// Re-bind a call.
    Adopt(Box<Adopted>),
    /// Hang up a leg without partner.
    Orphan {
        leg: Box<Dialog>,
        caller: String,
        callee: String,
        start_ms: u64,
    },
    /// Fail a call that was still ringing: final response to the caller, CANCEL (and BYE on
    /// its early dialog) to the callee.
    FailRinging(Box<RingRecord>),
}

/// One takeover in progress.
#[derive(Debug)]
pub(crate) struct Takeover {
    started: Instant,
    started_ms: u64,
    fallback: Fallback,
    parallel: usize,
    query_timeout: Duration,
    queue: VecDeque<Endpoint>,
    queries: HashMap<String, Query>,
    txs: HashMap<ClientTxId, Option<String>>,
    legs: HashMap<u64, Pending>,
    resets: VecDeque<Endpoint>,
    /// Fallback resets wait until every query has settled, then skip the endpoints in
    /// `saved`: a reset would drop the calls just recovered (DESIGN "Hot takeover", step 5).
    fallback_resets: VecDeque<Endpoint>,
    /// Addresses of endpoints with a call being re-bound (from the digest or a query).
    saved: HashSet<std::net::SocketAddr>,
    adopted: HashSet<u64>,
    initial: Vec<Step>,
    /// Calls found (digest or query) waiting for the pacer to let their re-bind start.
    waiting: WaitQueue,
    /// Something changed for the waiting calls since the last look (a call joined the queue,
    /// a re-bind ended and freed its places): the next tick looks at the queue.
    queue_changed: bool,
    /// How many waiting calls the last tick looked at (its cost).
    looked: usize,
    /// Per-destination re-bind windows (`pacing`).
    pacer: Pacer,
    /// T1, for what counts as a prompt answer.
    t1: Duration,
    /// While digest-known calls wait for the window, look again at this time.
    retry_at: Instant,
    /// When the B2BUA's re-binds still running may be counted again (see
    /// [`Takeover::finish_check_due`]).
    finish_check_at: Instant,
    /// The queue is looked at again no sooner than this (see [`LOOK_EVERY`]).
    look_at: Instant,
    /// The next batch of reset NOTIFYs may leave at this time.
    next_reset_at: Instant,
    pub(crate) report: Report,
}

impl Takeover {
    pub(crate) fn start(
        cfg: &Config,
        registrar: &Registrar,
        now: Instant,
        now_ms: u64,
        digest: crate::entropy::HashMap<u64, DigestCall>,
    ) -> Self {
        let mode = cfg.pair.as_ref().map_or(PairMode::Hot, |p| p.mode);
        let (eps, behind_nat) = endpoints(cfg, registrar, now, mode == PairMode::Cold);
        let mut t = Self::with(cfg, now, now_ms, digest, mode, eps);
        t.report.endpoints_behind_nat = behind_nat;
        if behind_nat > 0 {
            tracing::warn!(
                endpoints = behind_nat,
                "NAT: phones registered at the peer only are not asked for their calls (no flow to this node)"
            );
        }
        t
    }

    /// Adopt the calls a peer hands over after a network split healed (it stepped down and
    /// sent us its calls): re-bind them from their identifiers, asking no endpoint.
    pub(crate) fn handoff(
        cfg: &Config,
        now: Instant,
        now_ms: u64,
        digest: crate::entropy::HashMap<u64, DigestCall>,
    ) -> Self {
        let mut t = Self::with(cfg, now, now_ms, digest, PairMode::Hot, Vec::new());
        t.report.mode = "handoff".into();
        t
    }

    /// Re-bind calls this node already had (`RoleChange::Reclaim`).
    pub(crate) fn reclaim(cfg: &Config, now: Instant, now_ms: u64, calls: Vec<Adopted>) -> Self {
        let mut t = Self::with(
            cfg,
            now,
            now_ms,
            crate::entropy::HashMap::default(),
            PairMode::Hot,
            Vec::new(),
        );
        t.report.mode = "reclaim".into();
        for a in calls {
            t.adopted.insert(a.token);
            t.adopted.extend(a.alias_tokens());
            t.report.calls_found += 1;
            t.save(&a);
            t.enqueue(Box::new(a));
        }
        t
    }

    /// More handed-over calls for a takeover (or hand-off) in progress.
    pub(crate) fn add_calls(&mut self, digest: crate::entropy::HashMap<u64, DigestCall>) {
        for (token, c) in digest {
            if let (None, Some(a), Some(b)) = (c.ringing, c.a, c.b)
                && self.adopted.insert(token)
            {
                let adopted = from_digest(token, a, b);
                self.adopted.extend(adopted.alias_tokens());
                self.report.calls_found += 1;
                self.report.digest_calls += 1;
                self.save(&adopted);
                self.enqueue(Box::new(adopted));
            }
        }
        self.report.in_progress = true;
    }

    fn with(
        cfg: &Config,
        now: Instant,
        now_ms: u64,
        digest: crate::entropy::HashMap<u64, DigestCall>,
        mode: PairMode,
        eps: Vec<Endpoint>,
    ) -> Self {
        let mut initial = Vec::new();
        let mut legs: HashMap<u64, Pending> = HashMap::default();
        let mut adopted = HashSet::default();
        let (mut calls_found, mut ringing) = (0, 0);
        if mode == PairMode::Hot {
            for (token, c) in digest {
                if let Some(r) = c.ringing {
                    ringing += 1;
                    initial.push(Step::FailRinging(Box::new(r)));
                    continue;
                }
                match (c.a, c.b) {
                    (Some(a), Some(b)) => {
                        let call = from_digest(token, a, b);
                        adopted.insert(token);
                        adopted.extend(call.alias_tokens());
                        calls_found += 1;
                        initial.push(Step::Adopt(Box::new(call)));
                    }
                    (a, b) => {
                        let p = legs.entry(token).or_default();
                        p.a = a.map(digest_leg);
                        p.b = b.map(digest_leg);
                    }
                }
            }
            // Every endpoint is still asked: the digest lags the last keep-alive interval,
            // and calls set up in it may be between endpoints that also have digest-known
            // calls. Pairing by token merges both sources (a call is adopted once).
        }
        let caps = cfg
            .trunks
            .iter()
            .filter_map(|t| t.max_cps.map(|c| (t.address, c)))
            .collect();
        let mut t = Self {
            started: now,
            started_ms: now_ms,
            fallback: cfg.takeover.fallback,
            parallel: cfg.takeover.parallel.max(1),
            query_timeout: Duration::from_millis(cfg.takeover.query_timeout_ms),
            queue: VecDeque::new(),
            queries: HashMap::default(),
            txs: HashMap::default(),
            legs: HashMap::default(),
            resets: VecDeque::new(),
            fallback_resets: VecDeque::new(),
            saved: HashSet::default(),
            adopted,
            initial: Vec::new(),
            waiting: WaitQueue::default(),
            queue_changed: true,
            looked: 0,
            pacer: Pacer::new(caps),
            t1: Duration::from_millis(cfg.timers.t1_ms),
            retry_at: now,
            finish_check_at: now,
            look_at: now,
            next_reset_at: now,
            report: Report {
                mode: mode.as_str().into(),
                in_progress: true,
                endpoints: eps.len(),
                calls_found,
                ringing_failed: ringing,
                digest_calls: calls_found,
                ..Report::default()
            },
        };
        t.legs = legs;
        for step in initial {
            match step {
                Step::Adopt(a) => {
                    t.save(&a);
                    t.enqueue(a);
                }
                other => t.initial.push(other),
            }
        }
        match mode {
            PairMode::Hot => t.queue = eps.into(),
            PairMode::Cold => t.resets = eps.into(),
        }
        tracing::warn!(
            mode = mode.as_str(),
            endpoints = t.report.endpoints,
            "takeover started"
        );
        t
    }

    /// Whether a client transaction is ours.
    pub(crate) fn owns_tx(&self, id: ClientTxId) -> bool {
        self.txs.contains_key(&id)
    }

    /// A request in the dialog of a call still waiting for its re-bind: the call leaves the
    /// queue, with the leg the request came on and the other one.
    pub(crate) fn claim_waiting(&mut self, req: &Request) -> Option<(Adopted, Side)> {
        let call_id = req.call_id().ok()?;
        let a = self.waiting.claim(call_id)?.call;
        let side = if *a.a.call_id == *call_id {
            Side::A
        } else {
            Side::B
        };
        self.report.ended_before_rebind += 1;
        Some((*a, side))
    }

    /// Whether an in-dialog NOTIFY answers one of our queries.
    pub(crate) fn owns_notify(&self, req: &Request) -> bool {
        req.method == Method::Notify && req.call_id().is_ok_and(|c| self.queries.contains_key(c))
    }

    /// Put a call in the queue for the pacer.
    fn enqueue(&mut self, call: Box<Adopted>) {
        self.waiting.push_back(Waiting::new(call));
        self.queue_changed = true;
    }

    /// Re-binds started and not yet ended (the pacer's count).
    pub(crate) fn in_flight(&self) -> usize {
        self.pacer.in_flight()
    }

    /// Send queries and resets, expire silent endpoints, hang up orphans.
    /// `in_flight`: re-binds the B2BUA has not finished. Digest-known calls are handed over
    /// at most `parallel × 16` at a time, so ten thousand calls do not leave in one burst
    /// (which only makes the endpoints' sockets overflow and everybody retransmit).
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        in_flight: usize,
    ) -> Vec<Step> {
        let mut steps: Vec<Step> = std::mem::take(&mut self.initial);
        // Calls found so far start their re-bind as the pacer lets them: per destination, and
        // never more than `parallel × 16` at a time in all.
        // The queue is looked at from its front until the room is used up or a run of calls
        // were refused (their destinations' windows are full); refused calls go to the back.
        // Each tick then costs what it admits plus that run, not the whole queue: a tick comes
        // with every message, and a queue of 100,000 calls scanned each time would make the
        // takeover quadratic in its calls.
        // Looked at only when something changed (at most every `LOOK_EVERY`), or every 50 ms
        // (a `max_cps` bucket refills).
        let mut looked = 0;
        if (self.queue_changed && now >= self.look_at) || now >= self.retry_at {
            let mut room = (self.parallel * 16).saturating_sub(in_flight);
            let mut refused = 0;
            let queued = self.waiting.len();
            while room > 0 && refused < REFUSED_RUN && looked < queued {
                let Some((token, dests)) = self.waiting.front().map(|w| (w.call.token, w.dests))
                else {
                    break;
                };
                looked += 1;
                if self.pacer.admit(now, token, dests) {
                    let Some(w) = self.waiting.pop_front() else {
                        break;
                    };
                    room -= 1;
                    refused = 0;
                    steps.push(Step::Adopt(w.call));
                } else {
                    refused += 1;
                    self.waiting.rotate();
                }
            }
            self.queue_changed = false;
            self.retry_at = now + Duration::from_millis(50);
            self.look_at = now + LOOK_EVERY;
        }
        self.looked = looked;
        while self.queries.len() < self.parallel {
            let Some(ep) = self.queue.pop_front() else {
                break;
            };
            self.send_query(now, tx, me, ep);
        }
        let expired: Vec<String> = self
            .queries
            .iter()
            .filter(|(_, q)| now >= q.deadline)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(q) = self.queries.remove(&k) {
                tracing::debug!(
                    endpoint = q.ep.label,
                    "no dialog report in time: not a notifier"
                );
                self.not_notifier(q.ep);
            }
        }
        self.release_fallback_resets();
        if now >= self.next_reset_at {
            // Resets are fire-and-forget: `parallel` of them per pacing interval.
            for _ in 0..self.parallel {
                let Some(ep) = self.resets.pop_front() else {
                    break;
                };
                self.send_reset(now, tx, me, &ep);
            }
            self.next_reset_at = now + RESET_PACE;
        }
        if self.queue.is_empty() && self.queries.is_empty() && self.waiting.is_empty() {
            // Everything reported that will report: the rest are orphans.
            let orphans: Vec<u64> = self.legs.keys().copied().collect();
            for token in orphans {
                if let Some(p) = self.legs.remove(&token) {
                    for l in [p.a, p.b].into_iter().flatten() {
                        self.report.orphaned += 1;
                        steps.push(Step::Orphan {
                            caller: l.party.clone(),
                            callee: String::new(),
                            leg: Box::new(l.dialog),
                            start_ms: l.start_ms,
                        });
                    }
                }
            }
        }
        steps
    }

    fn send_query(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        ep: Endpoint,
    ) {
        let call_id = format!("q-{:016x}", crate::entropy::random::<u64>());
        let mut r = Request::new(Method::Subscribe, ep.uri.clone());
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(ep.flow.proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!(
                "<sip:takeover@{}>;tag={}",
                me.hostport(ep.flow.proto),
                new_tag()
            ),
        );
        h.push(HeaderName::To, format!("<{}>", ep.uri));
        h.push(HeaderName::CallId, call_id.clone());
        h.push(HeaderName::CSeq, "1 SUBSCRIBE");
        h.push(HeaderName::Contact, me.contact(ep.flow.proto));
        h.push(HeaderName::Event, "dialog");
        h.push(HeaderName::Accept, "application/dialog-info+xml");
        h.push(HeaderName::Expires, "0");
        self.report.queried += 1;
        match tx.send_request(now, &r, ep.flow) {
            Ok(id) => {
                self.txs.insert(id, Some(call_id.clone()));
                self.queries.insert(
                    call_id,
                    Query {
                        deadline: now + self.query_timeout,
                        ep,
                        answered: false,
                    },
                );
            }
            Err(_) => self.not_notifier(ep),
        }
    }

    fn send_reset(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        ep: &Endpoint,
    ) {
        let mut r = Request::new(Method::Notify, ep.uri.clone());
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(ep.flow.proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("<sip:pbx@{}>;tag={}", me.hostport(ep.flow.proto), new_tag()),
        );
        h.push(HeaderName::To, format!("<{}>", ep.uri));
        h.push(
            HeaderName::CallId,
            format!("cs-{:016x}", crate::entropy::random::<u64>()),
        );
        h.push(HeaderName::CSeq, "1 NOTIFY");
        h.push(HeaderName::Contact, me.contact(ep.flow.proto));
        h.push(HeaderName::Event, ep.reset_event.clone());
        h.push(HeaderName::SubscriptionState, "terminated");
        self.report.reset += 1;
        tracing::debug!(endpoint = ep.label, event = ep.reset_event, "reset NOTIFY");
        if let Ok(id) = tx.send_request(now, &r, ep.flow) {
            self.txs.insert(id, None);
        }
    }

    fn not_notifier(&mut self, ep: Endpoint) {
        self.report.not_notifiers += 1;
        if self.fallback == Fallback::Cold {
            self.fallback_resets.push_back(ep);
        }
    }

    /// Remember where a call being re-bound has its legs.
    fn save(&mut self, a: &Adopted) {
        self.saved.insert(a.a.next_hop().remote);
        self.saved.insert(a.b.next_hop().remote);
        self.saved.insert(a.a.flow.remote);
        self.saved.insert(a.b.flow.remote);
    }

    /// Once no query is pending, the fallback resets go, except to endpoints with a
    /// recovered call.
    fn release_fallback_resets(&mut self) {
        if !self.queue.is_empty() || !self.queries.is_empty() {
            return;
        }
        while let Some(ep) = self.fallback_resets.pop_front() {
            if self.saved.contains(&ep.flow.remote) {
                self.report.reset_skipped += 1;
                tracing::info!(
                    endpoint = ep.label,
                    "not a notifier, but a call of it was recovered: no reset"
                );
            } else {
                self.resets.push_back(ep);
            }
        }
    }

    /// A response (or `None`: timeout) for one of our transactions.
    pub(crate) fn on_result(&mut self, id: ClientTxId, resp: Option<&Response>) {
        let status = resp.map_or(408, |r| r.status);
        if status < 200 {
            return;
        }
        let Some(purpose) = self.txs.remove(&id) else {
            return;
        };
        let Some(call_id) = purpose else {
            return; // a reset NOTIFY: no particular answer is required
        };
        if (200..300).contains(&status) {
            return; // the NOTIFY with the dialogs follows (or already came)
        }
        if let Some(q) = self.queries.remove(&call_id)
            && !q.answered
        {
            tracing::debug!(
                endpoint = q.ep.label,
                status,
                "dialog query refused: not a notifier"
            );
            self.not_notifier(q.ep);
        }
    }

    /// A NOTIFY with an endpoint's dialogs.
    pub(crate) fn on_notify(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        id: ServerTxId,
        req: &Request,
    ) -> Vec<Step> {
        let _ = tx.respond(now, id, &response_to(req, 200, None));
        let Ok(call_id) = req.call_id() else {
            return Vec::new();
        };
        let Some(q) = self.queries.remove(call_id) else {
            return Vec::new();
        };
        self.report.answered += 1;
        let body = String::from_utf8_lossy(&req.body);
        let info = match dialoginfo::parse(&body) {
            Ok(i) => i,
            Err(e) => {
                tracing::info!(endpoint = q.ep.label, error = %e, "unusable dialog report");
                return Vec::new();
            }
        };
        let steps = Vec::new();
        for d in info.dialogs {
            if d.state != "confirmed" {
                continue; // ended, or still early (ringing calls are not recovered by query)
            }
            let Some((token, side)) = parse_tag(&d.remote_tag) else {
                continue; // not one of our calls
            };
            if self.adopted.contains(&token) {
                continue;
            }
            let leg = Leg {
                party: d.local_identity.clone().unwrap_or_default(),
                start_ms: d.duration.map_or(self.started_ms, |s| {
                    self.started_ms.saturating_sub(s.saturating_mul(1000))
                }),
                dialog: dialog_from(&d, q.ep.flow, &q.ep.uri, side),
            };
            let p = self.legs.entry(token).or_default();
            match side {
                Side::A => p.a = Some(leg),
                Side::B => p.b = Some(leg),
            }
            if p.a.is_some()
                && p.b.is_some()
                && let Some(p) = self.legs.remove(&token)
                && let (Some(a), Some(b)) = (p.a, p.b)
            {
                self.adopted.insert(token);
                self.report.calls_found += 1;
                let adopted = Adopted {
                    token,
                    caller: a.party.clone(),
                    callee: Uri::parse(&b.party)
                        .ok()
                        .and_then(|u| u.user)
                        .unwrap_or_else(|| b.party.clone()),
                    start_ms: a.start_ms,
                    a: a.dialog,
                    b: b.dialog,
                    source: Source::Query,
                    transfer_of: None,
                };
                self.save(&adopted);
                self.enqueue(Box::new(adopted));
            }
        }
        steps
    }

    /// Count the B2BUA's re-bind results; returns how long each recovered call's re-bind
    /// took.
    pub(crate) fn record(&mut self, now: Instant, outcomes: &[(u64, Outcome)]) -> Vec<Duration> {
        let mut took = Vec::new();
        for (token, o) in outcomes {
            let elapsed = self.pacer.elapsed(now, *token);
            if let (Some(d), Outcome::Recovered(_)) = (elapsed, o) {
                took.push(d);
            }
            let quick = elapsed.is_some_and(|d| d <= pacing::prompt(self.t1));
            let verdict = match o {
                Outcome::Recovered(_) if quick => Verdict::Prompt,
                Outcome::Ended(481) | Outcome::Failed(_) if quick => Verdict::Prompt,
                _ => Verdict::Congested,
            };
            self.pacer.finished(now, *token, verdict);
            self.queue_changed = true;
            match o {
                Outcome::Recovered(src) => {
                    self.report.recovered += 1;
                    match src {
                        Source::Query => self.report.recovered_via_query += 1,
                        Source::Digest => self.report.recovered_via_digest += 1,
                    }
                    self.report.rebind_ms =
                        Some(now.duration_since(self.started).as_millis() as u64);
                }
                Outcome::Ended(_) => self.report.ended += 1,
                Outcome::Unreachable => self.report.tcp_unreachable += 1,
                Outcome::Failed(_) => self.report.failed += 1,
                Outcome::Deferred => self.report.deferred += 1,
                Outcome::HungUp => self.report.ended_before_rebind += 1,
            }
        }
        took
    }

    /// Whether all work is done (the B2BUA's re-binds are counted separately).
    pub(crate) fn idle(&self) -> bool {
        self.waiting.is_empty()
            && self.queue.is_empty()
            && self.queries.is_empty()
            && self.resets.is_empty()
            && self.fallback_resets.is_empty()
            && self.legs.is_empty()
    }

    /// Whether to count the B2BUA's re-binds still running (a look at every call) now that
    /// the takeover is otherwise idle: at most every [`FINISH_CHECK`], else the takeover of
    /// 100,000 calls looks at all of them for every message its last re-binds bring.
    pub(crate) fn finish_check_due(&mut self, now: Instant) -> bool {
        if now < self.finish_check_at {
            return false;
        }
        self.finish_check_at = now + FINISH_CHECK;
        true
    }

    /// Close the report.
    pub(crate) fn finish(&mut self, now: Instant) {
        if self.report.in_progress {
            self.report.in_progress = false;
            self.report.total_ms = Some(now.duration_since(self.started).as_millis() as u64);
            let r = &self.report;
            tracing::warn!(
                mode = r.mode,
                endpoints = r.endpoints,
                answered = r.answered,
                not_notifiers = r.not_notifiers,
                reset = r.reset,
                recovered = r.recovered,
                orphaned = r.orphaned,
                ended = r.ended,
                failed = r.failed,
                rebind_ms = r.rebind_ms,
                total_ms = r.total_ms,
                "takeover finished"
            );
        }
    }

    /// The next deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let q = self.queries.values().map(|q| q.deadline).min();
        // A free query slot means work now; a full one waits for answers (which drive the
        // takeover as they arrive) or for the earliest query deadline.
        let query =
            (!self.queue.is_empty() && self.queries.len() < self.parallel).then_some(self.started);
        let settled = self.queue.is_empty() && self.queries.is_empty();
        let reset = (!self.resets.is_empty()).then_some(self.next_reset_at);
        let release = (settled && !self.fallback_resets.is_empty()).then_some(self.started);
        let waiting = (!self.waiting.is_empty()).then(|| {
            if self.queue_changed {
                self.look_at.min(self.retry_at)
            } else {
                self.retry_at
            }
        });
        let finish = (self.report.in_progress && self.idle()).then_some(self.finish_check_at);
        [q, query, reset, release, waiting, finish]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A call to re-bind from its two legs as the digest describes them.
fn from_digest(token: u64, a: LegRecord, b: LegRecord) -> Adopted {
    let transfer_of = a.transfer_of.clone().or_else(|| b.transfer_of.clone());
    let (a, caller, start_ms) = leg_dialog(a);
    let (b, callee, _) = leg_dialog(b);
    Adopted {
        token,
        caller,
        callee,
        start_ms,
        a,
        b,
        source: Source::Digest,
        transfer_of,
    }
}

fn angle(u: &str) -> String {
    if u.starts_with('<') {
        u.to_string()
    } else {
        format!("<{u}>")
    }
}

/// Our side of a leg, rebuilt from the endpoint's report of its side.
fn dialog_from(r: &DialogReport, flow: Flow, uri: &str, side: Side) -> Dialog {
    let target = r.local_target.clone().unwrap_or_else(|| uri.to_string());
    let remote_identity = r.local_identity.clone().unwrap_or_else(|| target.clone());
    let local_identity = r.remote_identity.clone().unwrap_or_else(|| match side {
        Side::A => "sip:callee@invalid".into(),
        Side::B => "sip:caller@invalid".into(),
    });
    Dialog {
        call_id: r.call_id.clone().into(),
        local_tag: r.remote_tag.clone().into(),
        remote_tag: r.local_tag.clone().into(),
        local_uri: angle(&local_identity).into(),
        remote_uri: angle(&remote_identity).into(),
        local_cseq: 0,
        remote_cseq: None,
        route_set: Box::default(),
        remote_target: target.into(),
        flow,
        // Where requests go is decided once the leg is adopted (`nat::reach`).
        pinned: false,
        state: DialogState::Confirmed,
    }
}

/// Our side of a leg, from the dialog digest (its strings moved, not copied: a takeover
/// turns 100,000 records into calls before its first re-bind), with the record's party and
/// start time.
fn leg_dialog(l: LegRecord) -> (Dialog, String, u64) {
    let dialog = Dialog {
        call_id: l.call_id.into(),
        local_tag: l.local_tag.into(),
        remote_tag: l.remote_tag.into(),
        local_uri: l.local_uri.into(),
        remote_uri: l.remote_uri.into(),
        local_cseq: l.cseq,
        remote_cseq: None,
        route_set: l.route_set.into_boxed_slice(),
        remote_target: l.remote_target.into(),
        flow: Flow {
            proto: l.proto,
            remote: l.remote,
            conn: None,
        },
        pinned: false,
        state: DialogState::Confirmed,
    };
    (dialog, l.party, l.start_ms)
}

fn digest_leg(l: LegRecord) -> Leg {
    let (dialog, party, start_ms) = leg_dialog(l);
    Leg {
        dialog,
        party,
        start_ms,
    }
}

#[cfg(test)]
#[path = "takeover_tests.rs"]
mod tests;
