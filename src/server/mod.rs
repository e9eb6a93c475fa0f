//! The sans-IO SIP server: every protocol layer assembled behind one interface. Bytes and
//! clock readings go in ([`Server::handle_inbound`], [`Server::handle_timeout`]); messages to
//! send, CDRs and the next deadline come out. The `node` module drives it with real sockets;
//! tests and benchmarks drive it directly.

mod uas;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::b2bua::{B2bua, Env};
use crate::cdr::CdrRecord;
use crate::config::Config;
use crate::dialog::LocalContact;
use crate::registrar::{self, AuthOutcome, Registrar};
use crate::sip::{
    HeaderName, Message, Method, Request, SipMessage, new_tag, response_to, salvage_request,
    validate,
};
use crate::transaction::{ServerTxId, Timers, TransactionLayer, TxEvent};
use crate::transport::{Flow, Inbound, Transmit};

/// How often bindings and nonces are expired.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Message counters for metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Requests received, by method.
    pub requests: BTreeMap<String, u64>,
    /// Responses received, by class (index 1–6).
    pub responses: [u64; 7],
    /// Malformed messages answered with 400.
    pub malformed_answered: u64,
    /// Malformed messages dropped (no route for a response).
    pub malformed_dropped: u64,
}

/// The server.
#[derive(Debug)]
pub struct Server {
    cfg: Arc<Config>,
    me: LocalContact,
    me_hostports: Vec<String>,
    tx: TransactionLayer,
    registrar: Registrar,
    b2bua: B2bua,
    base: (Instant, u64),
    epoch: u32,
    next_housekeeping: Instant,
    counters: Counters,
    cdrs: Vec<CdrRecord>,
}

