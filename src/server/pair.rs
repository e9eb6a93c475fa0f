//! The pair inside the server: keep-alives on the wire, the role machine's actions, epoch
//! persistence, stand-by call refusal, switchover, and the RFC 3680 `reg` subscription in
//! both directions (the active notifies, the stand-by subscribes).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::config::{Config, PairConfig};
use crate::dialog::{Dialog, LocalContact};
use crate::pair::digest::{self, Ack, DigestLog, DigestTable};
use crate::pair::epoch::EpochStore;
use crate::pair::keepalive::{self, Info};
use crate::pair::regsync::{self, RegContact, RegInfo, RegRecord};
use crate::pair::{Action, Announced, Role, RoleMachine, Settings};
use crate::registrar::{Binding, Change, Origin, Registrar};
use crate::sip::{
    HeaderName, Method, NameAddr, Request, Response, SipMessage, new_tag, response_to,
};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};
use crate::transport::{Flow, Proto};

/// Subscription lifetime asked for and granted.
const REG_EXPIRES: u32 = 600;

/// Largest digest chunk on one keep-alive (bytes; keeps datagrams well under 16 KiB).
const DIGEST_CHUNK: usize = 12_000;

/// Extra keep-alives per interval when the digest has a backlog.
const DIGEST_EXTRA: usize = 8;

/// What happened that the server must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleChange {
    BecameActive(crate::pair::TakeoverReason),
    SteppedDown,
}

#[derive(Debug)]
enum Subscriber {
    Idle {
        retry_at: Instant,
    },
    Subscribing {
        tx: ClientTxId,
        request: Box<Request>,
    },
    Active {
        dialog: Box<Dialog>,
        refresh_at: Instant,
        refreshing: Option<ClientTxId>,
    },
}

