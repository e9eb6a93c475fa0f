//! The call model: two legs, the forks of the B leg while it is being set up, and the
//! transactions in flight that belong to the call.

use std::time::Instant;

use bytes::Bytes;

use crate::dialog::Dialog;
use crate::net::Flow;
use crate::sip::Request;
use crate::transaction::{ClientTxId, ServerTxId};

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The caller side (we are UAS).
    A,
    /// The callee side (we are UAC).
    B,
}

impl Side {
    /// The other leg.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// The tag suffix.
    pub fn letter(self) -> char {
        match self {
            Self::A => 'a',
            Self::B => 'b',
        }
    }
}

/// Our tag for a leg of the call with `token` (DESIGN: `u<token-hex>a` / `u<token-hex>b`).
pub fn tag_for(token: u64, side: Side) -> String {
    format!("u{token:016x}{}", side.letter())
}

/// The call token and side carried by one of our tags.
pub fn parse_tag(tag: &str) -> Option<(u64, Side)> {
    // Byte-wise: a tag from the network may hold anything, and a char boundary is not a
    // byte count.
    let (side, hex) = tag.strip_prefix('u')?.as_bytes().split_last()?;
    let side = match side {
        b'a' => Side::A,
        b'b' => Side::B,
        _ => return None,
    };
    if hex.len() != 16 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let token = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((token, side))
}

/// Call state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// INVITE sent to the callee's contacts; nothing final yet.
    Calling,
    /// A provisional response was relayed to the caller.
    Ringing,
    /// The callee answered; waiting for the caller's ACK.
    Answered,
    /// Both legs confirmed.
    Confirmed,
    /// Adopted at takeover; the re-bind exchange is in progress.
    Rebinding,
}

/// One branch of the B leg's INVITE (parallel forking to several contacts).
#[derive(Debug)]
pub struct Fork {
    /// Its client transaction.
    pub tx: ClientTxId,
    /// The INVITE sent (to build a CANCEL).
    pub request: Request,
    /// Where it went.
    pub flow: Flow,
    /// Whether a provisional arrived (CANCEL may only follow one, RFC 3261 §9.1).
    pub provisional: bool,
    /// CANCEL wanted as soon as a provisional arrives.
    pub cancel_wanted: bool,
    /// A final response arrived.
    pub done: bool,
    /// The callee's tag when a provisional created an early dialog.
    pub early_tag: Option<String>,
    /// The callee's Contact in that early dialog.
    pub early_target: Option<String>,
    /// The nonce of the trunk challenge we answered last, and how often (`nc`).
    pub auth: Option<(String, u32)>,
    /// The RSeq of the last reliable provisional PRACKed on this fork (RFC 3262).
    pub rseq: Option<u32>,
    /// The CSeq of our last PRACK in this fork's early dialog.
    pub prack_cseq: u32,
}

/// A trunk's challenge to an in-dialog re-INVITE of ours (401/407).
#[derive(Debug, Clone)]
pub struct TrunkChallenge {
    /// Which leg is the trunk's.
    pub side: Side,
    /// The challenge (`WWW-Authenticate` / `Proxy-Authenticate` value).
    pub challenge: String,
    /// It came with 407 (answer in `Proxy-Authorization`).
    pub proxy: bool,
    /// How often we answered it (`nc`).
    pub nc: u32,
    /// The last re-INVITE carried credentials for it.
    pub sent: bool,
}

/// A session timer on one leg (RFC 4028).
#[derive(Debug, Clone, Copy)]
pub struct SessionTimer {
    /// Interval in seconds.
    pub interval_s: u32,
    /// Whether we send the refreshes on this leg.
    pub we_refresh: bool,
    /// When we refresh, or when we give up waiting for the peer's refresh.
    pub deadline: Instant,
}

/// A re-INVITE (or other request) relayed from one leg to the other.
#[derive(Debug)]
pub struct Relay {
    /// The leg it came from.
    pub from: Side,
    /// Its server transaction there.
    pub server: ServerTxId,
    /// The request as received (to build responses).
    pub request: Request,
    /// CSeq of the relayed INVITE on the other leg (for its ACK).
    pub out_cseq: u32,
}

/// What few calls need, or need only for a while, kept out of line: a held call carries one
/// pointer for it instead of its room (every byte of `Call` counts, see
/// `a_call_fits_the_768_byte_size_class`).
#[derive(Debug, Default)]
pub(super) struct Rare {
    /// Until answered: the trunk's other targets to fail over to (RFC 3263 §4.3).
    pub(super) alternates: Vec<super::Target>,
    /// The trunk's host name, when it has one (to report failed targets).
    pub(super) trunk_host: Option<String>,
    /// Re-bind re-INVITEs to the trunk's leg: the challenge it answered with 401/407 (to
    /// be answered in the next re-INVITE), and whether the last one carried credentials.
    pub(super) trunk_challenge: Option<TrunkChallenge>,
}

