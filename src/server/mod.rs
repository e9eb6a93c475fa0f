//! The sans-IO SIP server: every protocol layer assembled behind one interface. Bytes and
//! clock readings go in ([`Server::handle_inbound`], [`Server::handle_timeout`]); messages to
//! send, CDRs and the next deadline come out. The `node` module drives it with real sockets;
//! tests and benchmarks drive it directly.

mod blf;
mod dispatch;
mod guard;
mod nat;
mod pacing;
mod pair;
mod pinger;
mod recovery;
mod regsync;
mod reload;
mod takeover;
mod trunks;
mod uas;
mod views;
mod waiting;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::b2bua::{B2bua, Env};
use crate::cdr::CdrRecord;
use crate::config::Config;
use crate::dialog::LocalContact;
use crate::net::{Flow, Transmit};
use crate::pair::Role;
use crate::pair::epoch::EpochStore;
use crate::registrar::{self, Registrar};
use crate::sip::{HeaderName, Request};
use crate::transaction::{Timers, TransactionLayer};
use pair::{PairGlue, RoleChange};
use takeover::Takeover;

/// Whether a response to `req` can be routed back (RFC 3261 §8.2.6.2: it must copy a usable
/// Via, From, To, Call-ID and CSeq).
fn routable(req: &Request) -> bool {
    req.headers
        .get(&HeaderName::Via)
        .is_some_and(|v| crate::sip::Via::check(v).is_ok())
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
    /// Events whose handling panicked and was contained (see `guard`).
    pub internal_errors: u64,
}