impl Server {
    /// A server for `cfg`, advertising `me`, with the clock read once at start (`now`, and
    /// the wall clock `wall_ms` at that instant).
    pub fn new(cfg: Arc<Config>, me: LocalContact, now: Instant, wall_ms: u64) -> Self {
        let timers = Timers {
            t1: Duration::from_millis(cfg.timers.t1_ms),
            t2: Duration::from_millis(cfg.timers.t2_ms),
            t4: Duration::from_millis(cfg.timers.t4_ms),
        };
        let secret: Vec<u8> = cfg
            .pair
            .as_ref()
            .map(|p| p.secret.as_bytes().to_vec())
            .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
        let settings = registrar::Settings {
            realm: cfg.realm().to_string(),
            min_expires: cfg.registrar.min_expires,
            max_expires: cfg.registrar.max_expires,
            default_expires: cfg.registrar.default_expires,
            nonce_secret: secret,
            nonce_lifetime_s: 300,
            max_auth_failures: 10,
        };
        let mut registrar = Registrar::new(
            settings,
            cfg.users
                .iter()
                .map(|u| (u.name.as_str(), u.password.as_str())),
        );
        for u in &cfg.users {
            if let Some(c) = &u.contact
                && let Err(e) = registrar.add_static(&u.name, c, now)
            {
                tracing::warn!(user = u.name, error = e, "static contact ignored");
            }
        }
        let me_hostports = vec![me.udp.clone(), me.tcp.clone()];
        Self {
            tx: TransactionLayer::new(timers, cfg.node.force_rport),
            cfg,
            me,
            me_hostports,
            registrar,
            b2bua: B2bua::new(),
            base: (now, wall_ms),
            epoch: 1,
            next_housekeeping: now + HOUSEKEEPING,
            counters: Counters::default(),
            cdrs: Vec::new(),
        }
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.base.1 + now.saturating_duration_since(self.base.0).as_millis() as u64
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The registrar.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The B2BUA.
    pub fn b2bua(&self) -> &B2bua {
        &self.b2bua
    }

    /// The transaction layer.
    pub fn transactions(&self) -> &TransactionLayer {
        &self.tx
    }

    /// Message counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Something arrived from the network.
    pub fn handle_inbound(&mut self, now: Instant, inbound: Inbound) {
        match inbound {
            Inbound::Message(parsed, flow) => {
                if let Err(rej) = validate(&parsed) {
                    match parsed.message {
                        Message::Request(req) if req.method != Method::Ack => {
                            tracing::debug!(%flow, status = rej.status, reason = rej.reason, "invalid request");
                            let mut r = response_to(&req, rej.status, Some(&new_tag()));
                            r.reason = rej.reason;
                            if rej.status == 501 {
                                r.headers.push(HeaderName::Allow, crate::b2bua::ALLOW);
                            }
                            self.counters.malformed_answered += 1;
                            self.tx.send_stateless(flow, r.to_bytes());
                        }
                        _ => {
                            tracing::debug!(%flow, reason = rej.reason, "invalid message dropped");
                            self.counters.malformed_dropped += 1;
                        }
                    }
                    return;
                }
                match parsed.message {
                    Message::Request(req) => {
                        tracing::debug!(%flow, method = %req.method, uri = req.uri, call_id = req.call_id().unwrap_or(""), "request in");
                        *self
                            .counters
                            .requests
                            .entry(req.method.as_str().to_string())
                            .or_default() += 1;
                        self.tx.handle_request(now, req, flow);
                    }
                    Message::Response(resp) => {
                        tracing::debug!(%flow, status = resp.status, call_id = resp.call_id().unwrap_or(""), "response in");
                        let class = usize::from(resp.status / 100).min(6);
                        self.counters.responses[class] += 1;
                        self.tx.handle_response(now, resp, flow);
                    }
                }
            }
            Inbound::Malformed { raw, error, flow } => match salvage_request(&raw) {
                Some(s) if s.method != "ACK" => {
                    tracing::debug!(%flow, error, "malformed request answered 400");
                    let mut r = crate::sip::Response::new(400);
                    r.reason = format!(
                        "Bad Request ({})",
                        error.chars().take(80).collect::<String>()
                    );
                    for h in s.headers.iter() {
                        r.headers.push(h.name.clone(), h.value.clone());
                    }
                    self.counters.malformed_answered += 1;
                    self.tx.send_stateless(flow, r.to_bytes());
                }
                _ => {
                    tracing::debug!(%flow, error, "malformed message dropped");
                    self.counters.malformed_dropped += 1;
                }
            },
        }
        self.drain_events(now);
    }

    fn env_parts(&mut self, now: Instant) -> (Env<'_>, &mut B2bua) {
        let now_ms = self.wall_ms(now);
        (
            Env {
                now,
                now_ms,
                tx: &mut self.tx,
                registrar: &self.registrar,
                cfg: &self.cfg,
                me: &self.me,
                epoch: self.epoch,
                node: &self.cfg.node.name,
            },
            &mut self.b2bua,
        )
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TxEvent::Request {
                    id,
                    request,
                    source,
                } => self.on_request(now, id, request, source),
                TxEvent::Ack { request, .. } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_ack(&mut env, &request);
                }
                TxEvent::Response { id, response } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_response(&mut env, id, response);
                }
                TxEvent::Timeout { id } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_timeout(&mut env, id);
                }
                TxEvent::NoAck { id } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_no_ack(&mut env, id);
                }
                TxEvent::StrayResponse { response, source } => {
                    tracing::trace!(%source, status = response.status, "stray response");
                }
            }
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
    }

    fn reply(&mut self, now: Instant, id: ServerTxId, req: &Request, status: u16) {
        let r = response_to(req, status, Some(&new_tag()));
        let _ = self.tx.respond(now, id, &r);
    }

    fn on_request(&mut self, now: Instant, id: ServerTxId, req: Request, source: Flow) {
        let me: Vec<&str> = self.me_hostports.iter().map(String::as_str).collect();
        if let Err(refusal) = uas::check(&req, &me) {
            let mut r = response_to(&req, refusal.status, Some(&new_tag()));
            for (n, v) in refusal.headers {
                r.headers.push(n, v);
            }
            let _ = self.tx.respond(now, id, &r);
            return;
        }
        if req.method == Method::Cancel {
            let target = self.tx.cancel_target(&req);
            match target {
                Some(invite) => {
                    self.reply(now, id, &req, 200);
                    if self.tx.is_pending(invite) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_cancel(&mut env, invite);
                    }
                }
                None => self.reply(now, id, &req, 481),
            }
            return;
        }
        if req.to_tag().is_some() {
            let (mut env, b) = self.env_parts(now);
            if !b.on_in_dialog(&mut env, id, req.clone(), source) {
                self.reply(now, id, &req, 481);
            }
            return;
        }
        let now_s = self.wall_ms(now) / 1000;
        match req.method {
            Method::Register => {
                let r = self.registrar.handle_register(now, now_s, &req, source);
                let _ = self.tx.respond(now, id, &r);
            }
            Method::Options => {
                let mut r = response_to(&req, 200, Some(&new_tag()));
                r.headers.push(HeaderName::Allow, crate::b2bua::ALLOW);
                r.headers.push(HeaderName::Accept, uas::ACCEPT);
                r.headers.push(HeaderName::Supported, uas::SUPPORTED);
                let _ = self.tx.respond(now, id, &r);
            }
            Method::Invite => {
                let trunk = self
                    .cfg
                    .trunk_for_source(source.remote)
                    .map(|t| t.name.clone());
                if trunk.is_none() {
                    match self.registrar.authenticate(now, now_s, &req, source, true) {
                        AuthOutcome::Authenticated(_) => {}
                        AuthOutcome::Reject(r) => {
                            let _ = self.tx.respond(now, id, &r);
                            return;
                        }
                    }
                }
                let (mut env, b) = self.env_parts(now);
                b.on_invite(&mut env, id, req, source, trunk.as_deref());
                self.cdrs.extend(self.b2bua.take_cdrs());
            }
            Method::Subscribe => {
                self.reply(now, id, &req, 489);
            }
            _ => self.reply(now, id, &req, 481),
        }
    }

    /// Fire everything due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.drain_events(now);
        {
            let (mut env, b) = self.env_parts(now);
            b.handle_timeout(&mut env);
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
        if now >= self.next_housekeeping {
            let now_s = self.wall_ms(now) / 1000;
            self.registrar.expire(now, now_s);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
    }

    /// When [`Self::handle_timeout`] should run next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.b2bua.poll_timeout(),
            Some(self.next_housekeeping),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.poll_transmit()
    }

    /// CDRs of calls that ended since the last call.
    pub fn take_cdrs(&mut self) -> Vec<CdrRecord> {
        std::mem::take(&mut self.cdrs)
    }
}
