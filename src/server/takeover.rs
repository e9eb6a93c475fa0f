//! Takeover without replication (DESIGN "Hot takeover", "Cold takeover"; seed figures 2–7).
//!
//! Hot: ask every known endpoint for its dialogs (`SUBSCRIBE Event: dialog`, `Expires: 0`,
//! at most `takeover.parallel` at once, each within `query_timeout_ms`), pair the reported
//! legs by the call token in our tags, and hand complete calls to the B2BUA to re-bind. A leg
//! whose partner never turns up is hung up (`takeover_orphan`). Endpoints that are not
//! notifiers (any non-2xx, or silence) are reset the cold way when `takeover.fallback = cold`.
//! Cold: send each endpoint `NOTIFY Event: check-sync` and start with every line idle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::b2bua::{Adopted, Outcome, Side, Source, parse_tag};
use crate::config::{Config, Fallback, PairMode, TrunkTransport};
use crate::dialog::{Dialog, DialogState, LocalContact, uri_flow};
use crate::pair::dialoginfo::{self, DialogReport};
use crate::registrar::Registrar;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, Uri, new_tag, response_to};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};
use crate::transport::Flow;

/// Default reset event (DESIGN: the seed asks endpoints to drop their calls and re-initialise).
const DEFAULT_RESET: &str = "check-sync;reboot=true";

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
/// `dialog_query = true` (all trunks for a reset), in priority order.
pub(crate) fn endpoints(cfg: &Config, registrar: &Registrar, now: Instant, for_reset: bool) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (aor, list) in registrar.location().iter() {
        let user = cfg.user(aor);
        for b in list.iter().filter(|b| b.expires_at > now) {
            let Some(flow) = b.source.or_else(|| uri_flow(&b.contact.uri)) else {
                continue;
            };
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
    for t in cfg.trunks.iter().filter(|t| for_reset || t.dialog_query) {
        let addr = t.address.target();
        let flow = match t.transport {
            TrunkTransport::Tcp => Flow::tcp(addr),
            TrunkTransport::Udp => Flow::udp(addr),
        };
        if !seen.insert((addr, format!("sip:{addr}"))) {
            continue;
        }
        out.push(Endpoint {
            label: t.name.clone(),
            uri: format!("sip:{addr}"),
            flow,
            reset_event: t.reset_event.clone().unwrap_or_else(|| DEFAULT_RESET.into()),
            priority: t.priority,
            registered_at: u64::MAX,
        });
    }
    out.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.registered_at.cmp(&a.registered_at)));
    out
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
    pub(crate) calls_found: usize,
    pub(crate) recovered: usize,
    pub(crate) recovered_via_query: usize,
    pub(crate) recovered_via_digest: usize,
    pub(crate) ended: usize,
    pub(crate) failed: usize,
    pub(crate) orphaned: usize,
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
    report: DialogReport,
    flow: Flow,
    uri: String,
    seen: Instant,
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
    adopted: HashSet<u64>,
    pub(crate) report: Report,
}

impl Takeover {
    pub(crate) fn start(cfg: &Config, registrar: &Registrar, now: Instant, now_ms: u64) -> Self {
        let mode = cfg.pair.as_ref().map_or(PairMode::Hot, |p| p.mode);
        let eps = endpoints(cfg, registrar, now, mode == PairMode::Cold);
        let mut t = Self {
            started: now,
            started_ms: now_ms,
            fallback: cfg.takeover.fallback,
            parallel: cfg.takeover.parallel.max(1),
            query_timeout: Duration::from_millis(cfg.takeover.query_timeout_ms),
            queue: VecDeque::new(),
            queries: HashMap::new(),
            txs: HashMap::new(),
            legs: HashMap::new(),
            resets: VecDeque::new(),
            adopted: HashSet::new(),
            report: Report {
                mode: mode.as_str().into(),
                in_progress: true,
                endpoints: eps.len(),
                ..Report::default()
            },
        };
        match mode {
            PairMode::Hot => t.queue = eps.into(),
            PairMode::Cold => t.resets = eps.into(),
        }
        tracing::warn!(mode = mode.as_str(), endpoints = t.report.endpoints, "takeover started");
        t
    }

    /// Whether a client transaction is ours.
    pub(crate) fn owns_tx(&self, id: ClientTxId) -> bool {
        self.txs.contains_key(&id)
    }

    /// Whether an in-dialog NOTIFY answers one of our queries.
    pub(crate) fn owns_notify(&self, req: &Request) -> bool {
        req.method == Method::Notify && req.call_id().is_ok_and(|c| self.queries.contains_key(c))
    }

