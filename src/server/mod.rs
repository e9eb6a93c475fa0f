//! The sans-IO SIP server: every protocol layer assembled behind one interface. Bytes and
//! clock readings go in ([`Server::handle_inbound`], [`Server::handle_timeout`]); messages to
//! send, CDRs and the next deadline come out. The `node` module drives it with real sockets;
//! tests and benchmarks drive it directly.

mod blf;
mod pair;
mod takeover;
mod uas;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::b2bua::{B2bua, Env};
use crate::cdr::CdrRecord;
use crate::config::Config;
use crate::dialog::LocalContact;
use crate::pair::epoch::EpochStore;
use crate::pair::{Role, keepalive};
use crate::registrar::{self, AuthOutcome, Registrar};
use crate::sip::{
    HeaderName, Message, Method, Request, SipMessage, new_tag, response_to, salvage_request,
    validate,
};
use crate::transaction::{ServerTxId, Timers, TransactionLayer, TxEvent};
use crate::transport::{Flow, Inbound, Transmit};
use pair::{PairGlue, RoleChange};
use takeover::{Step, Takeover};

/// Whether a response to `req` can be routed back (RFC 3261 §8.2.6.2: it must copy a usable
/// Via, From, To, Call-ID and CSeq).
fn routable(req: &Request) -> bool {
    req.top_via().is_ok()
        && req.headers.get(&HeaderName::From).is_some()
        && req.headers.get(&HeaderName::To).is_some()
        && req.headers.get(&HeaderName::CallId).is_some()
        && req.headers.get(&HeaderName::CSeq).is_some()
}

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
    pair: Option<PairGlue>,
    takeover: Option<Takeover>,
    blf: blf::Blf,
    next_housekeeping: Instant,
    counters: Counters,
    cdrs: Vec<CdrRecord>,
}

