//! The pair inside the server: keep-alives on the wire, the role machine's actions, epoch
//! persistence, stand-by call refusal, switchover, and the RFC 3680 `reg` subscription in
//! both directions (the active notifies, the stand-by subscribes).

use crate::entropy::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::config::{Config, PairConfig};
use crate::dialog::{Dialog, LocalContact};
use crate::net::{Flow, Proto};
use crate::pair::auth::{self, AuthError, Signer, Verified, Verifier};
use crate::pair::config_check::ConfigCheck;
use crate::pair::digest::{self, Ack, DigestLog, DigestTable};
use crate::pair::epoch::EpochStore;
use crate::pair::keepalive::{self, Info};
use crate::pair::{Action, Announced, Role, RoleMachine, Settings};
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, new_tag, response_to};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};

/// Subscription lifetime asked for and granted.
pub(super) const REG_EXPIRES: u32 = 600;

/// Largest digest chunk in one message on a TCP state channel (bytes).
const DIGEST_CHUNK_TCP: usize = 48_000;

/// Largest digest chunk when the nodes have no TCP listener (UDP only): with the headers the
/// datagram stays under 1,300 bytes, so it never fragments across a WAN.
const DIGEST_CHUNK_UDP: usize = 400;

/// How often a pending epoch write is looked at.
const EPOCH_POLL: Duration = Duration::from_millis(2);

/// Extra keep-alives per interval when the digest has a backlog.
const DIGEST_EXTRA: usize = 8;

/// On a TCP state channel what was sent arrives unless the connection broke: unacknowledged
/// digest entries go again only once the acknowledgements have not advanced for this long.
/// (Sending them every keep-alive interval fed a stand-by that was busy catching up with the
/// same chunks over and over: at 2,000 calls/s it fell 8 s behind.)
const RESEND_STALL: Duration = Duration::from_secs(5);

/// What happened that the server must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleChange {
    BecameActive(crate::pair::TakeoverReason),
    SteppedDown,
    /// Still active at a new epoch: re-bind every call (they may have moved during a split).
    Reclaim,
}

#[derive(Debug)]
pub(super) enum Subscriber {
    Idle {
        retry_at: Instant,
    },
    Subscribing {
        tx: ClientTxId,
        request: Box<Request>,
        /// A NOTIFY may overtake the 2xx (RFC 6665 §4.1.2.4): its version, when one did.
        version: Option<u64>,
    },
    Active {
        dialog: Box<Dialog>,
        refresh_at: Instant,
        refreshing: Option<ClientTxId>,
        /// The version of the last NOTIFY applied (RFC 3680 §5.2: each is one more).
        version: Option<u64>,
    },
}

#[derive(Debug)]
pub(super) struct NotifierSub {
    pub(super) dialog: Dialog,
    pub(super) expires_at: Instant,
    pub(super) version: u64,
}

/// How long after a hand-off requests in a handed-off call get a non-fatal answer here
/// (the peer's re-bind reaches the endpoints well within it).
const HANDED_OFF_FOR: Duration = Duration::from_secs(32);

/// At most this many handed-off calls are remembered.
const MAX_HANDED_OFF: usize = 200_000;

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PairStats {
    pub(crate) keepalives_sent: u64,
    pub(crate) keepalives_received: u64,
    pub(crate) keepalives_rejected: u64,
    /// Pair messages refused as replayed or stale.
    pub(crate) replays_refused: u64,
    /// Pair messages refused because they came from another address than the peer's.
    pub(crate) wrong_source: u64,
    pub(crate) reg_notifies_sent: u64,
    /// Bytes of the registration NOTIFYs sent (whole messages, first transmissions).
    pub(crate) reg_notify_bytes_sent: u64,
    pub(crate) reg_notifies_received: u64,
    /// Stand-by: times the registration state was asked for again in full because a NOTIFY
    /// was missing, out of order or unreadable.
    pub(crate) reg_resyncs: u64,
}

/// Our side of the keep-alive exchange with the peer: one Call-ID and From tag for the
/// node's life, a CSeq per request (keep-alives, probes, digest, hand-offs) and when each
/// went, for the round trip of its answer.
#[derive(Debug)]
struct KeepaliveSeq {
    call_id: String,
    tag: String,
    seq: u32,
    /// CSeq → when it went; forgotten after 5 s.
    sent: HashMap<u32, Instant>,
    /// The CSeq of the direct probe, while one is out.
    probe: Option<u32>,
}

impl KeepaliveSeq {
    fn new() -> Self {
        Self {
            call_id: format!("ka-{:016x}", crate::entropy::random::<u64>()),
            tag: new_tag(),
            seq: 0,
            sent: HashMap::default(),
            probe: None,
        }
    }