/// The server.
#[derive(Debug)]
pub struct Server {
    cfg: Arc<Config>,
    me: LocalContact,
    /// Our Via sent-by per transport (`UDP`, `TCP`), to detect loops.
    me_hostports: Vec<(&'static str, String)>,
    tx: TransactionLayer,
    registrar: Registrar,
    b2bua: B2bua,
    base: (Instant, u64),
    pair: Option<PairGlue>,
    takeover: Option<Takeover>,
    blf: blf::Blf,
    /// `Config::shared_digest`, computed once (it is shown in `/status`).
    config_digest: String,
    pinger: Option<pinger::Pinger>,
    nat_keepalive: Option<pinger::NatKeepalive>,
    /// Our registrations to trunks (active only).
    trunk_regs: trunks::TrunkRegs,
    /// Where trunks named by a host are (`dns`).
    dns: crate::dns::Dns,
    next_housekeeping: Instant,
    counters: Counters,
    /// Seconds each re-bind of a takeover took (its first re-INVITE to its last answer).
    rebind_times: crate::metrics::Histogram,
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
            .unwrap_or_else(|| crate::entropy::random::<[u8; 32]>().to_vec());
        let settings = registrar::Settings {
            realm: cfg.realm().to_string(),
            min_expires: cfg.registrar.min_expires,
            max_expires: cfg.registrar.max_expires,
            default_expires: cfg.registrar.default_expires,
            nonce_secret: secret,
            nonce_lifetime_s: 300,
            max_auth_failures: 10,
            algorithms: cfg.registrar.digest_algorithms.clone(),
            max_contacts_per_aor: cfg.limits.contacts_per_aor,
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
        let me_hostports = vec![
            ("UDP", me.udp.clone()),
            ("TCP", me.tcp.clone()),
            ("TLS", me.hostport(crate::net::Proto::Tls).to_string()),
        ];
        let digest_on = cfg.pair.as_ref().is_some_and(|p| p.dialog_digest);
        let pinger = cfg
            .pair
            .as_ref()
            .filter(|p| p.ping_endpoints)
            .map(|_| pinger::Pinger::new(now));
        let nat_keepalive = pinger::NatKeepalive::new(now, cfg.registrar.nat_keepalive_s);
        let trunk_regs = trunks::TrunkRegs::new(&cfg);
        let dns = crate::dns::Dns::new(&cfg, now);
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
        let blf = blf::Blf::with_limit(cfg.limits.subscriptions);
        let config_digest = cfg.shared_digest();
        let pair = cfg
            .pair
            .as_ref()
            .map(|p| PairGlue::new(&cfg, p, epochs, now, wall_ms, config_digest.clone()));
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
            blf,
            config_digest,
            pinger,
            nat_keepalive,
            trunk_regs,
            dns,
            next_housekeeping: now + HOUSEKEEPING,
            counters: Counters::default(),
            rebind_times: crate::metrics::Histogram::default(),
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

    /// The hash of the shared configuration (what keep-alives carry).
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    /// The registrar.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The registrar, mutably (test support: the simulator loads bindings directly).
    #[doc(hidden)]
    pub fn registrar_mut(&mut self) -> &mut Registrar {
        &mut self.registrar
    }

    /// Pair counters: keep-alives refused, replays refused, messages from a wrong source.
    pub fn pair_refusals(&self) -> (u64, u64, u64) {
        self.pair.as_ref().map_or((0, 0, 0), |p| {
            (
                p.stats.keepalives_rejected,
                p.stats.replays_refused,
                p.stats.wrong_source,
            )
        })
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

    /// The epoch as the CSeq base uses it (DESIGN: `epoch × 65536 + n` stays below 2³¹).
    fn cseq_epoch(&self) -> u32 {
        u32::try_from(self.epoch()).unwrap_or(u32::MAX).min(32767)
    }

    fn env_parts(&mut self, now: Instant) -> (Env<'_>, &mut B2bua) {
        let now_ms = self.wall_ms(now);
        let epoch = self.cseq_epoch();
        (
            Env {
                now,
                now_ms,
                tx: &mut self.tx,
                registrar: &self.registrar,
                cfg: &self.cfg,
                dns: &self.dns,
                me: &self.me,
                epoch,
                node: &self.cfg.node.name,
            },
            &mut self.b2bua,
        )
    }

    /// Fire everything due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.drain_events(now);
        if self.accepts_calls()
            && let Some(p) = self.pinger.as_mut()
        {
            p.tick(now, &mut self.tx, &self.registrar, &self.me);
        }
        if let Some(k) = self.nat_keepalive.as_mut() {
            k.tick(now, &mut self.tx, &self.registrar, &self.me);
        }
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
                                .map(|p| p.digest.table.take())
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
                    RoleChange::Reclaim => {
                        let calls = self.b2bua.take_for_rebind();
                        if !calls.is_empty() {
                            let now_ms = self.wall_ms(now);
                            self.takeover = Some(Takeover::reclaim(&self.cfg, now, now_ms, calls));
                        }
                    }
                    RoleChange::SteppedDown => {
                        // Every call goes to the winner, which re-binds it (it writes the CDR).
                        {
                            let (mut env, b) = self.env_parts(now);
                            b.reject_unanswered(&mut env);
                        }
                        self.cdrs.extend(self.b2bua.take_cdrs());
                        let calls = self.b2bua.digest_snapshot();
                        let regs =
                            regsync::handoff_bodies(&self.registrar, now, &self.cfg.node.domain);
                        if let Some(p) = self.pair.as_mut() {
                            if !calls.is_empty() {
                                p.start_handoff(now, calls);
                            }
                            p.start_reg_handoff(regs);
                        }
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
        self.take_handoff(now);
        self.drive_takeover(now);
        self.pump_digest(now);
        let takes_calls = self.accepts_calls();
        self.trunk_regs
            .tick(now, &mut self.tx, &self.me, &self.dns, takes_calls);
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
            self.b2bua.forget_ended(now);
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
            self.pinger.as_ref().map(pinger::Pinger::poll_timeout),
            self.nat_keepalive
                .as_ref()
                .map(pinger::NatKeepalive::poll_timeout),
            self.pair.as_ref().map(|p| p.machine.poll_timeout()),
            self.trunk_regs.poll_timeout(),
            self.dns.poll_timeout(),
            // An epoch write under way is looked at every few milliseconds.
            self.pair.as_ref().and_then(|p| p.persist_poll_at),
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
    /// is sent: in a pair the peer takes the calls over. Registrations to trunks are removed
    /// (`Expires: 0`; send what [`Self::poll_transmit`] has before exiting).
    pub fn shutdown(&mut self, now: Instant) {
        let tokens: Vec<u64> = self.b2bua.calls().map(|c| c.token).collect();
        for t in tokens {
            let (mut env, b) = self.env_parts(now);
            b.finish(&mut env, t, "shutdown", &[]);
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
        self.trunk_regs
            .stop_all(now, &mut self.tx, &self.me, &self.dns);
    }

    /// Whether trunk un-REGISTERs sent by [`Self::shutdown`] still wait for their answer.
    pub fn unregistering(&self) -> bool {
        self.trunk_regs.busy()
    }

    /// The trunk a request from `src` comes from: by its configured IP, or by what its host
    /// name resolved to.
    pub(crate) fn trunk_for_source(
        &self,
        src: std::net::SocketAddr,
    ) -> Option<&crate::config::TrunkConfig> {
        self.cfg
            .trunk_for_source(src)
            .or_else(|| self.dns.trunk_for_source(&self.cfg, src))
    }

    /// DNS questions for the node's resolver (trunk host names), due now.
    pub fn take_dns_queries(&mut self, now: Instant) -> Vec<crate::dns::DnsQuery> {
        self.dns.poll_queries(now)
    }

    /// The resolver's answer to a [`Self::take_dns_queries`] question.
    pub fn on_dns_answer(
        &mut self,
        now: Instant,
        name: &str,
        answer: Result<(Vec<crate::dns::DnsTarget>, std::time::Duration), String>,
    ) {
        self.dns.on_answer(now, name, answer);
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

#[cfg(test)]
#[path = "call_tests.rs"]
mod call_tests;