#[derive(Debug)]
struct NotifierSub {
    dialog: Dialog,
    expires_at: Instant,
    version: u64,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PairStats {
    pub(crate) keepalives_sent: u64,
    pub(crate) keepalives_received: u64,
    pub(crate) keepalives_rejected: u64,
    pub(crate) reg_notifies_sent: u64,
    pub(crate) reg_notifies_received: u64,
}

/// The pair's state in the server.
#[derive(Debug)]
pub(crate) struct PairGlue {
    cfg: PairConfig,
    node: String,
    digest: String,
    secret: Vec<u8>,
    pub(crate) machine: RoleMachine,
    store: Box<dyn EpochStore>,
    ka_call_id: String,
    ka_tag: String,
    ka_seq: u32,
    sent: HashMap<u32, Instant>,
    probe_seq: Option<u32>,
    pub(crate) partitioned: bool,
    pub(crate) stats: PairStats,
    mismatch_logged: Option<String>,
    subscriber: Subscriber,
    notifier: HashMap<String, NotifierSub>,
    pub(crate) client_txs: HashSet<ClientTxId>,
    notify_txs: HashMap<ClientTxId, String>,
    domain: String,
    /// Active: digest entries not yet acknowledged by the stand-by.
    pub(crate) log: DigestLog,
    /// Stand-by: the active's calls as the digest describes them.
    pub(crate) table: DigestTable,
    /// Active: the stand-by asked for the full list.
    pub(crate) resync_wanted: bool,
    last_takeover: Option<Value>,
}

impl PairGlue {
    pub(crate) fn new(
        cfg: &Config,
        pair: &PairConfig,
        store: Box<dyn EpochStore>,
        now: Instant,
    ) -> Self {
        let epoch = match store.load() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(
                    error = e,
                    "cannot read the persisted epoch; starting from 0"
                );
                0
            }
        };
        let settings = Settings {
            keepalive: Duration::from_millis(pair.keepalive_ms),
            missed: pair.missed_keepalives,
            probe_timeout: Duration::from_millis(pair.probe_timeout_ms),
            home: cfg.node.home_role,
            witnesses: !pair.witnesses.is_empty(),
            preempt_after: pair
                .preempt
                .then(|| Duration::from_secs(pair.preempt_after_s)),
        };
        tracing::info!(node = cfg.node.name, epoch, peer = %pair.peer, "pair: listening for the peer before choosing a role");
        Self {
            cfg: pair.clone(),
            node: cfg.node.name.clone(),
            digest: cfg.shared_digest(),
            secret: pair.secret.as_bytes().to_vec(),
            machine: RoleMachine::new(settings, epoch, now),
            store,
            ka_call_id: format!("ka-{:016x}", rand::random::<u64>()),
            ka_tag: new_tag(),
            ka_seq: 0,
            sent: HashMap::new(),
            probe_seq: None,
            partitioned: false,
            stats: PairStats::default(),
            mismatch_logged: None,
            subscriber: Subscriber::Idle { retry_at: now },
            notifier: HashMap::new(),
            client_txs: HashSet::new(),
            notify_txs: HashMap::new(),
            domain: cfg.node.domain.clone(),
            log: DigestLog::new(),
            table: DigestTable::default(),
            resync_wanted: true,
            last_takeover: None,
        }
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.cfg.peer
    }

    fn info(&self, calls: usize, role: Announced) -> Info {
        Info {
            node: self.node.clone(),
            role,
            epoch: self.machine.epoch(),
            calls: calls as u64,
            config: self.digest.clone(),
        }
    }

    /// The body our keep-alives carry when stand-by: our digest acknowledgement.
    fn ack_body(&self) -> String {
        format!("A\t{}\n", self.table.current_ack().to_header())
    }

    fn keepalive_request(
        &mut self,
        me: &LocalContact,
        calls: usize,
        role: Announced,
        body: Option<String>,
    ) -> (Request, u32) {
        self.ka_seq += 1;
        let seq = self.ka_seq;
        let mut r = Request::new(Method::Options, format!("sip:{}", self.cfg.peer));
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(Proto::Udp));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("<sip:{}@{}>;tag={}", self.node, me.udp, self.ka_tag),
        );
        h.push(HeaderName::To, format!("<sip:{}>", self.cfg.peer));
        h.push(HeaderName::CallId, self.ka_call_id.clone());
        h.push(HeaderName::CSeq, format!("{seq} OPTIONS"));
        if let Some(b) = body {
            h.push(HeaderName::ContentType, digest::CONTENT_TYPE);
            r.body = Bytes::from(b);
        }
        let info = self.info(calls, role);
        keepalive::stamp(&mut r.headers, &self.secret, &info, &r.body);
        (r, seq)
    }

    /// Run the role machine and apply its actions. Returns role changes for the server.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        calls: usize,
    ) -> Vec<RoleChange> {
        self.machine.handle_timeout(now);
        let mut changes = Vec::new();
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::SendKeepalive(_) | Action::SendProbe if self.partitioned => {}
                Action::SendKeepalive(role) => {
                    if role == Announced::Standby {
                        let body = Some(self.ack_body());
                        let (r, seq) = self.keepalive_request(me, calls, role, body);
                        self.sent.insert(seq, now);
                        self.stats.keepalives_sent += 1;
                        tx.send_stateless(Flow::udp(self.cfg.peer), r.to_bytes());
                        continue;
                    }
                    // Active: the digest rides on the keep-alive; a backlog takes a few more.
                    let mut skip = 0;
                    for i in 0..=DIGEST_EXTRA {
                        let chunk = self.log.chunk(DIGEST_CHUNK, skip);
                        if i > 0 && chunk.is_none() {
                            break;
                        }
                        let body = chunk.map(|(b, n)| {
                            skip += n;
                            b
                        });
                        let (r, seq) = self.keepalive_request(me, calls, role, body);
                        self.sent.insert(seq, now);
                        self.stats.keepalives_sent += 1;
                        tx.send_stateless(Flow::udp(self.cfg.peer), r.to_bytes());
                    }
                }
                Action::SendProbe => {
                    let role = self.machine.announced();
                    let (r, seq) = self.keepalive_request(me, calls, role, None);
                    self.sent.insert(seq, now);
                    self.probe_seq = Some(seq);
                    tracing::warn!(peer = %self.cfg.peer, missed = self.cfg.missed_keepalives, "pair: peer silent; probing it directly");
                    tx.send_stateless(Flow::udp(self.cfg.peer), r.to_bytes());
                }
                Action::BecomeActive { epoch, reason } => {
                    if let Err(e) = self.store.store(epoch) {
                        tracing::error!(
                            error = e,
                            epoch,
                            "pair: cannot persist the epoch; acting as active anyway"
                        );
                    }
                    tracing::warn!(
                        node = self.node,
                        epoch,
                        ?reason,
                        "pair: this node is now ACTIVE"
                    );
                    self.last_takeover = Some(json!({ "epoch": epoch, "reason": reason }));
                    self.subscriber = Subscriber::Idle { retry_at: now };
                    changes.push(RoleChange::BecameActive(reason));
                }
                Action::StepDown(reason) => {
                    tracing::warn!(
                        node = self.node,
                        epoch = self.machine.epoch(),
                        peer_epoch = self.machine.peer().epoch,
                        ?reason,
                        "pair: stepping down to STANDBY"
                    );
                    self.notifier.clear();
                    self.table = DigestTable::default();
                    changes.push(RoleChange::SteppedDown);
                }
                Action::PingWitnesses => {
                    for w in self.cfg.witnesses.clone() {
                        let mut r = Request::new(Method::Options, format!("sip:{w}"));
                        r.headers.push(HeaderName::Via, me.via(Proto::Udp));
                        r.headers.push(HeaderName::MaxForwards, "70");
                        r.headers.push(
                            HeaderName::From,
                            format!("<sip:{}@{}>;tag={}", self.node, me.udp, new_tag()),
                        );
                        r.headers.push(HeaderName::To, format!("<sip:{w}>"));
                        r.headers
                            .push(HeaderName::CallId, format!("{}-w", self.ka_call_id));
                        r.headers.push(HeaderName::CSeq, "1 OPTIONS");
                        tracing::info!(witness = %w, "pair: asking a witness whether we can reach the network");
                        tx.send_stateless(Flow::udp(w), r.to_bytes());
                    }
                }
                Action::Warn(w) => tracing::warn!("pair: {w}"),
            }
        }
        self.sent
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(5));
        changes
    }

    fn observe(&mut self, info: &Info) {
        if info.config != self.digest {
            if self.mismatch_logged.as_deref() != Some(info.config.as_str()) {
                tracing::warn!(
                    peer = info.node,
                    ours = self.digest,
                    theirs = info.config,
                    "pair: configuration differs from the peer's (users, trunks, timers...)"
                );
                self.mismatch_logged = Some(info.config.clone());
            }
        } else if self.mismatch_logged.take().is_some() {
            tracing::info!(
                peer = info.node,
                "pair: configuration matches the peer's again"
            );
        }
    }

    /// A keep-alive OPTIONS from the peer: answer it (200 with our headers, or 403).
    pub(crate) fn on_keepalive_request(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        id: ServerTxId,
        req: &Request,
        calls: usize,
    ) {
        match keepalive::verify(req, &req.body, &self.secret) {
            Ok(info) => {
                self.stats.keepalives_received += 1;
                self.observe(&info);
                self.machine.on_keepalive(
                    now,
                    &info.node,
                    info.role,
                    info.epoch,
                    info.calls,
                    &info.config,
                    None,
                );
                let mut r = response_to(req, 200, Some(&self.ka_tag));
                if let Some(b) = self.on_digest_body(&req.body) {
                    r.headers
                        .push(HeaderName::ContentType, digest::CONTENT_TYPE);
                    r.body = Bytes::from(b);
                }
                let mine = self.info(calls, self.machine.announced());
                keepalive::stamp(&mut r.headers, &self.secret, &mine, &r.body);
                let _ = tx.respond(now, id, &r);
            }
            Err(e) => {
                self.stats.keepalives_rejected += 1;
                tracing::warn!(error = %e, "pair: keep-alive refused");
                let mut r = response_to(req, 403, Some(&new_tag()));
                r.reason = "Keep-alive Authentication Failed".into();
                let _ = tx.respond(now, id, &r);
            }
        }
    }

    /// A response that matched no transaction: the answer to one of our keep-alives?
    pub(crate) fn on_stray_response(&mut self, now: Instant, resp: &Response) -> bool {
        if resp
            .call_id()
            .is_ok_and(|c| c.strip_suffix("-w") == Some(self.ka_call_id.as_str()))
        {
            // Any answer from a witness proves the network around us works.
            self.machine.on_witness_answer();
            return true;
        }
        if resp.call_id().ok() != Some(self.ka_call_id.as_str()) {
            return false;
        }
        let Ok(cseq) = resp.cseq() else {
            return true;
        };
        if resp.status != 200 {
            return true;
        }
        let Ok(info) = keepalive::verify(resp, &resp.body, &self.secret) else {
            self.stats.keepalives_rejected += 1;
            return true;
        };
        let _ = self.on_digest_body(&resp.body);
        self.stats.keepalives_received += 1;
        self.observe(&info);
        let rtt = self.sent.remove(&cseq.seq).map(|t| now.duration_since(t));
        if self.probe_seq == Some(cseq.seq) {
            self.probe_seq = None;
            self.machine
                .on_probe_answer(now, &info.node, info.role, info.epoch);
        } else {
            self.machine.on_keepalive(
                now,
                &info.node,
                info.role,
                info.epoch,
                info.calls,
                &info.config,
                rtt,
            );
        }
        true
    }

    /// A digest body from the peer: a chunk (we are stand-by: apply it, return our ack) or an
    /// ack (we are active: drop what it covers, or prepare the full list).
    fn on_digest_body(&mut self, body: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(body).ok()?;
        if text.starts_with("D\t") {
            if self.machine.role() == Role::Active {
                return None; // two actives: ignore the other's digest
            }
            self.table.apply(text);
            return Some(self.ack_body());
        }
        if let Some(ack) = text.strip_prefix("A\t").and_then(|a| Ack::parse(a.trim()))
            && self.machine.role() == Role::Active
        {
            match ack {
                Ack::Upto(g, s) => self.log.on_ack(g, s),
                Ack::Resync => self.resync_wanted = true,
            }
        }
        None
    }

    // ---- registration sync: stand-by side -------------------------------------------------

    /// Start or refresh our `reg` subscription at the active peer.
    pub(crate) fn drive_subscriber(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
    ) {
        if self.partitioned || self.machine.role() != Role::Standby {
            return;
        }
        let peer_alive = self
            .machine
            .peer()
            .last_seen
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(2));
        let info = self.info(0, Announced::Standby);
        match &mut self.subscriber {
            Subscriber::Idle { retry_at } if now >= *retry_at && peer_alive => {
                let mut r = Request::new(Method::Subscribe, format!("sip:reg@{}", self.cfg.peer));
                let h = &mut r.headers;
                h.push(HeaderName::Via, me.via(Proto::Udp));
                h.push(HeaderName::MaxForwards, "70");
                h.push(
                    HeaderName::From,
                    format!("<sip:{}@{}>;tag={}", self.node, me.udp, new_tag()),
                );
                h.push(HeaderName::To, format!("<sip:reg@{}>", self.cfg.peer));
                h.push(
                    HeaderName::CallId,
                    format!("reg-{:016x}", rand::random::<u64>()),
                );
                h.push(HeaderName::CSeq, "1 SUBSCRIBE");
                h.push(HeaderName::Contact, me.contact(Proto::Udp));
                h.push(HeaderName::Event, "reg");
                h.push(HeaderName::Accept, "application/reginfo+xml");
                h.push(HeaderName::Expires, REG_EXPIRES.to_string());
                keepalive::stamp(&mut r.headers, &self.secret, &info, b"");
                if let Ok(id) = tx.send_request(now, &r, Flow::udp(self.cfg.peer)) {
                    self.client_txs.insert(id);
                    self.subscriber = Subscriber::Subscribing {
                        tx: id,
                        request: Box::new(r),
                    };
                }
            }
            Subscriber::Active {
                dialog,
                refresh_at,
                refreshing,
            } if now >= *refresh_at && refreshing.is_none() => {
                let mut r = dialog.request(Method::Subscribe, me, None);
                r.headers.push(HeaderName::Event, "reg");
                r.headers
                    .push(HeaderName::Accept, "application/reginfo+xml");
                r.headers.push(HeaderName::Expires, REG_EXPIRES.to_string());
                keepalive::stamp(&mut r.headers, &self.secret, &info, b"");
                if let Ok(id) = tx.send_request(now, &r, dialog.next_hop()) {
                    self.client_txs.insert(id);
                    *refreshing = Some(id);
                }
            }
            _ => {}
        }
    }

    /// A response or timeout for one of our pair client transactions.
    pub(crate) fn on_client_result(
        &mut self,
        now: Instant,
        id: ClientTxId,
        resp: Option<&Response>,
    ) {
        let status = resp.map_or(408, |r| r.status);
        if status < 200 {
            return;
        }
        self.client_txs.remove(&id);
        match &mut self.subscriber {
            Subscriber::Subscribing { tx, request } if *tx == id => {
                if let (200..=299, Some(resp)) = (status, resp)
                    && let Some(d) = Dialog::as_uac(request, resp, Flow::udp(self.cfg.peer))
                {
                    let exp = resp
                        .header_u32(&HeaderName::Expires)
                        .and_then(Result::ok)
                        .unwrap_or(REG_EXPIRES);
                    tracing::info!(peer = %self.cfg.peer, expires = exp, "pair: subscribed to the active's registrations");
                    self.subscriber = Subscriber::Active {
                        dialog: Box::new(d),
                        refresh_at: now + Duration::from_secs(u64::from(exp) * 4 / 5),
                        refreshing: None,
                    };
                } else {
                    tracing::info!(status, "pair: reg subscription refused; retrying");
                    self.subscriber = Subscriber::Idle {
                        retry_at: now + Duration::from_secs(1),
                    };
                }
            }
            Subscriber::Active {
                refreshing,
                refresh_at,
                ..
            } if *refreshing == Some(id) => {
                *refreshing = None;
                if (200..300).contains(&status) {
                    let exp = resp
                        .and_then(|r| r.header_u32(&HeaderName::Expires))
                        .and_then(Result::ok)
                        .unwrap_or(REG_EXPIRES);
                    *refresh_at = now + Duration::from_secs(u64::from(exp) * 4 / 5);
                } else {
                    self.subscriber = Subscriber::Idle {
                        retry_at: now + Duration::from_secs(1),
                    };
                }
            }
            _ => {
                // A NOTIFY we sent as notifier: 481 or no answer means the subscriber is gone.
                if let Some(call_id) = self.notify_txs.remove(&id)
                    && (status == 481 || status == 408)
                {
                    self.notifier.remove(&call_id);
                }
            }
        }
    }

    /// Whether an in-dialog request belongs to our reg subscription (a NOTIFY from the active).
    pub(crate) fn owns_in_dialog(&self, req: &Request) -> bool {
        let Ok(call_id) = req.call_id() else {
            return false;
        };
        match &self.subscriber {
            Subscriber::Active { dialog, .. } => dialog.call_id == call_id,
            Subscriber::Subscribing { request, .. } => request.call_id().ok() == Some(call_id),
            Subscriber::Idle { .. } => self.notifier.contains_key(call_id),
        }
    }

    /// A NOTIFY (or a SUBSCRIBE refresh) inside a reg subscription dialog.
    pub(crate) fn on_in_dialog(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &mut Registrar,
        id: ServerTxId,
        req: &Request,
        me: &LocalContact,
    ) {
        if req.method == Method::Subscribe {
            self.on_subscribe(now, tx, registrar, id, req, Flow::udp(self.cfg.peer), me);
            return;
        }
        if req.method != Method::Notify {
            let _ = tx.respond(now, id, &response_to(req, 405, None));
            return;
        }
        let _ = tx.respond(now, id, &response_to(req, 200, None));
        self.stats.reg_notifies_received += 1;
        let terminated = req
            .headers
            .get(&HeaderName::SubscriptionState)
            .is_some_and(|s| s.trim_start().starts_with("terminated"));
        let body = String::from_utf8_lossy(&req.body);
        match regsync::parse(&body) {
            Ok(info) => apply_reginfo(registrar, now, &info),
            Err(e) => tracing::warn!(error = %e, "pair: bad reginfo from the peer"),
        }
        if terminated {
            self.subscriber = Subscriber::Idle {
                retry_at: now + Duration::from_secs(1),
            };
        }
    }

    // ---- registration sync: active side --------------------------------------------------

    /// A SUBSCRIBE for `Event: reg` (out of dialog or a refresh).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_subscribe(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        registrar: &mut Registrar,
        id: ServerTxId,
        req: &Request,
        source: Flow,
        me: &LocalContact,
    ) {
        if keepalive::verify(req, &req.body, &self.secret).is_err() {
            let mut r = response_to(req, 403, Some(&new_tag()));
            r.reason = "Peer Authentication Failed".into();
            let _ = tx.respond(now, id, &r);
            return;
        }
        if self.machine.role() != Role::Active {
            let mut r = response_to(req, 503, Some(&new_tag()));
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = tx.respond(now, id, &r);
            return;
        }
        let expires = req
            .header_u32(&HeaderName::Expires)
            .and_then(Result::ok)
            .unwrap_or(REG_EXPIRES)
            .min(3600);
        let call_id = req.call_id().unwrap_or_default().to_string();
        if !self.notifier.contains_key(&call_id) {
            let tag = new_tag();
            let Some(mut d) = Dialog::as_uas(req, &tag, source) else {
                let _ = tx.respond(now, id, &response_to(req, 400, Some(&tag)));
                return;
            };
            d.state = crate::dialog::DialogState::Confirmed;
            self.notifier.insert(
                call_id.clone(),
                NotifierSub {
                    dialog: d,
                    expires_at: now,
                    version: 0,
                },
            );
        }
        let Some(sub) = self.notifier.get_mut(&call_id) else {
            return;
        };
        sub.expires_at = now + Duration::from_secs(u64::from(expires));
        let mut r = response_to(req, 200, Some(&sub.dialog.local_tag));
        r.headers.push(HeaderName::Expires, expires.to_string());
        r.headers.push(HeaderName::Contact, me.contact(Proto::Udp));
        let _ = tx.respond(now, id, &r);
        // RFC 6665 §4.2.1.2: a NOTIFY with the full state follows every accepted SUBSCRIBE.
        let full = full_state(registrar, now);
        self.send_notify(now, tx, me, &call_id, full, expires == 0);
        if expires == 0 {
            self.notifier.remove(&call_id);
        }
    }

    fn send_notify(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        call_id: &str,
        mut info: RegInfo,
        terminated: bool,
    ) {
        let Some(sub) = self.notifier.get_mut(call_id) else {
            return;
        };
        info.version = sub.version;
        sub.version += 1;
        let left = sub.expires_at.saturating_duration_since(now).as_secs();
        let mut r = sub.dialog.request(Method::Notify, me, None);
        r.headers.push(HeaderName::Event, "reg");
        r.headers.push(
            HeaderName::SubscriptionState,
            if terminated {
                "terminated;reason=timeout".to_string()
            } else {
                format!("active;expires={left}")
            },
        );
        r.headers
            .push(HeaderName::ContentType, "application/reginfo+xml");
        r.body = Bytes::from(regsync::to_xml(&info, &self.domain));
        let hop = sub.dialog.next_hop();
        if let Ok(id) = tx.send_request(now, &r, hop) {
            self.client_txs.insert(id);
            self.notify_txs.insert(id, call_id.to_string());
            self.stats.reg_notifies_sent += 1;
        }
    }

    /// Send partial NOTIFYs for registrar changes; expire subscriptions.
    pub(crate) fn publish_changes(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        changes: &[Change],
    ) {
        self.notifier.retain(|_, s| s.expires_at > now);
        if self.machine.role() != Role::Active || changes.is_empty() || self.notifier.is_empty() {
            return;
        }
        let mut records: Vec<RegRecord> = Vec::new();
        for c in changes {
            let (aor, contact) = match c {
                Change::Bound { aor, binding } if binding.origin != Origin::Static => {
                    (aor, contact_of(binding, now))
                }
                Change::Removed { aor, contact, .. } => (
                    aor,
                    RegContact {
                        uri: contact.clone(),
                        active: false,
                        expires: 0,
                        source: None,
                    },
                ),
                Change::Bound { .. } => continue,
            };
            match records.iter_mut().find(|r| &r.aor == aor) {
                Some(r) => r.contacts.push(contact),
                None => records.push(RegRecord {
                    aor: aor.clone(),
                    contacts: vec![contact],
                }),
            }
        }
        if records.is_empty() {
            return;
        }
        let keys: Vec<String> = self.notifier.keys().cloned().collect();
        for k in keys {
            let info = RegInfo {
                version: 0,
                full: false,
                records: records.clone(),
            };
            self.send_notify(now, tx, me, &k, info, false);
        }
    }

    // ---- admin ----------------------------------------------------------------------------

    pub(crate) fn status(&self, now: Instant) -> Value {
        let p = self.machine.peer();
        let alive = p.last_seen.is_some_and(|t| {
            now.duration_since(t)
                < Duration::from_millis(
                    self.cfg.keepalive_ms * u64::from(self.cfg.missed_keepalives),
                )
        });
        let state = match (p.last_seen, alive) {
            (None, _) => "unknown",
            (Some(_), true) => "alive",
            (Some(_), false) => "missing",
        };
        json!({
            "peer": {
                "address": self.cfg.peer.to_string(),
                "name": p.name,
                "state": state,
                "role": p.role.map(Announced::as_str),
                "epoch": p.epoch,
                "calls": p.calls,
                "last_keepalive_age_ms": p.last_seen.map(|t| now.duration_since(t).as_millis() as u64),
                "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "missed_keepalives": self.machine.missed(),
                "partitioned": self.partitioned,
                "isolated": self.machine.isolated,
            },
            "config_match": p.config.as_deref().is_none_or(|c| c == self.digest),
            "mode": self.cfg.mode.as_str(),
            "reg_sync": match &self.subscriber {
                Subscriber::Idle { .. } => "idle",
                Subscriber::Subscribing { .. } => "subscribing",
                Subscriber::Active { .. } => "subscribed",
            },
            "reg_subscribers": self.notifier.len(),
            "digest": {
                "calls_known": self.table.len(),
                "backlog": self.log.backlog(),
                "bytes_sent": self.log.bytes_sent,
            },
            "last_takeover": self.last_takeover,
        })
    }

    pub(crate) fn accepts_calls(&self) -> bool {
        self.machine.accepts_calls()
    }

    pub(crate) fn config_match(&self) -> bool {
        self.machine
            .peer()
            .config
            .as_deref()
            .is_none_or(|c| c == self.digest)
    }

    pub(crate) fn redirect(&self) -> bool {
        self.cfg.redirect_when_standby
    }
}

