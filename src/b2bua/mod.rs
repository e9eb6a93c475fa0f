//! Calls: two legs per call, routing, relaying of provisional and final responses, CANCEL,
//! BYE, pass-through of re-INVITE/UPDATE/INFO/OPTIONS, parallel forking, session timers
//! (RFC 4028) and CDR events. Sans-IO: the caller passes time and the lower layers in
//! [`Env`], and drains CDRs with [`B2bua::take_cdrs`].

mod call;
mod digest;
mod in_dialog;
mod invite;
mod media;
mod outbound_auth;
mod prack;
mod rebind;
mod refusal;
mod routing;
mod session;
mod transfer;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::entropy::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use call::Relay;
pub use call::{Call, CallState, Side, parse_tag, tag_for};
pub use media::{MediaCommand, MediaPlan};
pub use rebind::{Adopted, Outcome, Source};
pub use refusal::Refusal;
pub use routing::{Route, Target, resolve};

use crate::cdr::CdrRecord;
use crate::config::Config;
use crate::dialog::LocalContact;
use crate::registrar::Registrar;
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, response_to};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};

/// Methods we accept and advertise in `Allow`.
pub const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, PRACK, REFER, REGISTER, SUBSCRIBE, NOTIFY";

/// Extensions we name in `Supported` on dialog-forming and target-refreshing messages
/// (RFC 4028 session timers, RFC 3891 Replaces; `100rel` only where it applies).
pub const SUPPORTED: &str = "timer, replaces";

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
    /// Trunk host names resolved.
    pub dns: &'a crate::dns::Dns,
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

    /// A Call-ID for a dialog we start (96 random bits at our host).
    fn new_call_id(&self) -> String {
        let host = self.me.udp.split(':').next().unwrap_or("understudy");
        format!(
            "{:016x}{:08x}@{host}",
            crate::entropy::random::<u64>(),
            crate::entropy::random::<u32>()
        )
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
    Prack,
    Notify,
    TransferInvite,
    TransferJoin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Ring,
    Session(u8),
    RebindRetry,
    Reliable,
}

/// Per-leg pairs (`[T; 2]`, leg A first) looked up by [`Side`] with a `match`, so that no
/// lookup can be out of range.
trait PerLeg<T> {
    /// The element for `side`.
    fn leg(&self, side: Side) -> &T;
    /// The element for `side`, mutably.
    fn leg_mut(&mut self, side: Side) -> &mut T;
}

impl<T> PerLeg<T> for [T; 2] {
    fn leg(&self, side: Side) -> &T {
        let [a, b] = self;
        match side {
            Side::A => a,
            Side::B => b,
        }
    }

    fn leg_mut(&mut self, side: Side) -> &mut T {
        let [a, b] = self;
        match side {
            Side::A => a,
            Side::B => b,
        }
    }
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
    /// Calls ended here, for a minute: a hand-off does not bring them back.
    recently_ended: HashMap<u64, Instant>,
    calls: HashMap<u64, Box<Call>>,
    client: HashMap<ClientTxId, (u64, Purpose)>,
    server_invites: HashMap<ServerTxId, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    /// Timers in the heap after its last sweep of superseded ones.
    timers_live: usize,
    cdrs: Vec<CdrRecord>,
    /// Trunk targets (host name, address) that failed since the last take.
    dns_failures: Vec<(String, std::net::SocketAddr)>,
    /// BYEs sent to trunks with credentials, until their final response: the request, where
    /// it went, the trunk, and the challenge answered so far.
    #[allow(clippy::type_complexity)]
    trunk_byes: HashMap<ClientTxId, (Request, crate::net::Flow, String, Option<(String, u32)>)>,
    /// CDRs of calls that ended while their re-bind was under way, held until the other
    /// leg answers our BYE: 481 there means that leg had already hung up to the previous
    /// owner, whose CDR stands (one CDR per call across the pair).
    held_cdrs: std::collections::BTreeMap<ClientTxId, CdrRecord>,
    rebind_outcomes: Vec<(u64, Outcome)>,
    digest_on: bool,
    digest_out: Vec<crate::pair::digest::Entry>,
    media: Option<MediaPlan>,
    /// Tokens in our tags that name another call: after an attended transfer joined a leg of
    /// one call to another, that leg's tag still carries its first call's token.
    aliases: HashMap<u64, u64>,
    /// Legs a transfer took out of their call, for a minute (Call-ID, our tag): the phone's
    /// own BYE crossing ours gets 200, not 481.
    departed: HashMap<(String, String), Instant>,
    /// Counters.
    pub stats: Stats,
    /// Seconds from a caller's INVITE to the callee's answer.
    pub answer_latency: crate::metrics::Histogram,
}