    /// The CSeq of a request sent at `now`.
    fn next(&mut self, now: Instant) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.sent.insert(self.seq, now);
        self.seq
    }

    /// The last request was the direct probe.
    fn mark_probe(&mut self) {
        self.probe = Some(self.seq);
    }

    /// The answer to `seq` came at `now`: its round trip (if we still know when it went)
    /// and whether it answered the probe.
    fn answered(&mut self, seq: u32, now: Instant) -> (Option<Duration>, bool) {
        let rtt = self.sent.remove(&seq).map(|t| now.duration_since(t));
        let probe = self.probe == Some(seq);
        if probe {
            self.probe = None;
        }
        (rtt, probe)
    }

    fn expire(&mut self, now: Instant) {
        self.sent
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(5));
    }

    /// The Call-ID of our pings to the witnesses.
    fn witness_call_id(&self) -> String {
        format!("{}-w", self.call_id)
    }

    fn is_witness_call_id(&self, c: &str) -> bool {
        c.strip_suffix("-w") == Some(self.call_id.as_str())
    }
}

/// The dialog digest on this node: the log of changes it sends while active, the table of
/// the peer's calls it keeps while stand-by.
#[derive(Debug)]
pub(crate) struct DigestSync {
    /// Active: digest entries not yet acknowledged by the stand-by.
    pub(crate) log: DigestLog,
    /// Stand-by: the active's calls as the digest describes them.
    pub(crate) table: DigestTable,
    /// Active: the stand-by asked for the full list (or has to get it).
    resync_wanted: bool,
    /// How the peer reads digest bodies (from its last authenticated message).
    format: digest::Format,
    /// Active: the acknowledgement last seen, and when it last advanced (or nothing was
    /// waiting for one).
    ack_seen: u64,
    progress_at: Option<Instant>,
}

impl DigestSync {
    fn new() -> Self {
        Self {
            log: DigestLog::new(),
            table: DigestTable::default(),
            resync_wanted: true,
            format: digest::Format::default(),
            ack_seen: 0,
            progress_at: None,
        }
    }

    /// Active, on a reliable channel: whether entries sent long ago are still unacknowledged
    /// (the connection they went on may have broken), so they should go again. Each `true`
    /// starts a new wait.
    fn stalled(&mut self, now: Instant) -> bool {
        let acked = self.log.acked();
        if acked != self.ack_seen || self.log.sent() == 0 {
            self.ack_seen = acked;
            self.progress_at = Some(now);
            return false;
        }
        let since = *self.progress_at.get_or_insert(now);
        if now.saturating_duration_since(since) >= RESEND_STALL {
            self.progress_at = Some(now);
            return true;
        }
        false
    }

    /// Active: log the calls' changes since the last call (`entries`). With no stand-by
    /// listening nothing is kept (the log would only grow) and it gets the whole list
    /// (`snapshot`) when it is back; so does a stand-by that stopped acknowledging.
    pub(crate) fn feed(
        &mut self,
        listening: bool,
        calls: usize,
        entries: Vec<digest::Entry>,
        snapshot: impl FnOnce() -> Vec<digest::Entry>,
    ) {
        if !listening {
            if !self.resync_wanted {
                self.log.resync(Vec::new());
                self.resync_wanted = true;
            }
            return;
        }
        if self.log.backlog() > 4 * calls + 10_000 {
            self.resync_wanted = true;
        }
        if std::mem::take(&mut self.resync_wanted) {
            self.log.resync(snapshot());
        } else {
            for e in entries {
                self.log.push(e);
            }
        }
    }
}

/// What passes between the nodes when one steps down: its calls and registrations go to
/// the new active until acknowledged, BYEs for calls it no longer has are passed on.
#[derive(Debug, Default)]
pub(crate) struct Handoffs {
    /// After stepping down: the calls this node had, until the peer acknowledged them all.
    calls_out: Option<DigestLog>,
    /// While active: calls the peer handed over after stepping down.
    pub(crate) calls_in: DigestTable,
    /// After stepping down: our registrations for the peer, by chunk number, until it
    /// acknowledged each (reginfo bodies).
    regs_out: std::collections::BTreeMap<u32, String>,
    /// While active: registrations the peer handed over, for the server to apply.
    regs_in: Vec<crate::pair::regsync::RegInfo>,
    /// Calls handed to the peer when this node stepped down, and when (`handed_off_recently`).
    handed_off: HashMap<u64, Instant>,
    /// Call-IDs of BYEs the peer received for calls it does not have (ours, maybe).
    byes_in: Vec<String>,
}

impl Handoffs {
    /// What the peer passed on for the active to apply: BYEs, then registrations.
    pub(crate) fn take_incoming(&mut self) -> (Vec<String>, Vec<crate::pair::regsync::RegInfo>) {
        (
            std::mem::take(&mut self.byes_in),
            std::mem::take(&mut self.regs_in),
        )
    }
}

