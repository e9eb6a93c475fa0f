//! Authentication and freshness of every pair message: keep-alives and their answers, the
//! registration SUBSCRIBE and its NOTIFYs (DESIGN "Wave 2: pair link").
//!
//! A signed message carries, besides its `X-Understudy-*` payload headers:
//! - `X-Understudy-Version: 2` (the pair protocol version),
//! - `X-Understudy-Seq: <boot>.<counter>`: `boot` is the sender's start time (unix ms), the
//!   counter grows by one per signed message,
//! - `X-Understudy-Channel: stream` on messages sent on the state channel's stream (TCP):
//!   the sender counts those apart from its datagrams, so a burst queued on the stream cannot
//!   fall behind the receiver's window while keep-alives overtake it on UDP,
//! - `X-Understudy-Time: <unix ms>` when it was signed,
//! - `X-Understudy-Sig`: hex HMAC-SHA256 with `pair.secret` over the start line kind, the
//!   Call-ID, the CSeq, *every* `X-Understudy-*` header in order (but the signatures), and
//!   SHA-256 of the body. Headers a later version adds are covered without a format change.
//!
//! The receiver accepts a message only when the signature is right, its time is within
//! `pair.max_clock_skew_ms` of its own clock, and its sequence number is new: higher than any
//! seen from that boot on that channel, or one of the last [`WINDOW`] not seen yet (UDP may
//! reorder). The channel header is signed like the others, so a message cannot be moved from
//! one sequence to the other. The receiver keeps the windows of the peer's last [`BOOTS`]
//! boots: a boot it does not know starts a new window, whatever its value (a node restarted
//! with its clock stepped back has a lower boot, and must not be refused for ever). So a
//! captured message replayed later is refused (seen, or stale), and a forged one fails the
//! signature; neither can keep a stand-by from taking over nor force a handover.
//!
//! Rolling upgrades: version 2 nodes also send the version 1 `X-Understudy-Auth` (which older
//! nodes check), and accept an unsigned version 1 peer only with `pair.accept_v1 = true`, for
//! the duration of the upgrade.

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::sip::{HeaderName, Headers};

/// Protocol version header.
pub const VERSION: &str = "X-Understudy-Version";
/// Sequence header.
pub const SEQ: &str = "X-Understudy-Seq";
/// Signing time header.
pub const TIME: &str = "X-Understudy-Time";
/// Channel header: present (`stream`) when the message was counted in the stream sequence.
pub const CHANNEL: &str = "X-Understudy-Channel";
/// Version 2 signature header.
pub const SIG: &str = "X-Understudy-Sig";
/// The pair protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// How many sequence numbers below the highest seen may still arrive (reordering).
pub const WINDOW: u64 = 64;

/// Which sequence a message is counted in: what the pair link may reorder is only ever
/// compared with messages that travelled the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// UDP: reordering within [`WINDOW`] tolerated.
    Datagram,
    /// The TCP state channel: in order, but arbitrarily late relative to datagrams.
    Stream,
}

impl From<crate::net::Proto> for Channel {
    fn from(p: crate::net::Proto) -> Self {
        match p {
            crate::net::Proto::Udp => Self::Datagram,
            crate::net::Proto::Tcp | crate::net::Proto::Tls => Self::Stream,
        }
    }
}

/// Why a pair message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No version 2 signature (and version 1 is not accepted).
    #[error("unsigned (version 1) pair message; set pair.accept_v1 during a rolling upgrade")]
    Unsigned,
    /// Malformed `Seq`/`Time`/`Sig`.
    #[error("malformed pair signature headers")]
    Malformed,
    /// The signature is wrong (forged or altered).
    #[error("bad pair signature")]
    BadSignature,
    /// Signed too long ago or in the future (replayed, or the clocks differ).
    #[error("stale pair message (clock skew {0} ms)")]
    Stale(i64),
    /// Already seen, or from an older boot of the peer (replayed).
    #[error("replayed pair message")]
    Replayed,
}

/// What kind of message is signed: its start line without the variable parts.
pub fn start_of_request(method: &str) -> String {
    format!("REQ {method}")
}

/// The start line kind of a response.
pub fn start_of_response(status: u16) -> String {
    format!("RSP {status}")
}

fn is_pair_header(name: &str) -> bool {
    name.len() > 13
        && name
            .get(..13)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-understudy-"))
}