    /// Send queries and resets, expire silent endpoints, hang up orphans.
    pub(crate) fn tick(&mut self, now: Instant, tx: &mut TransactionLayer, me: &LocalContact) -> Vec<Step> {
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
                tracing::debug!(endpoint = q.ep.label, "no dialog report in time: not a notifier");
                self.not_notifier(q.ep);
            }
        }
        for _ in 0..self.parallel {
            let Some(ep) = self.resets.pop_front() else {
                break;
            };
            self.send_reset(now, tx, me, &ep);
        }
        let mut steps = Vec::new();
        if self.queue.is_empty() && self.queries.is_empty() {
            // Everything reported that will report: the rest are orphans.
            let orphans: Vec<u64> = self.legs.keys().copied().collect();
            for token in orphans {
                if let Some(p) = self.legs.remove(&token) {
                    for (leg, side) in [(p.a, Side::A), (p.b, Side::B)] {
                        if let Some(l) = leg {
                            self.report.orphaned += 1;
                            let d = dialog_from(&l, side);
                            let start_ms = start_of(&l, self.started_ms);
                            steps.push(Step::Orphan {
                                caller: l.report.remote_identity.clone().unwrap_or_default(),
                                callee: l.report.local_identity.clone().unwrap_or_default(),
                                leg: Box::new(d),
                                start_ms,
                            });
                        }
                    }
                }
            }
        }
        steps
    }

    fn send_query(&mut self, now: Instant, tx: &mut TransactionLayer, me: &LocalContact, ep: Endpoint) {
        let call_id = format!("q-{:016x}", rand::random::<u64>());
        let mut r = Request::new(Method::Subscribe, ep.uri.clone());
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(ep.flow.proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, format!("<sip:takeover@{}>;tag={}", me.hostport(ep.flow.proto), new_tag()));
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

    fn send_reset(&mut self, now: Instant, tx: &mut TransactionLayer, me: &LocalContact, ep: &Endpoint) {
        let mut r = Request::new(Method::Notify, ep.uri.clone());
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(ep.flow.proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, format!("<sip:pbx@{}>;tag={}", me.hostport(ep.flow.proto), new_tag()));
        h.push(HeaderName::To, format!("<{}>", ep.uri));
        h.push(HeaderName::CallId, format!("cs-{:016x}", rand::random::<u64>()));
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
            self.resets.push_back(ep);
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
            tracing::debug!(endpoint = q.ep.label, status, "dialog query refused: not a notifier");
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
        let mut steps = Vec::new();
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
                report: d,
                flow: q.ep.flow,
                uri: q.ep.uri.clone(),
                seen: now,
            };
            let p = self.legs.entry(token).or_default();
            match side {
                Side::A => p.a = Some(leg),
                Side::B => p.b = Some(leg),
            }
            if p.a.is_some() && p.b.is_some()
                && let Some(p) = self.legs.remove(&token)
                && let (Some(a), Some(b)) = (p.a, p.b)
            {
                self.adopted.insert(token);
                self.report.calls_found += 1;
                steps.push(Step::Adopt(Box::new(Adopted {
                    token,
                    caller: a.report.local_identity.clone().unwrap_or_default(),
                    callee: b
                        .report
                        .local_identity
                        .as_deref()
                        .and_then(|u| Uri::parse(u).ok())
                        .and_then(|u| u.user)
                        .unwrap_or_default(),
                    start_ms: start_of(&a, self.started_ms),
                    a: dialog_from(&a, Side::A),
                    b: dialog_from(&b, Side::B),
                    source: Source::Query,
                })));
            }
        }
        steps
    }

    /// Count the B2BUA's re-bind results.
    pub(crate) fn record(&mut self, now: Instant, outcomes: &[(u64, Outcome)]) {
        for (_, o) in outcomes {
            match o {
                Outcome::Recovered(src) => {
                    self.report.recovered += 1;
                    match src {
                        Source::Query => self.report.recovered_via_query += 1,
                        Source::Digest => self.report.recovered_via_digest += 1,
                    }
                    self.report.rebind_ms = Some(now.duration_since(self.started).as_millis() as u64);
                }
                Outcome::Ended(_) => self.report.ended += 1,
                Outcome::Failed(_) => self.report.failed += 1,
            }
        }
    }

    /// Whether all work is done (the B2BUA's re-binds are counted separately).
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && self.queries.is_empty() && self.resets.is_empty() && self.legs.is_empty()
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
        let work = (!self.resets.is_empty() || !self.queue.is_empty()).then_some(self.started);
        [q, work].into_iter().flatten().min()
    }
}

fn start_of(l: &Leg, now_ms: u64) -> u64 {
    l.report
        .duration
        .map_or(now_ms, |d| now_ms.saturating_sub(d.saturating_mul(1000)))
}

fn angle(u: &str) -> String {
    if u.starts_with('<') { u.to_string() } else { format!("<{u}>") }
}

/// Our side of a leg, rebuilt from the endpoint's report of its side.
fn dialog_from(l: &Leg, side: Side) -> Dialog {
    let r = &l.report;
    let target = r.local_target.clone().unwrap_or_else(|| l.uri.clone());
    let remote_identity = r.local_identity.clone().unwrap_or_else(|| target.clone());
    let local_identity = r.remote_identity.clone().unwrap_or_else(|| format!("sip:{}", side_label(side)));
    let _ = l.seen;
    Dialog {
        call_id: r.call_id.clone(),
        local_tag: r.remote_tag.clone(),
        remote_tag: r.local_tag.clone(),
        local_uri: angle(&local_identity),
        remote_uri: angle(&remote_identity),
        local_cseq: 0,
        remote_cseq: None,
        route_set: Vec::new(),
        remote_target: target,
        flow: l.flow,
        state: DialogState::Confirmed,
    }
}

fn side_label(side: Side) -> &'static str {
    match side {
        Side::A => "callee@pbx",
        Side::B => "caller@pbx",
    }
}