/// Registration sync over the pair link (`server::regsync`): as stand-by our subscription
/// to the active's registrations, as active the peer's subscription to ours.
#[derive(Debug)]
pub(crate) struct RegSyncLink {
    pub(super) subscriber: Subscriber,
    pub(super) notifier: HashMap<String, NotifierSub>,
    /// Our NOTIFY transactions, by the subscription (Call-ID) they belong to.
    pub(super) notify_txs: HashMap<ClientTxId, String>,
}

impl RegSyncLink {
    fn new(now: Instant) -> Self {
        Self {
            subscriber: Subscriber::Idle { retry_at: now },
            notifier: HashMap::default(),
            notify_txs: HashMap::default(),
        }
    }
}

/// How this node talks to its peer: the shared secret (legacy stamps), the signatures of
/// pair messages (`pair::auth`) on a wall clock counted from start, and the state channel.
#[derive(Debug)]
pub(crate) struct PairLink {
    secret: Vec<u8>,
    /// Signs what we send to the peer.
    signer: Signer,
    /// Checks what the peer sends.
    verifier: Verifier,
    /// The clock reading at start and the wall clock then (unix ms), for signing times.
    wall_base: (Instant, u64),
    /// How bulk state (digest, registrations) travels: TCP when this node listens on TCP
    /// (the state channel), else UDP in small chunks.
    pub(super) channel: Proto,
}

impl PairLink {
    /// The wall clock (unix ms) at `now`.
    fn wall_ms(&self, now: Instant) -> u64 {
        let (base, ms) = self.wall_base;
        ms.saturating_add(now.saturating_duration_since(base).as_millis() as u64)
    }

    /// Stamp `h` with what we announce (`pair::keepalive`, for peers of wave 1).
    pub(super) fn stamp(&self, h: &mut crate::sip::Headers, info: &Info, body: &[u8]) {
        keepalive::stamp(h, &self.secret, info, body);
    }

    /// Sign a message for the peer (version 2) that goes out on `proto`.
    pub(super) fn sign(
        &mut self,
        now: Instant,
        h: &mut crate::sip::Headers,
        start: &str,
        body: &[u8],
        proto: Proto,
    ) {
        let wall = self.wall_ms(now);
        self.signer.sign(h, start, body, wall, proto.into());
    }

    /// Whether a request carries a valid wave-1 stamp.
    pub(super) fn legacy_ok(&self, req: &Request) -> bool {
        keepalive::verify(req, &req.body, &self.secret).is_ok()
    }
}

/// The pair's state in the server.
#[derive(Debug)]
pub(crate) struct PairGlue {
    pub(super) cfg: PairConfig,
    pub(super) node: String,
    /// Our shared configuration against the peer's (`pair::config_check`).
    pub(super) config: ConfigCheck,
    pub(crate) machine: RoleMachine,
    /// How we talk to the peer: the secret, signatures, the state channel.
    pub(super) link: PairLink,
    pub(super) store: Box<dyn EpochStore>,
    /// Our keep-alive exchange: identifiers, sequence, requests awaiting an answer.
    ka: KeepaliveSeq,
    pub(crate) partitioned: bool,
    pub(crate) stats: PairStats,
    /// Round-trip times of answered keep-alives.
    pub(crate) rtt: crate::metrics::Histogram,
    /// Registration sync: our subscription to the active's, the peer's to ours.
    pub(super) regs: RegSyncLink,
    pub(crate) client_txs: HashSet<ClientTxId>,
    pub(super) domain: String,
    /// The dialog digest: what we send when active, what we know when stand-by.
    pub(crate) digest: DigestSync,
    pub(super) last_takeover: Option<Value>,
    /// An epoch write is under way (`EpochStore::begin`): look at it again then.
    pub(super) persist_poll_at: Option<Instant>,
    /// What passes between the nodes when one steps down (calls, registrations, BYEs).
    pub(crate) handoff: Handoffs,
}

/// Header of a pair message passing on a BYE: the Call-ID of the dialog it ended.
pub(crate) const FORWARDED_BYE: &str = "X-Understudy-Bye";

/// Header marking a hand-off: the digest of a node that stepped down, for the active.
pub(crate) const HANDOFF: &str = "X-Understudy-Handoff";