fn canonical(h: &Headers, start: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"understudy-pair-v2\n");
    out.extend_from_slice(start.as_bytes());
    out.push(b'\n');
    for name in [HeaderName::CallId, HeaderName::CSeq] {
        out.extend_from_slice(h.get(&name).unwrap_or("").trim().as_bytes());
        out.push(b'\n');
    }
    for x in h.iter() {
        let HeaderName::Other(n) = &x.name else {
            continue;
        };
        if !is_pair_header(n)
            || n.eq_ignore_ascii_case(SIG)
            || n.eq_ignore_ascii_case(super::keepalive::AUTH)
        {
            continue;
        }
        out.extend_from_slice(n.to_ascii_lowercase().as_bytes());
        out.push(b':');
        out.extend_from_slice(x.value.trim().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(hex::encode(Sha256::digest(body)).as_bytes());
    out
}

fn keyed(secret: &[u8], data: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(data);
    Some(m)
}

fn other(name: &str) -> HeaderName {
    HeaderName::Other(name.to_string())
}

/// The first `X-Understudy-*`-style header called `name` (case-insensitive), trimmed.
pub(crate) fn get<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|x| matches!(&x.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(name)))
        .map(|x| x.value.trim())
}

/// Signs what this node sends to its peer.
#[derive(Debug, Clone)]
pub struct Signer {
    secret: Vec<u8>,
    boot: u64,
    /// Messages signed so far, datagrams and stream.
    counters: [u64; 2],
}

impl Signer {
    /// A signer for a process that started at `boot_ms` (unix ms).
    pub fn new(secret: &[u8], boot_ms: u64) -> Self {
        Self {
            secret: secret.to_vec(),
            boot: boot_ms,
            counters: [0; 2],
        }
    }

    /// Add the version, sequence, time and signature headers to a message whose other
    /// headers and body are final, counting it in `channel`'s sequence.
    pub fn sign(
        &mut self,
        h: &mut Headers,
        start: &str,
        body: &[u8],
        now_ms: u64,
        channel: Channel,
    ) {
        let [datagrams, stream] = &mut self.counters;
        let counter = match channel {
            Channel::Datagram => datagrams,
            Channel::Stream => stream,
        };
        *counter += 1;
        let counter = *counter;
        h.retain(|x| {
            !matches!(&x.name, HeaderName::Other(n)
                if [VERSION, SEQ, CHANNEL, TIME, SIG].iter().any(|k| n.eq_ignore_ascii_case(k)))
        });
        h.push(other(VERSION), PROTOCOL_VERSION.to_string());
        h.push(other(SEQ), format!("{}.{counter}", self.boot));
        if channel == Channel::Stream {
            h.push(other(CHANNEL), "stream");
        }
        h.push(other(TIME), now_ms.to_string());
        let sig = keyed(&self.secret, &canonical(h, start, body))
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default();
        h.push(other(SIG), sig);
    }
}

/// How many of the peer's boots the receiver remembers (a replay from an older one is stale
/// by its time long before the peer restarted this often).
pub const BOOTS: usize = 8;

/// What the receiver remembers of the peer's sequence numbers: a window per recent boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// (boot, window), the newest last.
    boots: Vec<(u64, Window)>,
}

/// The counters seen from one boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    /// Highest counter accepted.
    max: u64,
    /// Bit `i` set: `max - i` was accepted.
    bits: u64,
}

impl Seen {
    /// Whether (`boot`, `counter`) is new; records it when it is.
    fn accept(&mut self, boot: u64, counter: u64) -> bool {
        if let Some((_, w)) = self.boots.iter_mut().find(|(b, _)| *b == boot) {
            return w.accept(counter);
        }
        if self.boots.len() >= BOOTS {
            self.boots.remove(0);
        }
        self.boots.push((
            boot,
            Window {
                max: counter,
                bits: 1,
            },
        ));
        true
    }
}

impl Window {
    fn accept(&mut self, counter: u64) -> bool {
        if counter > self.max {
            let shift = counter - self.max;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.max = counter;
            return true;
        }
        let back = self.max - counter;
        if back >= WINDOW {
            return false;
        }
        let bit = 1u64 << back;
        if self.bits & bit != 0 {
            return false;
        }
        self.bits |= bit;
        true
    }
}