fn contact_of(b: &Binding, now: Instant) -> RegContact {
    RegContact {
        uri: b.contact.uri.to_string(),
        active: true,
        expires: b.remaining(now) as u32,
        source: b.source.map(|f| format!("{}:{}", f.proto, f.remote)),
    }
}

fn full_state(registrar: &Registrar, now: Instant) -> RegInfo {
    let mut records: Vec<RegRecord> = registrar
        .location()
        .iter()
        .map(|(aor, list)| RegRecord {
            aor: aor.clone(),
            contacts: list
                .iter()
                .filter(|b| b.origin != Origin::Static && b.expires_at > now)
                .map(|b| contact_of(b, now))
                .collect(),
        })
        .filter(|r| !r.contacts.is_empty())
        .collect();
    records.sort_by(|a, b| a.aor.cmp(&b.aor));
    RegInfo {
        version: 0,
        full: true,
        records,
    }
}

fn parse_source(s: &str) -> Option<Flow> {
    let (proto, addr) = s.split_once(':')?;
    let addr: SocketAddr = addr.parse().ok()?;
    Some(match Proto::from_token(proto)? {
        Proto::Udp => Flow::udp(addr),
        Proto::Tcp => Flow::tcp(addr),
    })
}

/// Apply a reginfo document from the peer to our location service.
fn apply_reginfo(registrar: &mut Registrar, now: Instant, info: &RegInfo) {
    let loc = registrar.location_mut();
    if info.full {
        let peer_learned: Vec<(String, String)> = loc
            .iter()
            .flat_map(|(aor, l)| {
                l.iter()
                    .filter(|b| b.origin == Origin::Peer)
                    .map(|b| (aor.clone(), b.contact.uri.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (aor, uri) in peer_learned {
            loc.unbind(&aor, &uri);
        }
    }
    for r in &info.records {
        for c in &r.contacts {
            if !c.active || c.expires == 0 {
                loc.unbind(&r.aor, &c.uri);
                continue;
            }
            let Ok(contact) = NameAddr::parse(&format!("<{}>", c.uri)) else {
                continue;
            };
            loc.bind(
                &r.aor,
                Binding {
                    contact,
                    expires_at: now + Duration::from_secs(u64::from(c.expires)),
                    source: c.source.as_deref().and_then(parse_source),
                    call_id: String::new(),
                    cseq: 0,
                    origin: Origin::Peer,
                    registered_at_s: 0,
                },
            );
        }
    }
}