/// The credentials of trunk `name`, if it has any.
fn trunk_credentials<'c>(
    cfg: &'c Config,
    name: Option<&str>,
) -> Option<&'c crate::config::TrunkCredentials> {
    let name = name?;
    cfg.trunks
        .iter()
        .find(|t| t.name == name)
        .and_then(|t| t.credentials.as_ref())
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

    /// Forget calls ended more than a minute before `now` (see [`Self::has_call`]).
    pub fn forget_ended(&mut self, now: Instant) {
        self.recently_ended
            .retain(|_, t| now.saturating_duration_since(*t) < Duration::from_secs(60));
        self.departed
            .retain(|_, t| now.saturating_duration_since(*t) < Duration::from_secs(60));
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

    /// Whether the call with this token is here, or ended here within the last minute (a
    /// hand-off must not bring back a call this node already ended).
    pub fn has_call(&self, token: u64) -> bool {
        self.calls.contains_key(&token)
            || self.recently_ended.contains_key(&token)
            || self.aliases.contains_key(&token)
    }

    /// The call and leg a dialog of ours belongs to: the token in our tag names the call
    /// (itself, or through an alias), the leg is the one with this Call-ID and our tag.
    pub(super) fn locate(&self, local_tag: &str, call_id: &str) -> Option<(u64, Side)> {
        let (t, _) = parse_tag(local_tag)?;
        let token = if self.calls.contains_key(&t) {
            t
        } else {
            *self.aliases.get(&t)?
        };
        let call = self.calls.get(&token)?;
        [Side::A, Side::B]
            .into_iter()
            .find(|&s| {
                call.leg(s)
                    .is_some_and(|d| *d.call_id == *call_id && *d.local_tag == *local_tag)
            })
            .map(|s| (token, s))
    }

    /// Forget the aliases of call `token` (it ended or left this node).
    fn drop_aliases(&mut self, token: u64) {
        if !self.aliases.is_empty() {
            self.aliases.retain(|_, t| *t != token);
        }
    }

    /// The call one of whose legs has this Call-ID. A linear scan: it serves the rare path
    /// that must find a call from a bare message (the server's last line of defence).
    pub fn token_of_call_id(&self, call_id: &str) -> Option<u64> {
        self.calls.iter().find_map(|(&token, c)| {
            [Side::A, Side::B]
                .into_iter()
                .filter_map(|side| c.leg(side))
                .any(|d| *d.call_id == *call_id)
                .then_some(token)
        })
    }

    /// Forget one call without sending anything or writing its CDR: what is left when even
    /// ending it cleanly failed.
    pub fn discard(&mut self, token: u64) {
        self.drop_aliases(token);
        if self.calls.remove(&token).is_some() {
            if let Some(m) = self.media.as_mut() {
                m.release(token);
            }
            self.client.retain(|_, (t, _)| *t != token);
            self.server_invites.retain(|_, t| *t != token);
        }
    }

    /// Which leg of call `token` has `call_id` (leg A unless it is leg B's).
    pub fn side_of_call_id(&self, token: u64, call_id: &str) -> Side {
        match self.calls.get(&token).and_then(|c| c.leg(Side::B)) {
            Some(b) if *b.call_id == *call_id => Side::B,
            _ => Side::A,
        }
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
        // Nobody will answer the BYEs now: what was held is written.
        let held = std::mem::take(&mut self.held_cdrs).into_values();
        self.cdrs.extend(held);
        self.calls.clear();
        self.aliases.clear();
        self.client.clear();
        self.server_invites.clear();
        self.timers.clear();
        n
    }

    /// The final answer `status` to the BYE a held CDR waits for: written, unless the leg
    /// no longer knew the call (481).
    fn release_held_cdr(&mut self, id: ClientTxId, status: u16) {
        let Some(cdr) = self.held_cdrs.remove(&id) else {
            return;
        };
        if status == 481 {
            tracing::info!(
                token = cdr.token,
                "the other leg had hung up before this node owned the call; its CDR is the \
                 previous owner's"
            );
        } else {
            self.cdrs.push(cdr);
        }
    }

    /// Take the CDRs of calls that ended.
    pub fn take_cdrs(&mut self) -> Vec<CdrRecord> {
        std::mem::take(&mut self.cdrs)
    }

    /// Trunk targets that failed (for the DNS cache to try them last).
    pub fn take_dns_failures(&mut self) -> Vec<(String, std::net::SocketAddr)> {
        std::mem::take(&mut self.dns_failures)
    }

    fn new_token(&self) -> u64 {
        loop {
            let t: u64 = crate::entropy::random();
            if t != 0 && !self.calls.contains_key(&t) {
                return t;
            }
        }
    }

    /// A response for one of our client transactions. Returns whether it was ours.
    pub fn on_response(&mut self, env: &mut Env<'_>, id: ClientTxId, resp: Response) -> bool {
        if resp.status >= 200 {
            self.release_held_cdr(id, resp.status);
        }
        let Some(&(token, purpose)) = self.client.get(&id) else {
            return false;
        };
        if matches!(purpose, Purpose::Bye) && self.bye_challenged(env, token, id, &resp) {
            return true;
        }
        if resp.status >= 200
            && !matches!(
                purpose,
                Purpose::Fork | Purpose::Relay | Purpose::Rebind(_) | Purpose::TransferInvite
            )
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
                    self.rebind_response(env, token, side, rebind::Answer::Final(resp));
                }
            }
            Purpose::TransferInvite => self.transfer_invite_response(env, token, id, resp),
            Purpose::TransferJoin => self.transfer_join_response(env, token, id, resp),
            Purpose::Bye | Purpose::Cancel | Purpose::Prack | Purpose::Notify => {}
        }
        true
    }

    /// A trunk challenged our BYE: send it again with the trunk's credentials (once per
    /// challenge); `true` when this response was handled so.
    fn bye_challenged(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ClientTxId,
        resp: &Response,
    ) -> bool {
        if resp.status < 200 {
            return false;
        }
        let Some((req, flow, trunk, mut auth)) = self.trunk_byes.remove(&id) else {
            return false;
        };
        if !matches!(resp.status, 401 | 407) {
            return false;
        }
        let Some(creds) = trunk_credentials(env.cfg, Some(&trunk)) else {
            return false;
        };
        let cseq = req.cseq().map_or(0, |c| c.seq);
        match outbound_auth::authorize(env.me, &req, flow.proto, &mut auth, resp, creds, cseq) {
            Ok(retry) => {
                if let Ok(tx) = env.tx.send_request(env.now, &retry, flow) {
                    self.client.remove(&id);
                    self.client.insert(tx, (token, Purpose::Bye));
                    self.trunk_byes.insert(tx, (retry, flow, trunk, auth));
                    return true;
                }
                false
            }
            Err(why) => {
                tracing::warn!(
                    trunk = trunk.as_str(),
                    error = why,
                    "the trunk's challenge to our BYE is not answered"
                );
                false
            }
        }
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
            self.rebind_response(env, token, side, rebind::Answer::Unreachable);
            return true;
        }
        self.on_timeout(env, id)
    }

    /// A client transaction timed out (Timer B/F): treated as 408.
    pub fn on_timeout(&mut self, env: &mut Env<'_>, id: ClientTxId) -> bool {
        self.release_held_cdr(id, 408);
        self.trunk_byes.remove(&id);
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
                let relay = self
                    .calls
                    .get_mut(&token)
                    .and_then(|c| c.reinvite.take())
                    .map(|b| *b);
                if let Some(r) = relay {
                    let resp = response_to(&r.request, 408, None);
                    let _ = env.tx.respond(env.now, r.server, &resp);
                }
                self.finish(env, token, "failed:408", &[Side::A, Side::B]);
            }
            (Purpose::Rebind(side), _) => {
                let resp = Response::new(408);
                self.rebind_response(env, token, side, rebind::Answer::Final(resp));
            }
            (Purpose::Refresh { side, cseq }, _) => {
                self.client.remove(&id);
                let resp = Response::new(408);
                session::refresh_response(self, env, token, side, cseq, &resp);
            }
            (Purpose::TransferInvite, _) => {
                let resp = Response::new(408);
                self.transfer_invite_response(env, token, id, resp);
            }
            (Purpose::TransferJoin, _) => {
                let resp = Response::new(408);
                self.transfer_join_response(env, token, id, resp);
            }
            _ => {
                self.client.remove(&id);
            }
        }
        true
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
        self.drop_aliases(token);
        if let Some(t) = call.transfer.take() {
            self.abort_transfer(env, token, *t);
        }
        let rebinding = call.rebind.take().is_some();
        if rebinding {
            // Ended while its re-bind was under way (an endpoint hung up): the takeover hears
            // of it like of any other re-bind.
            self.rebind_outcomes.push((token, rebind::Outcome::HungUp));
        }
        let mut byes = Vec::new();
        // Requests relayed across the call that have no final answer yet: the call is gone,
        // so they end with 487 (RFC 3261 §15.1.2) instead of hanging.
        let mut pending: Vec<Relay> = call.relays_take().into_iter().map(|(_, r)| r).collect();
        pending.extend(call.reinvite.take().map(|b| *b));
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
                // A BYE to a trunk with credentials is kept: the carrier may challenge it.
                let creds = (side == Side::B)
                    .then(|| trunk_credentials(env.cfg, call.trunk.as_deref()))
                    .flatten()
                    .is_some();
                if let Some(d) = call.leg_mut(side) {
                    let r = d.request(Method::Bye, env.me, None);
                    let flow = d.next_hop();
                    if let Ok(tx) = env.tx.send_request(env.now, &r, flow) {
                        self.client.insert(tx, (token, Purpose::Bye));
                        byes.push(tx);
                        if creds {
                            self.trunk_byes.insert(
                                tx,
                                (
                                    r,
                                    flow,
                                    call.trunk.as_deref().unwrap_or_default().to_string(),
                                    None,
                                ),
                            );
                        }
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
        for tx in call.relay_txs() {
            self.client.remove(&tx);
        }
        if let Some(id) = call.invite_tx {
            self.server_invites.remove(&id);
        }
        self.stats.ended += 1;
        if self.digest_on {
            self.recently_ended.insert(token, env.now);
        }
        self.digest_gone(token);
        if let Some(m) = self.media.as_mut() {
            m.release(token);
        }
        if call.no_cdr {
            tracing::info!(
                token = format!("{token:016x}"),
                reason,
                "call had ended before this node owned it; its CDR is the previous owner's"
            );
            return;
        }
        let cdr = cdr_of(&call, env, reason);
        match byes.as_slice() {
            [tx] if rebinding => {
                self.held_cdrs.insert(*tx, cdr);
            }
            _ => self.cdrs.push(cdr),
        }
        tracing::debug!(token = format!("{token:016x}"), reason, "call ended");
    }

    /// Fire due call timers (ring timeout, session timers).
    pub fn handle_timeout(&mut self, env: &mut Env<'_>) {
        // Superseded timers (ended calls, answered calls' ring timeout, moved session
        // deadlines) are skipped lazily; once they outnumber the current ones (at most four
        // per call), drop them, so the heap does not grow with the call rate.
        if self.timers.len() > 64 + 2 * self.timers_live {
            let calls = &self.calls;
            self.timers.retain(|Reverse((at, token, kind))| {
                calls.get(token).is_some_and(|c| match kind {
                    TimerKind::Ring => c.a_invite.is_some(),
                    TimerKind::Session(i) => session::side_of(*i)
                        .and_then(|side| *c.timers.leg(side))
                        .is_some_and(|t| t.deadline == *at),
                    TimerKind::RebindRetry => true,
                    TimerKind::Reliable => c.reliable.as_ref().is_some_and(|r| r.pending()),
                })
            });
            // Twice the current ones before the next sweep: sweeps stay rare (each costs
            // the heap's length) and the heap at most about twice what it must hold.
            self.timers_live = self.timers.len();
            self.timers.shrink_to(2 * self.timers_live + 64);
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
                    if let Some((sid, req)) = call.a_invite.take().map(|b| *b) {
                        let r = response_to(&req, 408, Some(&call.a.local_tag));
                        let _ = env.tx.respond(env.now, sid, &r);
                        call.cancelled = true;
                        self.cancel_forks(env, token, None);
                        self.maybe_finish_unanswered(env, token);
                    }
                }
                TimerKind::Session(i) => session::fire(self, env, token, i, at),
                TimerKind::RebindRetry => self.rebind_retry(env, token),
                TimerKind::Reliable => self.reliable_retransmit(env, token),
            }
        }
    }

    /// When [`Self::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// The CDR of `call` (or of its part so far) ending now for `reason`.
fn cdr_of(call: &Call, env: &Env<'_>, reason: &str) -> CdrRecord {
    let answer = call.answer_ms;
    let end = env.now_ms;
    CdrRecord {
        call_id: call.a.call_id.to_string(),
        b_call_id: call.b_call_id.to_string(),
        token: format!("{:016x}", call.token),
        caller: call.caller.to_string(),
        callee: call.callee.to_string(),
        trunk: call.trunk.as_deref().map(str::to_string),
        start_ms: call.start_ms as i64,
        answer_ms: answer.map(|a| a as i64),
        end_ms: end as i64,
        duration_ms: answer.map_or(0, |a| end.saturating_sub(a) as i64),
        end_reason: reason.to_string(),
        recovered: call.recovered,
        node: env.node.to_string(),
        media: None,
        transfer_of: call.transfer_of.as_deref().map(str::to_string),
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
