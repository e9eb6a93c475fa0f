//! The dialog digest on keep-alives (DESIGN "Second source"; the seed's "data indicative of
//! calls supported"): the active sends the identifiers of call legs opened and closed since
//! the last acknowledged keep-alive, as a sequence-numbered delta; the stand-by keeps them in
//! memory and acknowledges; after a gap or a stand-by restart the active sends the full list.
//! No SDP, state machine or timer crosses: only what is needed to re-INVITE a leg.
//!
//! Body format (`application/x-understudy-digest`), one entry per line, tab-separated,
//! with `\\`, `\t` and `\n` escaped:
//! `D <generation> <first-seq> <reset 0|1>` then `L`/`R`/`G` lines (leg, ringing, gone).

use std::collections::VecDeque;

use crate::entropy::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::net::Proto;

/// Content type of a digest body.
pub const CONTENT_TYPE: &str = "application/x-understudy-digest";

/// One established leg, enough to re-INVITE it from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegRecord {
    /// Call token.
    pub token: u64,
    /// `true` for leg A (caller side).
    pub is_a: bool,
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The endpoint's tag.
    pub remote_tag: String,
    /// Our URI in the dialog.
    pub local_uri: String,
    /// The endpoint's URI.
    pub remote_uri: String,
    /// Remote target (Contact).
    pub remote_target: String,
    /// Transport.
    pub proto: Proto,
    /// Remote address.
    pub remote: SocketAddr,
    /// Route set.
    pub route_set: Vec<String>,
    /// Highest CSeq we used.
    pub cseq: u32,
    /// Caller / callee for the CDR.
    pub party: String,
    /// Call start, unix ms.
    pub start_ms: u64,
}

/// A call still ringing: what is needed to fail it cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRecord {
    /// Call token.
    pub token: u64,
    /// The caller's INVITE: Via values, top first.
    pub a_vias: Vec<String>,
    /// The caller's From (with tag).
    pub a_from: String,
    /// The caller's To (without tag).
    pub a_to: String,
    /// Call-ID of the A leg.
    pub a_call_id: String,
    /// CSeq number of the caller's INVITE.
    pub a_cseq: u32,
    /// Where the caller is.
    pub a_proto: Proto,
    /// Caller address.
    pub a_remote: SocketAddr,
    /// The B INVITE: top Via, Request-URI, From, To, Call-ID, CSeq number, destination.
    pub b_via: String,
    /// B Request-URI.
    pub b_uri: String,
    /// B From (with our tag).
    pub b_from: String,
    /// B To (without tag).
    pub b_to: String,
    /// B Call-ID.
    pub b_call_id: String,
    /// B CSeq.
    pub b_cseq: u32,
    /// B transport.
    pub b_proto: Proto,
    /// B address.
    pub b_remote: SocketAddr,
    /// The callee's tag when an early dialog exists.
    pub b_early_tag: Option<String>,
    /// The callee's Contact in the early dialog.
    pub b_early_target: Option<String>,
}

/// One digest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A leg is established (or changed).
    Leg(Box<LegRecord>),
    /// A call is ringing.
    Ringing(Box<RingRecord>),
    /// A call ended.
    Gone(u64),
}