/// One call.
#[derive(Debug)]
pub struct Call {
    /// Token (random 64 bits).
    pub token: u64,
    /// State.
    pub state: CallState,
    /// The caller's leg.
    pub a: Dialog,
    /// The initial INVITE from A while it has no final response.
    pub a_invite: Option<Box<(ServerTxId, Request)>>,
    /// The server transaction of A's initial INVITE (until the call ends).
    pub invite_tx: Option<ServerTxId>,
    /// The callee's leg once answered.
    pub b: Option<Dialog>,
    /// B-leg Call-ID.
    pub b_call_id: Box<str>,
    /// CSeq of the B-leg INVITE.
    pub b_invite_cseq: u32,
    /// Outstanding forks of the initial B INVITE.
    pub forks: Vec<Fork>,
    /// We ACKed B's 2xx (a retransmitted 2xx gets a fresh ACK).
    pub b_acked: bool,
    /// The SDP answer our ACK to B carried (late offer), if any.
    pub b_ack_body: Option<Box<(Bytes, String)>>,
    /// The B-leg INVITE transaction that won (kept after the forks are dropped).
    pub b_tx: Option<ClientTxId>,
    /// A relayed re-INVITE waiting for its ACK (or final response).
    pub reinvite: Option<Box<Relay>>,
    /// The client transaction of the relayed re-INVITE.
    pub relay_tx: Option<ClientTxId>,
    /// Other relayed requests (UPDATE, INFO, OPTIONS...) waiting for their final response.
    /// (A list, not a map: rarely more than one at a time, and an empty list costs a held
    /// call 24 bytes where an empty map cost 48.)
    relays: Vec<(ClientTxId, Relay)>,
    /// Last SDP sent on each leg (for session refresh re-INVITEs).
    pub last_sdp: [Option<Box<[u8]>>; 2],
    /// Session timers per leg.
    pub timers: [Option<SessionTimer>; 2],
    /// Whether each leg's peer accepts UPDATE.
    pub peer_update: [bool; 2],
    /// Caller URI.
    pub caller: Box<str>,
    /// Callee (dialled number / user).
    pub callee: Box<str>,
    /// Trunk involved, if any.
    pub trunk: Option<Box<str>>,
    /// What few calls need, or need only for a while (out of line: see [`Rare`]).
    pub(super) rare: Option<Box<Rare>>,
    /// Wall clock of the INVITE, unix ms.
    pub start_ms: u64,
    /// Wall clock of the answer.
    pub answer_ms: Option<u64>,
    /// Monotonic creation time.
    pub created: Instant,
    /// Recovered after a takeover.
    pub recovered: bool,
    /// End without a CDR: a re-bound call that had already ended before this node owned it
    /// (the node that ended it wrote the CDR).
    pub(super) no_cdr: bool,
    /// CANCEL received from A before the answer.
    pub cancelled: bool,
    /// Re-bind exchange in progress (adopted calls).
    pub(super) rebind: Option<Box<super::rebind::Rebind>>,
    /// ACKs of the finished re-bind, per leg.
    pub(super) rebind_acks: Option<Box<[Bytes; 2]>>,
    /// Client transactions of the re-bind.
    pub(super) rebind_txs: Vec<ClientTxId>,
    /// Reliable provisionals to the caller (RFC 3262), when it supports them.
    pub(super) reliable: Option<Box<super::prack::ReliableA>>,
    /// A transfer in progress (REFER from one of the legs).
    pub(super) transfer: Option<Box<super::transfer::Transfer>>,
    /// How often the call was transferred.
    pub transfers: u8,
    /// The Call-ID of the transferor's leg this part of the call replaced (the CDR's
    /// `transfer_of`).
    pub transfer_of: Option<Box<str>>,
}

impl Fork {
    /// Drop the stored INVITE once nothing needs it (memory per held call).
    pub fn shed(&mut self) {
        self.request = Request {
            method: crate::sip::Method::Invite,
            uri: String::new(),
            headers: crate::sip::Headers::default(),
            body: Bytes::new(),
        };
    }
}