impl PairGlue {
    pub(crate) fn new(
        cfg: &Config,
        pair: &PairConfig,
        store: Box<dyn EpochStore>,
        now: Instant,
        wall_ms: u64,
        config_digest: String,
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
            config: ConfigCheck::new(config_digest, cfg.setting_digests(pair.secret.as_bytes())),
            machine: RoleMachine::new(settings, epoch, now),
            link: PairLink {
                secret: pair.secret.as_bytes().to_vec(),
                signer: Signer::new(pair.secret.as_bytes(), wall_ms),
                verifier: Verifier::new(
                    pair.secret.as_bytes(),
                    pair.max_clock_skew_ms,
                    pair.accept_v1,
                ),
                wall_base: (now, wall_ms),
                channel: if cfg.node.sip_tcp.is_some() {
                    Proto::Tcp
                } else {
                    Proto::Udp
                },
            },
            store,
            ka: KeepaliveSeq::new(),
            partitioned: false,
            stats: PairStats::default(),
            rtt: crate::metrics::Histogram::new(crate::metrics::RTT),
            regs: RegSyncLink::new(now),
            client_txs: HashSet::default(),
            domain: cfg.node.domain.clone(),
            digest: DigestSync::new(),
            last_takeover: None,
            persist_poll_at: None,
            handoff: Handoffs::default(),
        }
    }

    /// Where bulk state goes: the peer over the state channel.
    pub(super) fn channel_flow(&self) -> Flow {
        Flow {
            proto: self.link.channel,
            remote: self.cfg.peer,
            conn: None,
        }
    }

    fn digest_chunk(&self) -> usize {
        match self.link.channel {
            Proto::Tcp | Proto::Tls => DIGEST_CHUNK_TCP,
            Proto::Udp => DIGEST_CHUNK_UDP,
        }
    }

    /// Check that a pair message comes from the peer's address and is signed and fresh.
    pub(super) fn check(
        &mut self,
        now: Instant,
        source: SocketAddr,
        h: &crate::sip::Headers,
        start: &str,
        body: &[u8],
    ) -> Result<Verified, String> {
        if source.ip() != self.cfg.peer.ip() {
            self.stats.wrong_source += 1;
            return Err(format!(
                "from {source}, not from the peer {}",
                self.cfg.peer.ip()
            ));
        }
        let wall = self.link.wall_ms(now);
        match self.link.verifier.verify(h, start, body, wall) {
            Ok(v) => Ok(v),
            Err(e) => {
                if matches!(e, AuthError::Replayed | AuthError::Stale(_)) {
                    self.stats.replays_refused += 1;
                }
                Err(e.to_string())
            }
        }
    }

    /// Authenticate a keep-alive (request or answer) and read what it says.
    fn authenticate(
        &mut self,
        now: Instant,
        source: SocketAddr,
        m: &impl SipMessage,
        start: &str,
        body: &[u8],
    ) -> Result<Info, String> {
        let v = self.check(now, source, m.headers(), start, body)?;
        self.note_digest_version(m.headers());
        match v {
            // Version 1 peers: their MAC is all there is.
            Verified::Legacy => {
                keepalive::verify(m, body, &self.link.secret).map_err(|e| e.to_string())
            }
            Verified::Fresh => keepalive::read(m).map_err(|e| e.to_string()),
        }
    }

    /// The peer's messages say which digest versions it reads: ours go out in the newest of
    /// them (a wave-1 peer announces none and gets version 1).
    fn note_digest_version(&mut self, headers: &crate::sip::Headers) {
        let version =
            auth::get(headers, digest::VERSION_HEADER).and_then(|v| v.parse::<u32>().ok());
        let format = digest::Format::for_peer(version);
        if format != self.digest.format {
            tracing::info!(?version, ?format, "pair: the peer's digest version");
            self.digest.format = format;
        }
        self.digest.log.set_format(format);
        if let Some(log) = self.handoff.calls_out.as_mut() {
            log.set_format(format);
        }
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.cfg.peer
    }

    pub(super) fn info(&self, calls: usize, role: Announced) -> Info {
        Info {
            node: self.node.clone(),
            role,
            epoch: self.machine.epoch(),
            calls: calls as u64,
            config: self.config.digest().to_string(),
        }
    }

    /// The body our keep-alives carry when stand-by: our digest acknowledgement.
    fn ack_body(&self) -> String {
        format!("A\t{}\n", self.digest.table.current_ack().to_header())
    }

    fn keepalive_request(
        &mut self,
        now: Instant,
        me: &LocalContact,
        calls: usize,
        role: Announced,
        body: Option<String>,
        proto: Proto,
    ) -> Request {
        self.pair_request(now, me, calls, role, body, proto, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn pair_request(
        &mut self,
        now: Instant,
        me: &LocalContact,
        calls: usize,
        role: Announced,
        body: Option<String>,
        proto: Proto,
        handoff: bool,
    ) -> Request {
        let seq = self.ka.next(now);
        let mut r = Request::new(Method::Options, format!("sip:{}", self.cfg.peer));
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("<sip:{}@{}>;tag={}", self.node, me.udp, self.ka.tag),
        );
        h.push(HeaderName::To, format!("<sip:{}>", self.cfg.peer));
        h.push(HeaderName::CallId, self.ka.call_id.clone());
        h.push(HeaderName::CSeq, format!("{seq} OPTIONS"));
        if let Some(b) = body {
            h.push(HeaderName::ContentType, digest::CONTENT_TYPE);
            r.body = Bytes::from(b);
        }
        let info = self.info(calls, role);
        keepalive::stamp(&mut r.headers, &self.link.secret, &info, &r.body);
        announce_digest_version(&mut r.headers);
        if handoff {
            r.headers.push(HeaderName::Other(HANDOFF.into()), "1");
        }
        let body = r.body.clone();
        self.link.sign(
            now,
            &mut r.headers,
            &auth::start_of_request("OPTIONS"),
            &body,
            proto,
        );
        r
    }

    /// We stepped down with calls: hand them to the peer (it re-binds them), chunk by chunk
    /// on the state channel, until it acknowledged every one.
    pub(crate) fn start_handoff(&mut self, now: Instant, calls: Vec<digest::Entry>) {
        self.handoff
            .handed_off
            .retain(|_, at| now.saturating_duration_since(*at) < HANDED_OFF_FOR);
        for e in &calls {
            if self.handoff.handed_off.len() < MAX_HANDED_OFF {
                self.handoff.handed_off.insert(e.token(), now);
            }
        }
        let mut log = DigestLog::new();
        log.set_format(self.digest.format);
        log.resync(calls);
        tracing::warn!(
            entries = log.backlog(),
            "pair: handing our calls to the active peer"
        );
        self.handoff.calls_out = Some(log);
    }

    /// Whether the call `token` was handed to the peer a moment ago: its endpoints may still
    /// send here until the peer's re-bind reaches them.
    pub(crate) fn handed_off_recently(&self, now: Instant, token: u64) -> bool {
        self.handoff
            .handed_off
            .get(&token)
            .is_some_and(|at| now.saturating_duration_since(*at) < HANDED_OFF_FOR)
    }

    /// A BYE for a call this node does not have reached it (the endpoint still sends to us,
    /// or the call moved): the peer may own it, so tell it; it ends its call on both legs.
    pub(crate) fn forward_bye(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        call_id: &str,
    ) {
        if self.partitioned {
            return;
        }
        let flow = self.channel_flow();
        let role = self.machine.announced();
        let mut r = self.pair_request(now, me, 0, role, None, flow.proto, false);
        r.headers
            .push(HeaderName::Other(FORWARDED_BYE.into()), call_id.to_string());
        self.link.sign(
            now,
            &mut r.headers,
            &auth::start_of_request("OPTIONS"),
            b"",
            flow.proto,
        );
        tx.send_stateless(flow, r.to_bytes());
    }

    /// With the calls go the registrations this node has (a node that restarted and won
    /// may have none: the phones must stay reachable).
    pub(crate) fn start_reg_handoff(&mut self, bodies: Vec<String>) {
        self.handoff.regs_out = (0u32..).zip(bodies).collect();
    }

    fn send_handoff(&mut self, now: Instant, tx: &mut TransactionLayer, me: &LocalContact) {
        if self.partitioned {
            return;
        }
        let flow = self.channel_flow();
        let chunks: Vec<(u32, String)> = self
            .handoff
            .regs_out
            .iter()
            .take(DIGEST_EXTRA + 1)
            .map(|(n, b)| (*n, b.clone()))
            .collect();
        for (n, body) in chunks {
            let role = self.machine.announced();
            let mut r = self.pair_request(now, me, 0, role, Some(body), flow.proto, true);
            // Which chunk: the signature covers it (re-signed below).
            r.headers
                .set(HeaderName::Other(HANDOFF.into()), format!("reg;n={n}"));
            let b = r.body.clone();
            self.link.sign(
                now,
                &mut r.headers,
                &auth::start_of_request("OPTIONS"),
                &b,
                flow.proto,
            );
            tx.send_stateless(flow, r.to_bytes());
        }
        let Some(mut log) = self.handoff.calls_out.take() else {
            return;
        };
        if log.backlog() == 0 {
            tracing::info!("pair: the active peer has every call we handed over");
            return;
        }
        let limit = self.digest_chunk();
        let flow = self.channel_flow();
        let mut skip = 0;
        for _ in 0..=DIGEST_EXTRA {
            let Some((body, n)) = log.chunk(limit, skip) else {
                break;
            };
            skip += n;
            let role = self.machine.announced();
            let r = self.pair_request(now, me, 0, role, Some(body), flow.proto, true);
            tx.send_stateless(flow, r.to_bytes());
        }
        self.handoff.calls_out = Some(log);
    }

    /// Our settings list, when the peer's configuration differs and it has not sent its
    /// list: on the state channel (too big for a keep-alive datagram).
    fn send_config_list(&mut self, now: Instant, tx: &mut TransactionLayer, me: &LocalContact) {
        if self.partitioned || self.link.channel != Proto::Tcp {
            return;
        }
        let Some(body) = self.config.poll_send(now) else {
            return;
        };
        let flow = self.channel_flow();
        let role = self.machine.announced();
        let r = self.pair_request(now, me, 0, role, Some(body), flow.proto, false);
        tx.send_stateless(flow, r.to_bytes());
    }

    /// Send digest chunks to the peer over the state channel: only what was never sent (a
    /// call just confirmed: the stand-by learns it within one link round trip), or everything
    /// not yet acknowledged (every keep-alive interval over UDP, which loses chunks; over TCP
    /// only once acknowledgements stalled for [`RESEND_STALL`], as after a reconnect).
    pub(crate) fn send_digest(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        calls: usize,
        unsent_only: bool,
    ) {
        if self.partitioned || self.machine.role() != Role::Active {
            return;
        }
        let limit = self.digest_chunk();
        let resend = !unsent_only && (!self.link.channel.is_reliable() || self.digest.stalled(now));
        let mut skip = if resend { 0 } else { self.digest.log.sent() };
        let most = if resend { DIGEST_EXTRA + 1 } else { usize::MAX };
        let flow = self.channel_flow();
        for _ in 0..most {
            let Some((body, n)) = self.digest.log.chunk(limit, skip) else {
                break;
            };
            skip += n;
            let role = self.machine.announced();
            let r = self.keepalive_request(now, me, calls, role, Some(body), flow.proto);
            self.stats.keepalives_sent += 1;
            tx.send_stateless(flow, r.to_bytes());
        }
    }

    /// Run the role machine and apply its actions. Returns role changes for the server.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        calls: usize,
    ) -> Vec<RoleChange> {
        if self.persist_poll_at.is_some() {
            self.persist_poll_at = Some(now + EPOCH_POLL);
        }
        if self.persist_poll_at.is_some()
            && let Some((epoch, result)) = self.store.poll(now)
        {
            self.persist_poll_at = None;
            if let Err(e) = &result {
                tracing::error!(
                    error = e,
                    epoch,
                    "pair: cannot persist the epoch; not becoming active"
                );
            }
            self.machine.on_epoch_persisted(now, epoch, result);
        }
        self.machine.handle_timeout(now);
        let mut changes = Vec::new();
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::SendKeepalive(_) | Action::SendProbe if self.partitioned => {}
                Action::SendKeepalive(role) => {
                    // The liveness signal: a small UDP keep-alive (the stand-by's carries its
                    // digest acknowledgement).
                    let body = (role == Announced::Standby).then(|| self.ack_body());
                    let r = self.keepalive_request(now, me, calls, role, body, Proto::Udp);
                    self.stats.keepalives_sent += 1;
                    tx.send_stateless(Flow::udp(self.cfg.peer), r.to_bytes());
                    if role != Announced::Standby {
                        // The active's unacknowledged digest goes again on the state channel.
                        self.send_digest(now, tx, me, calls, false);
                    }
                    self.send_handoff(now, tx, me);
                    self.send_config_list(now, tx, me);
                }
                Action::SendProbe => {
                    let role = self.machine.announced();
                    let r = self.keepalive_request(now, me, calls, role, None, Proto::Udp);
                    self.ka.mark_probe();
                    tracing::warn!(peer = %self.cfg.peer, missed = self.cfg.missed_keepalives, "pair: peer silent; probing it directly");
                    tx.send_stateless(Flow::udp(self.cfg.peer), r.to_bytes());
                }
                Action::PersistEpoch { epoch } => {
                    tracing::info!(epoch, "pair: taking over; persisting the new epoch first");
                    self.store.begin(epoch);
                    self.persist_poll_at = Some(now);
                }
                Action::Reclaim { epoch } => {
                    tracing::warn!(
                        epoch,
                        "pair: the peer was active at a higher epoch during a split; taking our calls back"
                    );
                    changes.push(RoleChange::Reclaim);
                }
                Action::BecomeActive { epoch, reason } => {
                    tracing::warn!(
                        node = self.node,
                        epoch,
                        ?reason,
                        "pair: this node is now ACTIVE"
                    );
                    self.last_takeover = Some(json!({ "epoch": epoch, "reason": reason }));
                    self.regs.subscriber = Subscriber::Idle { retry_at: now };
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
                    self.regs.notifier.clear();
                    self.digest.table = DigestTable::default();
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
                            .push(HeaderName::CallId, self.ka.witness_call_id());
                        r.headers.push(HeaderName::CSeq, "1 OPTIONS");
                        tracing::info!(witness = %w, "pair: asking a witness whether we can reach the network");
                        tx.send_stateless(Flow::udp(w), r.to_bytes());
                    }
                }
                Action::Warn(w) => tracing::warn!("pair: {w}"),
            }
        }
        self.ka.expire(now);
        changes
    }

    fn observe(&mut self, now: Instant, info: &Info) {
        self.config.observe(now, &info.node, &info.config);
    }

    /// A keep-alive OPTIONS from the peer: answer it (200 with our headers, or 403).
    pub(crate) fn on_keepalive_request(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        id: ServerTxId,
        req: &Request,
        source: Flow,
        calls: usize,
    ) {
        let start = auth::start_of_request("OPTIONS");
        match self.authenticate(now, source.remote, req, &start, &req.body) {
            Ok(info) => {
                self.stats.keepalives_received += 1;
                self.observe(now, &info);
                self.machine.on_keepalive(
                    now,
                    &info.node,
                    info.role,
                    info.epoch,
                    info.calls,
                    &info.config,
                    None,
                );
                let mut r = response_to(req, 200, Some(&self.ka.tag));
                if let Some(bye) = req.headers.iter().find(|h| {
                    matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(FORWARDED_BYE))
                }) {
                    self.handoff.byes_in.push(bye.value.trim().to_string());
                }
                let handoff = req
                    .headers
                    .iter()
                    .find(|h| {
                        matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(HANDOFF))
                    })
                    .map(|h| h.value.clone());
                let answer = match handoff.as_deref().map(str::trim) {
                    Some(v) if v.starts_with("reg;n=") => self.on_reg_handoff(v, &req.body),
                    Some(_) => self.on_handoff_body(&req.body),
                    None => self.on_digest_body(&req.body),
                };
                if let Some(b) = answer {
                    r.headers
                        .push(HeaderName::ContentType, digest::CONTENT_TYPE);
                    r.body = Bytes::from(b);
                }
                let mine = self.info(calls, self.machine.announced());
                keepalive::stamp(&mut r.headers, &self.link.secret, &mine, &r.body);
                announce_digest_version(&mut r.headers);
                let body = r.body.clone();
                self.link.sign(
                    now,
                    &mut r.headers,
                    &auth::start_of_response(200),
                    &body,
                    source.proto,
                );
                let _ = tx.respond(now, id, &r);
            }
            Err(e) => {
                self.stats.keepalives_rejected += 1;
                tracing::warn!(error = %e, %source, "pair: keep-alive refused");
                let mut r = response_to(req, 403, Some(&new_tag()));
                r.reason = "Keep-alive Authentication Failed".into();
                let _ = tx.respond(now, id, &r);
            }
        }
    }

    /// A response that matched no transaction: the answer to one of our keep-alives?
    pub(crate) fn on_stray_response(
        &mut self,
        now: Instant,
        resp: &Response,
        source: SocketAddr,
    ) -> bool {
        if resp.call_id().is_ok_and(|c| self.ka.is_witness_call_id(c)) {
            // Any answer from a witness proves the network around us works.
            self.machine.on_witness_answer();
            return true;
        }
        if resp.call_id().ok() != Some(self.ka.call_id.as_str()) {
            return false;
        }
        let Ok(cseq) = resp.cseq() else {
            return true;
        };
        if resp.status != 200 {
            return true;
        }
        let start = auth::start_of_response(resp.status);
        let info = match self.authenticate(now, source, resp, &start, &resp.body) {
            Ok(info) => info,
            Err(e) => {
                self.stats.keepalives_rejected += 1;
                tracing::debug!(error = e, %source, "pair: keep-alive answer refused");
                return true;
            }
        };
        let _ = self.on_digest_body(&resp.body);
        self.stats.keepalives_received += 1;
        self.observe(now, &info);
        let (rtt, probe) = self.ka.answered(cseq.seq, now);
        if let Some(d) = rtt {
            self.rtt.observe(d.as_secs_f64());
        }
        if probe {
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

    /// Registrations handed over by a peer that stepped down: kept for the server to apply
    /// while we are active; the chunk number goes back as the acknowledgement.
    fn on_reg_handoff(&mut self, value: &str, body: &[u8]) -> Option<String> {
        if self.machine.role() != Role::Active {
            return None;
        }
        let n: u32 = value.strip_prefix("reg;n=")?.trim().parse().ok()?;
        let info = crate::pair::regsync::parse(&String::from_utf8_lossy(body)).ok()?;
        self.handoff.regs_in.push(info);
        Some(format!("R\t{n}\n"))
    }

    /// A hand-off chunk from a peer that stepped down: kept for re-binding while we are
    /// active (our acknowledgement goes back); refused otherwise (it sends again).
    fn on_handoff_body(&mut self, body: &[u8]) -> Option<String> {
        if self.machine.role() != Role::Active {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        let ack = self.handoff.calls_in.apply(text);
        Some(format!("A\t{}\n", ack.to_header()))
    }

    /// A digest body from the peer: a chunk (we are stand-by: apply it, return our ack) or an
    /// ack (we are active: drop what it covers, or prepare the full list).
    fn on_digest_body(&mut self, body: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(body).ok()?;
        if ConfigCheck::is_list(text) {
            // The peer's settings list: ours goes back in the answer.
            self.config.on_list(text);
            return Some(self.config.body());
        }
        if text.starts_with("D\t") || text.starts_with('{') {
            if self.machine.role() == Role::Active {
                return None; // two actives: ignore the other's digest
            }
            self.digest.table.apply(text);
            return Some(self.ack_body());
        }
        if let Some(n) = text
            .strip_prefix("R\t")
            .and_then(|n| n.trim().parse::<u32>().ok())
        {
            self.handoff.regs_out.remove(&n);
            return None;
        }
        if let Some(Ack::Upto(g, s)) = text.strip_prefix("A\t").and_then(|a| Ack::parse(a.trim()))
            && let Some(log) = self.handoff.calls_out.as_mut()
        {
            // The active acknowledging our hand-off (the log ignores another generation).
            log.on_ack(g, s);
        }
        if let Some(ack) = text.strip_prefix("A\t").and_then(|a| Ack::parse(a.trim()))
            && self.machine.role() == Role::Active
        {
            match ack {
                Ack::Upto(g, s) => self.digest.log.on_ack(g, s),
                Ack::Resync => self.digest.resync_wanted = true,
            }
        }
        None
    }

    // ---- registration sync: stand-by side -------------------------------------------------

    // ---- registration sync: active side --------------------------------------------------

    // ---- admin ----------------------------------------------------------------------------

    pub(crate) fn status(&self, now: Instant) -> Value {
        let p = self.machine.peer();
        let alive = self.machine.peer_alive(now);
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
            "config_match": p.config.as_deref().is_none_or(|c| self.config.matches(c)),
            "config_differs": self.config.differs(),
            "mode": self.cfg.mode.as_str(),
            "reg_sync": match &self.regs.subscriber {
                Subscriber::Idle { .. } => "idle",
                Subscriber::Subscribing { .. } => "subscribing",
                Subscriber::Active { .. } => "subscribed",
            },
            "reg_subscribers": self.regs.notifier.len(),
            // Calls and registration chunks handed to the peer and not yet acknowledged
            // (after stepping down; `understudy drain` waits for 0).
            "handoff_pending": self.handoff.calls_out.as_ref().map_or(0, DigestLog::backlog)
                + self.handoff.regs_out.len(),
            "digest": {
                "calls_known": self.digest.table.len(),
                "backlog": self.digest.log.backlog(),
                "bytes_sent": self.digest.log.bytes_sent,
                // The digest version our bodies go out in (the peer's announcement decides).
                "version": match self.digest.format {
                    digest::Format::Lines => 1,
                    digest::Format::Json => digest::VERSION,
                },
            },
            "last_takeover": self.last_takeover,
        })
    }

    /// A stand-by is ready to take over: the active answers its keep-alives and it holds
    /// the active's registrations (its reg subscription is up). `Err` says what is missing.
    pub(crate) fn standby_in_sync(&self, now: Instant) -> Result<(), &'static str> {
        if !self.machine.peer_alive(now) {
            return Err("the active peer is not answering keep-alives");
        }
        match self.regs.subscriber {
            Subscriber::Active { .. } => Ok(()),
            _ => Err("registration sync with the active is not up"),
        }
    }

    pub(crate) fn accepts_calls(&self) -> bool {
        self.machine.accepts_calls()
    }

    pub(crate) fn config_match(&self) -> bool {
        self.machine
            .peer()
            .config
            .as_deref()
            .is_none_or(|c| self.config.matches(c))
    }

    pub(crate) fn redirect(&self) -> bool {
        self.cfg.redirect_when_standby
    }
}