impl Entry {
    /// The call token.
    pub fn token(&self) -> u64 {
        match self {
            Self::Leg(l) => l.token,
            Self::Ringing(r) => r.token,
            Self::Gone(t) => *t,
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "")
}

fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn proto(s: &str) -> Option<Proto> {
    Proto::from_token(s)
}

/// Serialize one entry with its sequence number.
fn line(seq: u64, e: &Entry) -> String {
    match e {
        Entry::Gone(t) => format!("G\t{seq}\t{t:016x}\n"),
        Entry::Leg(l) => format!(
            "L\t{seq}\t{:016x}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            l.token,
            if l.is_a { "a" } else { "b" },
            esc(&l.call_id),
            esc(&l.local_tag),
            esc(&l.remote_tag),
            esc(&l.local_uri),
            esc(&l.remote_uri),
            esc(&l.remote_target),
            l.proto,
            l.remote,
            esc(&l.route_set.join("\u{1}")),
            l.cseq,
            esc(&l.party),
            l.start_ms,
        ),
        Entry::Ringing(r) => format!(
            "R\t{seq}\t{:016x}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.token,
            esc(&r.a_vias.join("\u{1}")),
            esc(&r.a_from),
            esc(&r.a_to),
            esc(&r.a_call_id),
            r.a_cseq,
            r.a_proto,
            r.a_remote,
            esc(&r.b_via),
            esc(&r.b_uri),
            esc(&r.b_from),
            esc(&r.b_to),
            esc(&r.b_call_id),
            r.b_cseq,
            r.b_proto,
            r.b_remote,
            esc(r.b_early_tag.as_deref().unwrap_or("")),
            esc(r.b_early_target.as_deref().unwrap_or("")),
        ),
    }
}

fn parse_line(l: &str) -> Option<(u64, Entry)> {
    let f: Vec<&str> = l.split('\t').collect();
    let seq: u64 = f.get(1)?.parse().ok()?;
    let token = u64::from_str_radix(f.get(2)?, 16).ok()?;
    let list = |s: &str| -> Vec<String> {
        let s = unesc(s);
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('\u{1}').map(str::to_string).collect()
        }
    };
    let opt = |s: &str| -> Option<String> {
        let s = unesc(s);
        (!s.is_empty()).then_some(s)
    };
    let e = match *f.as_slice() {
        ["G", ..] => Entry::Gone(token),
        [
            "L",
            _,
            _,
            side,
            call_id,
            local_tag,
            remote_tag,
            local_uri,
            remote_uri,
            remote_target,
            transport,
            remote,
            route_set,
            cseq,
            party,
            start_ms,
        ] => Entry::Leg(Box::new(LegRecord {
            token,
            is_a: side == "a",
            call_id: unesc(call_id),
            local_tag: unesc(local_tag),
            remote_tag: unesc(remote_tag),
            local_uri: unesc(local_uri),
            remote_uri: unesc(remote_uri),
            remote_target: unesc(remote_target),
            proto: proto(transport)?,
            remote: remote.parse().ok()?,
            route_set: list(route_set),
            cseq: cseq.parse().ok()?,
            party: unesc(party),
            start_ms: start_ms.parse().ok()?,
        })),
        [
            "R",
            _,
            _,
            a_vias,
            a_from,
            a_to,
            a_call_id,
            a_cseq,
            a_proto,
            a_remote,
            b_via,
            b_uri,
            b_from,
            b_to,
            b_call_id,
            b_cseq,
            b_proto,
            b_remote,
            b_early_tag,
            b_early_target,
        ] => Entry::Ringing(Box::new(RingRecord {
            token,
            a_vias: list(a_vias),
            a_from: unesc(a_from),
            a_to: unesc(a_to),
            a_call_id: unesc(a_call_id),
            a_cseq: a_cseq.parse().ok()?,
            a_proto: proto(a_proto)?,
            a_remote: a_remote.parse().ok()?,
            b_via: unesc(b_via),
            b_uri: unesc(b_uri),
            b_from: unesc(b_from),
            b_to: unesc(b_to),
            b_call_id: unesc(b_call_id),
            b_cseq: b_cseq.parse().ok()?,
            b_proto: proto(b_proto)?,
            b_remote: b_remote.parse().ok()?,
            b_early_tag: opt(b_early_tag),
            b_early_target: opt(b_early_target),
        })),
        _ => return None,
    };
    Some((seq, e))
}

/// The active's side: entries not yet acknowledged.
#[derive(Debug)]
pub struct DigestLog {
    generation: u64,
    next_seq: u64,
    acked: u64,
    pending: VecDeque<(u64, Entry)>,
    reset_from: Option<u64>,
    /// The first sequence number never sent.
    unsent_from: u64,
    /// Bytes sent, for the benchmark's link figures.
    pub bytes_sent: u64,
}