impl Call {
    /// A call in `state` with leg A, its parties and start time; everything else empty.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        token: u64,
        state: CallState,
        a: Dialog,
        b_call_id: Box<str>,
        caller: Box<str>,
        callee: Box<str>,
        start_ms: u64,
        created: Instant,
    ) -> Self {
        Self {
            token,
            state,
            a,
            a_invite: None,
            invite_tx: None,
            b: None,
            b_call_id,
            b_invite_cseq: 0,
            forks: Vec::new(),
            b_acked: false,
            b_ack_body: None,
            b_tx: None,
            reinvite: None,
            relay_tx: None,
            relays: Vec::new(),
            last_sdp: [None, None],
            timers: [None, None],
            peer_update: [false, false],
            caller,
            callee,
            trunk: None,
            rare: None,
            start_ms,
            answer_ms: None,
            created,
            recovered: false,
            no_cdr: false,
            cancelled: false,
            rebind: None,
            rebind_acks: None,
            rebind_txs: Vec::new(),
            reliable: None,
            transfer: None,
            transfers: 0,
            transfer_of: None,
        }
    }

    /// B retransmitted its 2xx: ACK it again once we ACKed it (the ACK of a 2xx is
    /// end-to-end, so the transaction layer leaves it to us, RFC 3261 §13.2.2.4).
    pub(super) fn reack_b(&mut self, env: &mut super::Env<'_>) {
        if !self.b_acked {
            return;
        }
        if let Some(b) = self.b.as_mut() {
            let ack = b.ack(
                env.me,
                self.b_invite_cseq,
                self.b_ack_body.as_deref().cloned(),
            );
            env.tx.send_stateless(b.next_hop(), ack.to_bytes());
        }
    }

    /// Once answered and every fork has its final response, forget the forks (memory per
    /// held call); the winner's transaction stays in `b_tx`.
    pub fn compact_forks(&mut self) {
        if self.b.is_some() && self.forks.iter().all(|f| f.done) {
            self.forks = Vec::new();
            // Answered: no more targets to fail over to; the rest stays if it is in use.
            self.rare = self.rare.take().and_then(|mut r| {
                r.alternates = Vec::new();
                r.trunk_host = None;
                r.trunk_challenge.is_some().then_some(r)
            });
        }
    }

    /// The out-of-line part, made when first needed.
    pub(super) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The trunk challenge kept for re-bind re-INVITEs.
    pub(super) fn trunk_challenge(&mut self) -> Option<&mut TrunkChallenge> {
        self.rare.as_mut().and_then(|r| r.trunk_challenge.as_mut())
    }

    /// Track a relayed non-INVITE request.
    pub fn relays_insert(&mut self, tx: ClientTxId, r: Relay) {
        self.relays.push((tx, r));
    }

    /// A relayed non-INVITE request by its client transaction.
    pub fn relay(&self, tx: ClientTxId) -> Option<&Relay> {
        self.relays.iter().find(|(t, _)| *t == tx).map(|(_, r)| r)
    }

    /// The relayed request of `tx` got its final response; the list's memory goes once it is
    /// empty.
    pub fn relay_done(&mut self, tx: ClientTxId) -> Option<Relay> {
        let i = self.relays.iter().position(|(t, _)| *t == tx)?;
        let (_, r) = self.relays.swap_remove(i);
        if self.relays.is_empty() {
            self.relays = Vec::new();
        }
        Some(r)
    }

    /// Every relayed request still waiting, taken out of the call.
    pub fn relays_take(&mut self) -> Vec<(ClientTxId, Relay)> {
        std::mem::take(&mut self.relays)
    }

    /// The client transactions of the relayed requests still waiting.
    pub fn relay_txs(&self) -> impl Iterator<Item = ClientTxId> + '_ {
        self.relays.iter().map(|(t, _)| *t)
    }

    /// The dialog of a leg, if it exists.
    pub fn leg(&self, side: Side) -> Option<&Dialog> {
        match side {
            Side::A => Some(&self.a),
            Side::B => self.b.as_ref(),
        }
    }

    /// The dialog of a leg, mutably.
    pub fn leg_mut(&mut self, side: Side) -> Option<&mut Dialog> {
        match side {
            Side::A => Some(&mut self.a),
            Side::B => self.b.as_mut(),
        }
    }
}

/// An SDP body kept for the call's lifetime (`Call::last_sdp`): its own bytes. A body parsed
/// from a datagram is a slice of it, and keeping the slice would keep the whole message —
/// headers and all, about a kilobyte per leg — alive for as long as the call is up.
/// A boxed slice, not `Bytes`: 16 bytes in the call instead of 32 per leg (a refresh copies
/// it into a message, which is rare).
pub(super) fn kept(sdp: &[u8]) -> Box<[u8]> {
    Box::from(sdp)
}

/// Index of a leg in per-leg arrays.
pub fn idx(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held call's biggest allocation is its `Box<Call>`. mimalloc serves it from the
    /// 768-byte size class while it fits (the next classes are 896 and 1,024 bytes): a few
    /// bytes more cost every held call 128 bytes of memory, or 256.
    #[test]
    fn a_call_fits_the_768_byte_size_class() {
        assert!(
            std::mem::size_of::<Call>() <= 768,
            "Call is {} bytes",
            std::mem::size_of::<Call>()
        );
    }

    #[test]
    fn tags_round_trip() {
        let t = tag_for(0xdead_beef_0000_0001, Side::B);
        assert_eq!(t, "udeadbeef00000001b");
        assert_eq!(parse_tag(&t), Some((0xdead_beef_0000_0001, Side::B)));
        assert_eq!(parse_tag("abc"), None);
        assert_eq!(parse_tag("udeadbeef00000001c"), None);
    }
}