impl Server {
    /// A server for `cfg`, advertising `me`, with the clock read once at start (`now`, and
    /// the wall clock `wall_ms` at that instant). `epochs` persists the pair's epoch.
    pub fn new(
        cfg: Arc<Config>,
        me: LocalContact,
        now: Instant,
        wall_ms: u64,
        epochs: Box<dyn EpochStore>,
    ) -> Self {
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
            algorithms: cfg
                .registrar
                .digest_algorithms
                .iter()
                .filter_map(|a| crate::sip::digest::Algorithm::parse(a))
                .collect(),
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
        let digest_on = cfg.pair.as_ref().is_some_and(|p| p.dialog_digest);
        let mut b2bua = B2bua::new();
        b2bua.enable_digest(digest_on);
        if cfg.media.mode == crate::config::MediaMode::Relay {
            let ip = me
                .udp
                .rsplit_once(':')
                .and_then(|(h, _)| h.trim_matches(['[', ']']).parse().ok())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            b2bua.enable_relay(ip, cfg.media.rtp_ports.0, cfg.media.rtp_ports.1);
        }
        let pair = cfg
            .pair
            .as_ref()
            .map(|p| PairGlue::new(&cfg, p, epochs, now));
        Self {
            tx: TransactionLayer::new(timers, cfg.node.force_rport),
            cfg,
            me,
            me_hostports,
            registrar,
            b2bua,
            base: (now, wall_ms),
            pair,
            takeover: None,
            blf: blf::Blf::default(),
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

    /// The current epoch (1 for a single node).
    pub fn epoch(&self) -> u64 {
        self.pair.as_ref().map_or(1, |p| p.machine.epoch())
    }

    /// The current role (a single node is always active).
    pub fn role(&self) -> Role {
        self.pair
            .as_ref()
            .map_or(Role::Active, |p| p.machine.role())
    }

    /// Whether new calls are accepted here now.
    pub fn accepts_calls(&self) -> bool {
        self.pair.as_ref().is_none_or(PairGlue::accepts_calls)
    }

    /// Ask for a switchover (DESIGN "Manual switchover").
    pub fn switchover(&mut self, now: Instant) -> Result<String, String> {
        let Some(p) = self.pair.as_mut() else {
            return Err("this node has no [pair] section: nothing to switch over to".into());
        };
        let before = p.machine.role();
        p.machine.request_switchover(now).map_err(str::to_string)?;
        self.handle_timeout(now);
        Ok(match before {
            Role::Active => "handing over to the peer".into(),
            _ => "taking over from the peer".into(),
        })
    }

    /// Test hook: drop everything to and from the peer (simulated network split).
    pub fn set_partition(&mut self, on: bool) -> Result<(), String> {
        match self.pair.as_mut() {
            Some(p) if self.cfg.pair.as_ref().is_some_and(|c| c.test_hooks) => {
                tracing::warn!(on, "pair: test partition");
                p.partitioned = on;
                Ok(())
            }
            _ => Err("test hooks are disabled ([pair] test_hooks = false)".into()),
        }
    }

    fn cut_off(&self, flow: &Flow) -> bool {
        self.pair
            .as_ref()
            .is_some_and(|p| p.partitioned && flow.remote == p.peer())
    }

    /// Something arrived from the network.
    pub fn handle_inbound(&mut self, now: Instant, inbound: Inbound) {
        if let Inbound::Message(_, flow)
        | Inbound::Malformed { flow, .. }
        | Inbound::Unreachable(flow) = &inbound
            && self.cut_off(flow)
        {
            return;
        }
        match inbound {
            Inbound::Unreachable(flow) => {
                tracing::info!(%flow, "destination unreachable");
                self.tx.transport_error(flow);
            }
            Inbound::Message(parsed, flow) => {
                if let Err(rej) = validate(&parsed) {
                    match parsed.message {
                        Message::Request(req) if req.method != Method::Ack && routable(&req) => {
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
        self.drive_takeover(now);
        self.pump_digest();
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
                epoch: u32::try_from(self.pair.as_ref().map_or(1, |p| p.machine.epoch()))
                    .unwrap_or(u32::MAX / 65536)
                    .min(32767),
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
                    if !self.pair_result(now, id, Some(&response)) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_response(&mut env, id, response);
                    }
                }
                TxEvent::Timeout { id } => {
                    if !self.pair_result(now, id, None) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_timeout(&mut env, id);
                    }
                }
                TxEvent::Unreachable { id } => {
                    if !self.pair_result(now, id, None) {
                        let (mut env, b) = self.env_parts(now);
                        b.on_unreachable(&mut env, id);
                    }
                }
                TxEvent::NoAck { id } => {
                    let (mut env, b) = self.env_parts(now);
                    b.on_no_ack(&mut env, id);
                }
                TxEvent::StrayResponse { response, source } => {
                    let ours = self
                        .pair
                        .as_mut()
                        .is_some_and(|p| p.on_stray_response(now, &response));
                    if !ours {
                        tracing::trace!(%source, status = response.status, "stray response");
                    }
                }
            }
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
        let changes = self.registrar.location_mut().take_changes();
        if let Some(p) = self.pair.as_mut() {
            p.publish_changes(now, &mut self.tx, &self.me, &changes);
        }
    }

    /// A result (response, or `None` for a timeout or an unreachable destination) for a client
    /// transaction of the takeover or of the pair link; `false` when it belongs to a call.
    fn pair_result(
        &mut self,
        now: Instant,
        id: crate::transaction::ClientTxId,
        resp: Option<&crate::sip::Response>,
    ) -> bool {
        if let Some(t) = self.takeover.as_mut()
            && t.owns_tx(id)
        {
            t.on_result(id, resp);
            return true;
        }
        if let Some(p) = self.pair.as_mut()
            && p.client_txs.contains(&id)
        {
            p.on_client_result(now, id, resp);
            return true;
        }
        false
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
            if self.blf.owns(&req) {
                let domain = self.cfg.node.domain.clone();
                self.blf.on_subscribe(
                    now,
                    &mut self.tx,
                    &self.b2bua,
                    &self.me,
                    &domain,
                    id,
                    &req,
                    source,
                );
                return;
            }
            if let Some(t) = self.takeover.as_mut()
                && t.owns_notify(&req)
            {
                let steps = t.on_notify(now, &mut self.tx, id, &req);
                self.apply_takeover(now, steps);
                return;
            }
            if let Some(p) = self.pair.as_mut()
                && p.owns_in_dialog(&req)
            {
                p.on_in_dialog(now, &mut self.tx, &mut self.registrar, id, &req, &self.me);
                return;
            }
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
            Method::Options if keepalive::is_keepalive(&req) && self.pair.is_some() => {
                let calls = self.b2bua.call_count();
                if let Some(p) = self.pair.as_mut() {
                    p.on_keepalive_request(now, &mut self.tx, id, &req, calls);
                }
            }
            Method::Options => {
                let mut r = response_to(&req, 200, Some(&new_tag()));
                r.headers.push(HeaderName::Allow, crate::b2bua::ALLOW);
                r.headers.push(HeaderName::Accept, uas::ACCEPT);
                r.headers.push(HeaderName::Supported, uas::SUPPORTED);
                let _ = self.tx.respond(now, id, &r);
            }
            Method::Invite if !self.accepts_calls() => {
                let redirect = self.pair.as_ref().is_some_and(PairGlue::redirect);
                let mut r = response_to(&req, if redirect { 302 } else { 503 }, Some(&new_tag()));
                if let Some(p) = self.pair.as_ref().filter(|_| redirect) {
                    let user = crate::sip::Uri::parse(&req.uri)
                        .ok()
                        .and_then(|u| u.user)
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default();
                    r.headers
                        .push(HeaderName::Contact, format!("<sip:{user}{}>", p.peer()));
                } else {
                    r.reason = "Stand-by Node".into();
                    r.headers.push(HeaderName::RetryAfter, "5");
                }
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
            Method::Subscribe
                if self.pair.is_some()
                    && req.headers.get(&HeaderName::Event).is_some_and(|e| {
                        e.split(';').next().is_some_and(|t| t.trim() == "reg")
                    }) =>
            {
                if let Some(p) = self.pair.as_mut() {
                    p.on_subscribe(
                        now,
                        &mut self.tx,
                        &mut self.registrar,
                        id,
                        &req,
                        source,
                        &self.me,
                    );
                }
            }
            Method::Subscribe
                if req
                    .headers
                    .get(&HeaderName::Event)
                    .is_some_and(|e| e.split(';').next().is_some_and(|t| t.trim() == "dialog")) =>
            {
                let user_ok = crate::sip::Uri::parse(&req.uri)
                    .ok()
                    .and_then(|u| u.user_unescaped())
                    .is_some_and(|u| self.cfg.user(&u).is_some());
                if !user_ok {
                    self.reply(now, id, &req, 404);
                    return;
                }
                if self.cfg.trunk_for_source(source.remote).is_none()
                    && let AuthOutcome::Reject(r) =
                        self.registrar.authenticate(now, now_s, &req, source, true)
                {
                    let _ = self.tx.respond(now, id, &r);
                    return;
                }
                let domain = self.cfg.node.domain.clone();
                self.blf.on_subscribe(
                    now,
                    &mut self.tx,
                    &self.b2bua,
                    &self.me,
                    &domain,
                    id,
                    &req,
                    source,
                );
            }
            Method::Subscribe => {
                let mut r = response_to(&req, 489, Some(&new_tag()));
                r.headers.push(HeaderName::AllowEvents, "dialog, reg");
                let _ = self.tx.respond(now, id, &r);
            }
            _ => self.reply(now, id, &req, 481),
        }
    }

    fn apply_takeover(&mut self, now: Instant, steps: Vec<Step>) {
        for step in steps {
            let (mut env, b) = self.env_parts(now);
            match step {
                Step::Adopt(call) => b.adopt(&mut env, *call),
                Step::Orphan {
                    leg,
                    caller,
                    callee,
                    start_ms,
                } => b.bye_orphan(&mut env, *leg, &caller, &callee, start_ms),
                Step::FailRinging(r) => self.fail_ringing(now, &r),
            }
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
    }

    /// A call that was ringing when the old active died: the caller gets `503` with
    /// `Retry-After` through its recorded Via, the callee a CANCEL of the old INVITE (and a
    /// BYE on its early dialog), so nobody keeps ringing.
    fn fail_ringing(&mut self, now: Instant, r: &crate::pair::digest::RingRecord) {
        let a_flow = Flow {
            proto: r.a_proto,
            remote: r.a_remote,
            conn: None,
        };
        let mut resp = crate::sip::Response::new(503);
        resp.reason = "Service Unavailable (Takeover)".into();
        for v in &r.a_vias {
            resp.headers.push(HeaderName::Via, v.clone());
        }
        resp.headers.push(HeaderName::From, r.a_from.clone());
        resp.headers.push(
            HeaderName::To,
            format!(
                "{};tag={}",
                r.a_to,
                crate::b2bua::tag_for(r.token, crate::b2bua::Side::A)
            ),
        );
        resp.headers.push(HeaderName::CallId, r.a_call_id.clone());
        resp.headers
            .push(HeaderName::CSeq, format!("{} INVITE", r.a_cseq));
        resp.headers.push(HeaderName::RetryAfter, "1");
        let bytes = resp.to_bytes();
        self.tx.send_stateless(a_flow, bytes.clone());
        self.tx.send_stateless(a_flow, bytes);
        let b_flow = Flow {
            proto: r.b_proto,
            remote: r.b_remote,
            conn: None,
        };
        let mut cancel = Request::new(Method::Cancel, r.b_uri.clone());
        cancel.headers.push(HeaderName::Via, r.b_via.clone());
        cancel.headers.push(HeaderName::MaxForwards, "70");
        cancel.headers.push(HeaderName::From, r.b_from.clone());
        cancel.headers.push(HeaderName::To, r.b_to.clone());
        cancel.headers.push(HeaderName::CallId, r.b_call_id.clone());
        cancel
            .headers
            .push(HeaderName::CSeq, format!("{} CANCEL", r.b_cseq));
        self.tx.send_stateless(b_flow, cancel.to_bytes());
        if let Some(tag) = &r.b_early_tag {
            let from = crate::sip::NameAddr::parse(&r.b_from).ok();
            let mut d = crate::dialog::Dialog {
                call_id: r.b_call_id.clone(),
                local_tag: from
                    .as_ref()
                    .and_then(|f| f.tag().map(str::to_string))
                    .unwrap_or_default(),
                remote_tag: tag.clone(),
                local_uri: from
                    .map(|mut f| {
                        f.params.remove("tag");
                        f.to_string()
                    })
                    .unwrap_or_default(),
                remote_uri: r.b_to.clone(),
                local_cseq: r
                    .b_cseq
                    .max(u32::try_from(self.epoch().min(32767)).unwrap_or(1) * 65536),
                remote_cseq: None,
                route_set: Vec::new(),
                remote_target: r.b_early_target.clone().unwrap_or_else(|| r.b_uri.clone()),
                flow: b_flow,
                state: crate::dialog::DialogState::Early,
            };
            let bye = d.request(Method::Bye, &self.me, None);
            let _ = self.tx.send_request(now, &bye, d.next_hop());
        }
        let now_ms = self.wall_ms(now) as i64;
        self.cdrs.push(CdrRecord {
            call_id: r.a_call_id.clone(),
            b_call_id: r.b_call_id.clone(),
            token: format!("{:016x}", r.token),
            caller: crate::sip::NameAddr::parse(&r.a_from)
                .map(|a| a.uri.to_string())
                .unwrap_or_default(),
            callee: crate::sip::Uri::parse(&r.b_uri)
                .ok()
                .and_then(|u| u.user)
                .unwrap_or_default(),
            trunk: None,
            start_ms: now_ms,
            answer_ms: None,
            end_ms: now_ms,
            duration_ms: 0,
            end_reason: "failed:503".into(),
            recovered: true,
            node: self.cfg.node.name.clone(),
            media: None,
        });
    }

    /// Move the B2BUA's digest entries into the pair's log (active only).
    fn pump_digest(&mut self) {
        let entries = self.b2bua.take_digest();
        let Some(p) = self.pair.as_mut() else {
            return;
        };
        if p.machine.role() != Role::Active {
            return;
        }
        if p.resync_wanted {
            p.resync_wanted = false;
            p.log.resync(self.b2bua.digest_snapshot());
        } else {
            for e in entries {
                p.log.push(e);
            }
        }
    }

    fn drive_takeover(&mut self, now: Instant) {
        let Some(t) = self.takeover.as_mut() else {
            return;
        };
        let outcomes = self.b2bua.take_rebind_outcomes();
        t.record(now, &outcomes);
        if !t.report.in_progress {
            return;
        }
        let steps = t.tick(now, &mut self.tx, &self.me);
        self.apply_takeover(now, steps);
        let rebinding = self.b2bua.rebinding();
        if let Some(t) = self.takeover.as_mut() {
            let outcomes = self.b2bua.take_rebind_outcomes();
            t.record(now, &outcomes);
            if t.idle() && rebinding == 0 {
                t.finish(now);
            }
        }
    }

    /// The current (or last) takeover report.
    pub fn takeover_report(&self) -> Option<serde_json::Value> {
        self.takeover
            .as_ref()
            .and_then(|t| serde_json::to_value(&t.report).ok())
    }

    /// Fire everything due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.drain_events(now);
        let calls = self.b2bua.call_count();
        if let Some(p) = self.pair.as_mut() {
            let changes = p.tick(now, &mut self.tx, &self.me, calls);
            p.drive_subscriber(now, &mut self.tx, &self.me);
            for c in changes {
                match c {
                    RoleChange::BecameActive(reason) => {
                        tracing::info!(
                            calls = self.b2bua.call_count(),
                            "now active: handling new calls and registrations"
                        );
                        if reason != crate::pair::TakeoverReason::Startup {
                            let now_ms = self.wall_ms(now);
                            let digest = self
                                .pair
                                .as_mut()
                                .map(|p| p.table.take())
                                .unwrap_or_default();
                            self.takeover = Some(Takeover::start(
                                &self.cfg,
                                &self.registrar,
                                now,
                                now_ms,
                                digest,
                            ));
                        }
                    }
                    RoleChange::SteppedDown => {
                        let n = self.b2bua.abandon_all();
                        if n > 0 {
                            tracing::warn!(
                                calls = n,
                                "stepped down: no longer sending requests in {n} calls"
                            );
                        }
                    }
                }
            }
            self.drain_events(now);
        }
        self.drive_takeover(now);
        self.pump_digest();
        {
            let (mut env, b) = self.env_parts(now);
            b.handle_timeout(&mut env);
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
        if now >= self.next_housekeeping {
            let now_s = self.wall_ms(now) / 1000;
            self.registrar.expire(now, now_s);
            self.tx.compact();
            self.b2bua.compact();
            let domain = self.cfg.node.domain.clone();
            self.blf
                .tick(now, &mut self.tx, &self.b2bua, &self.me, &domain);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
    }

    /// When [`Self::handle_timeout`] should run next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.b2bua.poll_timeout(),
            Some(self.next_housekeeping),
            self.pair.as_ref().map(|p| p.machine.poll_timeout()),
            self.takeover
                .as_ref()
                .filter(|t| t.report.in_progress)
                .and_then(Takeover::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Graceful shutdown: every call still up gets its CDR (`end_reason = shutdown`). No BYE
    /// is sent: in a pair the peer takes the calls over.
    pub fn shutdown(&mut self, now: Instant) {
        let tokens: Vec<u64> = self.b2bua.calls().map(|c| c.token).collect();
        for t in tokens {
            let (mut env, b) = self.env_parts(now);
            b.finish(&mut env, t, "shutdown", &[]);
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
    }

    /// Commands for the media relay (relay mode).
    pub fn take_media_commands(&mut self) -> Vec<crate::b2bua::MediaCommand> {
        self.b2bua.take_media_commands()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        loop {
            let t = self.tx.poll_transmit()?;
            if !self.cut_off(&t.flow) {
                return Some(t);
            }
        }
    }

    /// CDRs of calls that ended since the last call.
    pub fn take_cdrs(&mut self) -> Vec<CdrRecord> {
        std::mem::take(&mut self.cdrs)
    }
}