impl Default for DigestLog {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestLog {
    /// A log with a fresh random generation.
    pub fn new() -> Self {
        Self {
            generation: crate::entropy::random::<u64>() >> 1,
            next_seq: 1,
            acked: 0,
            pending: VecDeque::new(),
            reset_from: None,
            unsent_from: 1,
            bytes_sent: 0,
        }
    }

    /// Record an entry.
    pub fn push(&mut self, e: Entry) {
        // Entries keep their place even when a later one makes them moot (a call that ends
        // while its ringing entry is unsent): the stand-by reads any gap in the sequence as
        // loss and asks for the full list.
        self.pending.push_back((self.next_seq, e));
        self.next_seq += 1;
    }

    /// Entries not yet acknowledged.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    /// How many of the pending entries were sent at least once (they come first).
    pub fn sent(&self) -> usize {
        self.pending
            .iter()
            .take_while(|(s, _)| *s < self.unsent_from)
            .count()
    }

    /// The stand-by acknowledged everything up to `seq` of `generation`.
    pub fn on_ack(&mut self, generation: u64, seq: u64) {
        if generation != self.generation || seq < self.acked {
            return;
        }
        self.acked = seq;
        while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
            self.pending.pop_front();
        }
        if self.reset_from.is_some_and(|r| r <= seq) {
            self.reset_from = None;
        }
    }

    /// The stand-by lost track: send the full list from `snapshot` (the current calls).
    pub fn resync(&mut self, snapshot: Vec<Entry>) {
        self.pending.clear();
        self.reset_from = Some(self.next_seq);
        for e in snapshot {
            self.pending.push_back((self.next_seq, e));
            self.next_seq += 1;
        }
        if self.pending.is_empty() {
            // An empty full list still has to reach the stand-by.
            self.pending.push_back((self.next_seq, Entry::Gone(0)));
            self.next_seq += 1;
        }
    }

    /// The next body to send (at most about `limit` bytes, always at least one entry), or
    /// `None` when nothing is pending. `skip` entries already sent in this tick are skipped.
    pub fn chunk(&mut self, limit: usize, skip: usize) -> Option<(String, usize)> {
        let mut it = self.pending.iter().skip(skip).peekable();
        let first = it.peek()?.0;
        let reset = self.reset_from == Some(first);
        let mut body = format!("D\t{}\t{first}\t{}\n", self.generation, u8::from(reset));
        let mut n = 0;
        for (seq, e) in it {
            let l = line(*seq, e);
            if n > 0 && body.len() + l.len() > limit {
                break;
            }
            body.push_str(&l);
            n += 1;
            self.unsent_from = self.unsent_from.max(seq.saturating_add(1));
        }
        self.bytes_sent += body.len() as u64;
        Some((body, n))
    }
}

/// One call as the stand-by knows it from the digest.
#[derive(Debug, Clone, Default)]
pub struct DigestCall {
    /// Leg A.
    pub a: Option<LegRecord>,
    /// Leg B.
    pub b: Option<LegRecord>,
    /// Still ringing.
    pub ringing: Option<RingRecord>,
}

/// Calls the stand-by's digest table holds at most (an active node holds at most
/// `calls.max_calls`, 100,000 by default); entries for further calls are dropped and counted.
pub const MAX_DIGEST_CALLS: usize = 1_000_000;

/// The stand-by's side: the calls of the active, in memory only.
#[derive(Debug, Default)]
pub struct DigestTable {
    generation: u64,
    next: u64,
    calls: HashMap<u64, DigestCall>,
    /// Entries dropped because the table held its limit ([`MAX_DIGEST_CALLS`]).
    pub dropped: u64,
    /// The limit; 0 means [`MAX_DIGEST_CALLS`].
    limit: usize,
}

