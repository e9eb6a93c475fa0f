//! The dialog digest on keep-alives (DESIGN "Second source"; the seed's "data indicative of
//! calls supported"): the active sends the identifiers of call legs opened and closed since
//! the last acknowledged keep-alive, as a sequence-numbered delta; the stand-by keeps them in
//! memory and acknowledges; after a gap or a stand-by restart the active sends the full list.
//! No SDP, state machine or timer crosses: only what is needed to re-INVITE a leg.
//!
//! Two body formats share the content type `application/x-understudy-digest`; the receiver
//! tells them apart by the first byte and reads both:
//! - **version 2** (JSON, self-describing): `{"version": 2, "generation": G, "first": S,
//!   "reset": false, "entries": [{"seq": S, "kind": "leg"|"ringing"|"gone", ...fields}]}`.
//!   Fields are named; a field a sender does not know is defaulted by the receiver, one the
//!   receiver does not know is ignored, and an entry of an unknown kind still takes its place
//!   in the sequence. A later version adds fields, not versions of this parser.
//! - **version 1** (wave 1, tab-separated, positional): `D <generation> <first-seq> <reset>`
//!   then `L`/`R`/`G` lines (leg, ringing, gone), `\\`, `\t` and `\n` escaped. Sent only to a
//!   peer that does not announce version 2 in [`VERSION_HEADER`] (a rolling upgrade).

use std::collections::VecDeque;

use crate::entropy::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::net::Proto;

/// Content type of a digest body.
pub const CONTENT_TYPE: &str = "application/x-understudy-digest";

/// The keep-alive header in which a node announces the highest digest version it reads
/// (absent: version 1 only).
pub const VERSION_HEADER: &str = "X-Understudy-Digest";

/// The digest version this build writes and reads (it reads version 1 too).
pub const VERSION: u32 = 2;

/// How a digest body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Version 1: positional tab-separated lines (what a wave-1 peer reads).
    #[default]
    Lines,
    /// Version 2: JSON with named fields.
    Json,
}

impl Format {
    /// The format for a peer that announced `version` (`None`: it announced nothing).
    pub fn for_peer(version: Option<u32>) -> Self {
        match version {
            Some(v) if v >= 2 => Self::Json,
            _ => Self::Lines,
        }
    }
}

/// One established leg, enough to re-INVITE it from another node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    #[serde(default)]
    pub route_set: Vec<String>,
    /// Highest CSeq we used.
    #[serde(default)]
    pub cseq: u32,
    /// Caller / callee for the CDR.
    #[serde(default)]
    pub party: String,
    /// Call start, unix ms.
    #[serde(default)]
    pub start_ms: u64,
    /// The Call-ID of the transferor's leg this leg's call replaced (CDR `transfer_of`);
    /// version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_of: Option<String>,
}

/// A call still ringing: what is needed to fail it cleanly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_early_tag: Option<String>,
    /// The callee's Contact in the early dialog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
            transfer_of: None,
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

/// A version-2 entry: its sequence number, its kind and its record's fields side by side.
#[derive(serde::Serialize)]
struct JsonEntry<'a> {
    seq: u64,
    #[serde(flatten)]
    entry: JsonKind<'a>,
}