/// Say which digest version we read (signed with the other `X-Understudy-*` headers).
fn announce_digest_version(h: &mut crate::sip::Headers) {
    h.push(
        HeaderName::Other(digest::VERSION_HEADER.into()),
        digest::VERSION.to_string(),
    );
}

#[cfg(test)]
mod resend_tests {
    use super::*;

    /// Over TCP the unacknowledged digest goes again only after acknowledgements stalled for
    /// `RESEND_STALL`, and each resend starts a new wait; progress resets it.
    #[test]
    fn unacknowledged_entries_go_again_only_after_a_stall() {
        let t0 = Instant::now();
        let mut d = DigestSync::new();
        d.log.resync(Vec::new());
        let _ = d.log.chunk(1000, 0); // sent, not acknowledged
        assert!(!d.stalled(t0));
        assert!(!d.stalled(t0 + Duration::from_secs(4)));
        assert!(d.stalled(t0 + RESEND_STALL));
        assert!(!d.stalled(t0 + RESEND_STALL + Duration::from_secs(1)));
        // An acknowledgement of everything: nothing waits, nothing to resend.
        let body = d.log.chunk(1000, 0).map(|(b, _)| b).unwrap_or_default();
        let mut table = DigestTable::default();
        if let Ack::Upto(g, s) = table.apply(&body) {
            d.log.on_ack(g, s);
        }
        assert_eq!(d.log.backlog(), 0);
        assert!(!d.stalled(t0 + Duration::from_secs(60)));
    }
}