/// Checks what the peer sends.
#[derive(Debug, Clone)]
pub struct Verifier {
    secret: Vec<u8>,
    max_skew_ms: u64,
    accept_v1: bool,
    /// Sequence numbers seen on datagrams.
    seen: Seen,
    /// Sequence numbers seen on the stream.
    seen_stream: Seen,
}

/// How a message was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Version 2: signed, fresh, not seen before.
    Fresh,
    /// Version 1 (a peer not yet upgraded), accepted because `pair.accept_v1` is set; its
    /// version 1 MAC is checked by the caller.
    Legacy,
}

impl Verifier {
    /// A verifier for `secret`.
    pub fn new(secret: &[u8], max_skew_ms: u64, accept_v1: bool) -> Self {
        Self {
            secret: secret.to_vec(),
            max_skew_ms,
            accept_v1,
            seen: Seen::default(),
            seen_stream: Seen::default(),
        }
    }

    /// Check a message's signature and freshness; a fresh message is remembered, so the same
    /// one is refused next time.
    pub fn verify(
        &mut self,
        h: &Headers,
        start: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Verified, AuthError> {
        let Some(sig) = get(h, SIG) else {
            return if self.accept_v1 {
                Ok(Verified::Legacy)
            } else {
                Err(AuthError::Unsigned)
            };
        };
        let given = hex::decode(sig).map_err(|_| AuthError::Malformed)?;
        keyed(&self.secret, &canonical(h, start, body))
            .ok_or(AuthError::BadSignature)?
            .verify_slice(&given)
            .map_err(|_| AuthError::BadSignature)?;
        let (boot, counter) = get(h, SEQ)
            .and_then(|s| s.split_once('.'))
            .and_then(|(b, c)| Some((b.parse::<u64>().ok()?, c.parse::<u64>().ok()?)))
            .ok_or(AuthError::Malformed)?;
        let time: u64 = get(h, TIME)
            .and_then(|t| t.parse().ok())
            .ok_or(AuthError::Malformed)?;
        let skew = i64::try_from(i128::from(now_ms) - i128::from(time)).unwrap_or(i64::MAX);
        if skew.unsigned_abs() > self.max_skew_ms {
            return Err(AuthError::Stale(skew));
        }
        let seen = match get(h, CHANNEL) {
            None => &mut self.seen,
            Some(c) if c.eq_ignore_ascii_case("stream") => &mut self.seen_stream,
            Some(_) => return Err(AuthError::Malformed),
        };
        if !seen.accept(boot, counter) {
            return Err(AuthError::Replayed);
        }
        Ok(Verified::Fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(signer: &mut Signer, now_ms: u64, body: &[u8]) -> Headers {
        let mut h = Headers::new();
        h.push(HeaderName::CallId, "ka-1");
        h.push(HeaderName::CSeq, "7 OPTIONS");
        h.push(other("X-Understudy-Node"), "main-1");
        h.push(other("X-Understudy-Calls"), "12");
        signer.sign(
            &mut h,
            &start_of_request("OPTIONS"),
            body,
            now_ms,
            Channel::Datagram,
        );
        h
    }

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn a_signed_message_verifies_once() {
        let mut s = Signer::new(b"k", T - 5000);
        let mut v = Verifier::new(b"k", 5000, false);
        let h = msg(&mut s, T, b"D\tbody");
        let start = start_of_request("OPTIONS");
        assert_eq!(
            v.verify(&h, &start, b"D\tbody", T + 10),
            Ok(Verified::Fresh)
        );
        assert_eq!(
            v.verify(&h, &start, b"D\tbody", T + 20),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn every_pair_header_the_body_and_the_start_line_are_covered() {
        let mut s = Signer::new(b"k", T);
        let h = msg(&mut s, T, b"x");
        let start = start_of_request("OPTIONS");
        let mut calls = h.clone();
        calls.set(other("X-Understudy-Calls"), "0");
        let mut v = Verifier::new(b"k", 5000, false);
        assert_eq!(
            v.verify(&calls, &start, b"x", T),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.verify(&h, &start, b"y", T), Err(AuthError::BadSignature));
        assert_eq!(
            v.verify(&h, &start_of_response(200), b"x", T),
            Err(AuthError::BadSignature)
        );
        let mut added = h.clone();
        added.push(other("X-Understudy-Role"), "handover");
        assert_eq!(
            v.verify(&added, &start, b"x", T),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.verify(&h, &start, b"x", T), Ok(Verified::Fresh));
        let mut wrong = Verifier::new(b"other", 5000, false);
        assert_eq!(
            wrong.verify(&h, &start, b"x", T),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn stale_reordered_and_old_boot_messages() {
        let mut s = Signer::new(b"k", T);
        let start = start_of_request("OPTIONS");
        let first = msg(&mut s, T, b"");
        let second = msg(&mut s, T + 200, b"");
        let mut v = Verifier::new(b"k", 5000, false);
        // Reordered: the second first, then the first: both fresh.
        assert_eq!(v.verify(&second, &start, b"", T + 210), Ok(Verified::Fresh));
        assert_eq!(v.verify(&first, &start, b"", T + 220), Ok(Verified::Fresh));
        // Replayed later than the skew allows: stale.
        let third = msg(&mut s, T + 400, b"");
        assert!(matches!(
            v.verify(&third, &start, b"", T + 400 + 5001),
            Err(AuthError::Stale(_))
        ));
        // The peer restarted with its clock stepped back: its boot is lower, and accepted.
        let mut restarted = Signer::new(b"k", T - 60_000);
        let fresh = msg(&mut restarted, T + 1100, b"");
        assert_eq!(v.verify(&fresh, &start, b"", T + 1100), Ok(Verified::Fresh));
        assert_eq!(
            v.verify(&fresh, &start, b"", T + 1110),
            Err(AuthError::Replayed)
        );
        // A replay from the previous boot is still refused (its window is remembered).
        assert_eq!(
            v.verify(&second, &start, b"", T + 1150),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn the_window_forgets_what_is_too_old() {
        let mut seen = Seen::default();
        assert!(seen.accept(1, 100));
        for boot in 2..=BOOTS as u64 {
            assert!(seen.accept(boot, 1));
        }
        assert!(!seen.accept(1, 100), "boot 1 still remembered");
        assert!(seen.accept(BOOTS as u64 + 1, 1));
        let mut seen = Seen::default();
        assert!(seen.accept(1, 100));
        assert!(seen.accept(1, 100 + WINDOW));
        assert!(!seen.accept(1, 100), "fell out of the window");
        assert!(seen.accept(1, 110), "late but within the window");
        assert!(!seen.accept(1, 110), "seen");
        assert!(!seen.accept(1, 100 + WINDOW), "seen");
    }

    #[test]
    fn a_burst_on_the_stream_is_not_overtaken_by_datagrams() {
        let mut s = Signer::new(b"k", T);
        let mut v = Verifier::new(b"k", 5000, false);
        let start = start_of_request("NOTIFY");
        let burst: Vec<Headers> = (0..WINDOW * 4)
            .map(|i| {
                let mut h = Headers::new();
                h.push(HeaderName::CallId, "reg-1");
                h.push(HeaderName::CSeq, format!("{i} NOTIFY"));
                s.sign(&mut h, &start, b"", T, Channel::Stream);
                h
            })
            .collect();
        // Keep-alives signed after the burst arrive first (UDP overtakes the TCP queue).
        for _ in 0..WINDOW * 2 {
            let ka = msg(&mut s, T, b"");
            assert_eq!(
                v.verify(&ka, &start_of_request("OPTIONS"), b"", T),
                Ok(Verified::Fresh)
            );
        }
        for h in &burst {
            assert_eq!(v.verify(h, &start, b"", T), Ok(Verified::Fresh));
        }
        // Each sequence still refuses its replays, and the channel cannot be changed.
        let first = burst.first().cloned().unwrap_or_default();
        assert_eq!(v.verify(&first, &start, b"", T), Err(AuthError::Replayed));
        let mut moved = first;
        moved.retain(
            |x| !matches!(&x.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(CHANNEL)),
        );
        assert_eq!(
            v.verify(&moved, &start, b"", T),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn v1_peers_only_when_allowed() {
        let mut h = Headers::new();
        h.push(HeaderName::CallId, "ka-1");
        let start = start_of_request("OPTIONS");
        assert_eq!(
            Verifier::new(b"k", 5000, false).verify(&h, &start, b"", T),
            Err(AuthError::Unsigned)
        );
        assert_eq!(
            Verifier::new(b"k", 5000, true).verify(&h, &start, b"", T),
            Ok(Verified::Legacy)
        );
    }
}