#[derive(serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum JsonKind<'a> {
    Leg(&'a LegRecord),
    Ringing(&'a RingRecord),
    Gone { token: u64 },
}

/// One entry as a version-2 JSON object.
fn json_entry(seq: u64, e: &Entry) -> String {
    let entry = match e {
        Entry::Leg(l) => JsonKind::Leg(l),
        Entry::Ringing(r) => JsonKind::Ringing(r),
        Entry::Gone(t) => JsonKind::Gone { token: *t },
    };
    serde_json::to_string(&JsonEntry { seq, entry }).unwrap_or_default()
}

/// A version-2 body as read: what the header says, then the entries in order.
#[derive(serde::Deserialize)]
struct JsonBody {
    version: u32,
    generation: u64,
    first: u64,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    entries: Vec<serde_json::Value>,
}

/// A version-2 entry: `Ok(None)` for a kind this build does not know (it keeps its place in
/// the sequence and changes nothing), `Err` for one it cannot read.
fn parse_json_entry(v: serde_json::Value) -> Result<(u64, Option<Entry>), ()> {
    let seq = v.get("seq").and_then(serde_json::Value::as_u64).ok_or(())?;
    let kind = v
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .ok_or(())?;
    let entry = match kind {
        "leg" => Some(Entry::Leg(Box::new(
            serde_json::from_value(v).map_err(|_| ())?,
        ))),
        "ringing" => Some(Entry::Ringing(Box::new(
            serde_json::from_value(v).map_err(|_| ())?,
        ))),
        "gone" => Some(Entry::Gone(
            v.get("token")
                .and_then(serde_json::Value::as_u64)
                .ok_or(())?,
        )),
        _ => None,
    };
    Ok((seq, entry))
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
    /// How bodies are written (the peer's version decides).
    format: Format,
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
            format: Format::default(),
        }
    }

    /// Write further bodies in `format` (the peer announced which versions it reads).
    pub fn set_format(&mut self, format: Format) {
        self.format = format;
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
        // Pending entries carry consecutive sequence numbers from the front's: counted, not
        // walked (this is asked on every call event while active).
        let Some((first, _)) = self.pending.front() else {
            return 0;
        };
        usize::try_from(self.unsent_from.saturating_sub(*first))
            .unwrap_or(usize::MAX)
            .min(self.pending.len())
    }

    /// The highest sequence number the stand-by acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
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
        let mut it = self
            .pending
            .range(skip.min(self.pending.len())..)
            .peekable();
        let first = it.peek()?.0;
        let reset = self.reset_from == Some(first);
        let json = self.format == Format::Json;
        let (mut body, close) = if json {
            let head = format!(
                "{{\"version\":{VERSION},\"generation\":{},\"first\":{first},\"reset\":{reset},\"entries\":[",
                self.generation
            );
            (head, "]}\n")
        } else {
            let head = format!("D\t{}\t{first}\t{}\n", self.generation, u8::from(reset));
            (head, "")
        };
        let mut n = 0;
        for (seq, e) in it {
            let item = if json {
                let sep = if n > 0 { "," } else { "" };
                format!("{sep}{}", json_entry(*seq, e))
            } else {
                line(*seq, e)
            };
            if n > 0 && body.len() + item.len() + close.len() > limit {
                break;
            }
            body.push_str(&item);
            n += 1;
            self.unsent_from = self.unsent_from.max(seq.saturating_add(1));
        }
        body.push_str(close);
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

    /// Apply a body (either version); returns the acknowledgement to send.
    pub fn apply(&mut self, body: &str) -> Ack {
        if body.trim_start().starts_with('{') {
            return self.apply_json(body);
        }
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
        if !self.start(g, first, reset) {
            return Ack::Resync;
        }
        for l in lines {
            let Some((seq, e)) = parse_line(l) else {
                return Ack::Resync;
            };
            if !self.apply_entry(seq, Some(e)) {
                return Ack::Resync;
            }
        }
        self.ack()
    }

    /// A version-2 body. A version above ours is read the same way: what it added is
    /// ignored.
    fn apply_json(&mut self, body: &str) -> Ack {
        let Ok(b) = serde_json::from_str::<JsonBody>(body) else {
            return Ack::Resync;
        };
        if b.version < 2 || !self.start(b.generation, b.first, b.reset) {
            return Ack::Resync;
        }
        for v in b.entries {
            let Ok((seq, e)) = parse_json_entry(v) else {
                return Ack::Resync;
            };
            if !self.apply_entry(seq, e) {
                return Ack::Resync;
            }
        }
        self.ack()
    }

    /// A body's head: a reset starts the table afresh; otherwise the body must continue the
    /// generation we follow without a gap (`false`: ask for the full list).
    fn start(&mut self, generation: u64, first: u64, reset: bool) -> bool {
        if reset {
            self.generation = generation;
            self.calls.clear();
            self.next = first;
            true
        } else {
            generation == self.generation && first <= self.next
        }
    }

    /// One entry in sequence (`None`: an entry of a kind we do not know, which only takes
    /// its place). `false` on a gap.
    fn apply_entry(&mut self, seq: u64, e: Option<Entry>) -> bool {
        if seq < self.next {
            return true; // already applied (a chunk sent twice)
        }
        if seq > self.next {
            return false;
        }
        let Some(next) = seq.checked_add(1) else {
            return false;
        };
        self.next = next;
        let Some(e) = e else {
            return true;
        };
        let token = e.token();
        if !matches!(e, Entry::Gone(_))
            && !self.calls.contains_key(&token)
            && self.calls.len() >= self.limit()
        {
            self.dropped += 1;
            return true;
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
        true
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
