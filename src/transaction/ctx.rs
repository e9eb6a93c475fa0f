//! What a transaction state machine may do while handling an input: send bytes, arm and
//! disarm its timers. The layer owns the queues; the machine only sees this handle.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{Timer, Timers};
use crate::net::{Flow, Transmit};

/// Which transaction a scheduled timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TxRef {
    Client(u64),
    Server(u64),
}

/// One scheduled timer expiry. Stale entries (disarmed or re-armed) are skipped when popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Scheduled {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
    pub(crate) tx: TxRef,
    pub(crate) timer: TimerIdx,
}

/// A timer as an index into [`Slots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerIdx(pub(crate) u8);

impl TimerIdx {
    pub(crate) fn of(t: Timer) -> Self {
        Self(t as u8)
    }
}

/// Which scheduled entry each timer of one transaction is armed with (the low 32 bits of its
/// sequence number; 0 = disarmed). Compact on purpose: there is one per transaction.
#[derive(Debug, Default, Clone)]
pub(crate) struct Slots([u32; 13]);

impl Slots {
    pub(crate) fn is_current(&self, idx: TimerIdx, seq: u64) -> bool {
        self.0.get(idx.0 as usize).copied() == Some(seq_tag(seq))
    }

    pub(crate) fn clear(&mut self, idx: TimerIdx) {
        if let Some(s) = self.0.get_mut(idx.0 as usize) {
            *s = 0;
        }
    }
}

/// The 32-bit tag of a schedule sequence number, never 0 (0 marks a disarmed slot).
fn seq_tag(seq: u64) -> u32 {
    (seq as u32).max(1)
}

/// The effect handle passed to a transaction state machine.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Instant,
    pub(crate) timers: Timers,
    pub(crate) flow: Flow,
    pub(crate) tx: TxRef,
    pub(crate) slots: &'a mut Slots,
    pub(crate) heap: &'a mut BinaryHeap<Reverse<Scheduled>>,
    pub(crate) seq: &'a mut u64,
    pub(crate) transmits: &'a mut VecDeque<Transmit>,
}

impl Ctx<'_> {
    /// Queue bytes for the transaction's flow.
    pub(crate) fn send(&mut self, bytes: Bytes) {
        self.transmits.push_back(Transmit {
            flow: self.flow,
            bytes,
        });
    }

    /// Arm (or re-arm) a timer to fire `after` from now.
    pub(crate) fn arm(&mut self, t: Timer, after: Duration) {
        let at = self.now + after;
        let idx = TimerIdx::of(t);
        *self.seq += 1;
        if let Some(s) = self.slots.0.get_mut(idx.0 as usize) {
            *s = seq_tag(*self.seq);
        }
        self.heap.push(Reverse(Scheduled {
            at,
            seq: *self.seq,
            tx: self.tx,
            timer: idx,
        }));
    }

    /// Disarm a timer.
    pub(crate) fn disarm(&mut self, t: Timer) {
        self.slots.clear(TimerIdx::of(t));
    }

    /// Whether the transaction runs over an unreliable transport.
    pub(crate) fn unreliable(&self) -> bool {
        !self.flow.proto.is_reliable()
    }
}