/// What the stand-by answers to a digest body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Everything up to this sequence of this generation is applied.
    Upto(u64, u64),
    /// A gap or an unknown generation: send the full list.
    Resync,
}

impl Ack {
    /// Header value.
    pub fn to_header(self) -> String {
        match self {
            Self::Upto(g, s) => format!("{g}:{s}"),
            Self::Resync => "resync".into(),
        }
    }

    /// Parse a header value.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "resync" {
            return Some(Self::Resync);
        }
        let (g, q) = s.split_once(':')?;
        Some(Self::Upto(g.parse().ok()?, q.parse().ok()?))
    }
}

impl DigestTable {
    /// A table holding at most `limit` calls.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    fn limit(&self) -> usize {
        if self.limit == 0 {
            MAX_DIGEST_CALLS
        } else {
            self.limit
        }
    }

    /// Calls known.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no calls are known.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Apply a body; returns the acknowledgement to send.
    pub fn apply(&mut self, body: &str) -> Ack {
        let mut lines = body.lines();
        let Some(head) = lines.next() else {
            return self.ack();
        };
        let h: Vec<&str> = head.split('\t').collect();
        let (Some(g), Some(first), Some(reset)) = (
            h.get(1).and_then(|v| v.parse::<u64>().ok()),
            h.get(2).and_then(|v| v.parse::<u64>().ok()),
            h.get(3).map(|v| *v == "1"),
        ) else {
            return Ack::Resync;
        };
        if reset {
            self.generation = g;
            self.calls.clear();
            self.next = first;
        } else if g != self.generation || first > self.next {
            return Ack::Resync;
        }
        for l in lines {
            let Some((seq, e)) = parse_line(l) else {
                return Ack::Resync;
            };
            if seq < self.next {
                continue; // already applied (a chunk sent twice)
            }
            if seq > self.next {
                return Ack::Resync;
            }
            let Some(next) = seq.checked_add(1) else {
                return Ack::Resync;
            };
            self.next = next;
            let token = e.token();
            if !matches!(e, Entry::Gone(_))
                && !self.calls.contains_key(&token)
                && self.calls.len() >= self.limit()
            {
                self.dropped += 1;
                continue;
            }
            match e {
                Entry::Gone(t) => {
                    self.calls.remove(&t);
                }
                Entry::Leg(l) => {
                    let c = self.calls.entry(l.token).or_default();
                    c.ringing = None;
                    if l.is_a {
                        c.a = Some(*l);
                    } else {
                        c.b = Some(*l);
                    }
                }
                Entry::Ringing(r) => {
                    let token = r.token;
                    self.calls.entry(token).or_default().ringing = Some(*r);
                }
            }
        }
        self.ack()
    }

    fn ack(&self) -> Ack {
        if self.generation == 0 {
            Ack::Resync
        } else {
            Ack::Upto(self.generation, self.next.saturating_sub(1))
        }
    }

    /// The current acknowledgement (for keep-alives the stand-by sends on its own).
    pub fn current_ack(&self) -> Ack {
        self.ack()
    }

    /// Take the calls whose both legs (or ringing record) are known, keeping the sequence:
    /// later chunks of the same list still apply.
    pub fn drain_complete(&mut self) -> HashMap<u64, DigestCall> {
        let done: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| (c.a.is_some() && c.b.is_some()) || c.ringing.is_some())
            .map(|(t, _)| *t)
            .collect();
        done.into_iter()
            .filter_map(|t| self.calls.remove(&t).map(|c| (t, c)))
            .collect()
    }

    /// Take every call (at takeover).
    pub fn take(&mut self) -> HashMap<u64, DigestCall> {
        self.generation = 0;
        self.next = 0;
        std::mem::take(&mut self.calls)
    }
}

/// A compact text summary for logs.
pub fn summary(t: &DigestTable) -> String {
    let mut s = String::new();
    let _ = write!(s, "{} calls", t.len());
    s
}

#[cfg(test)]
#[path = "digest_tests.rs"]
mod tests;
