//! Transaction timers (RFC 3261 §17, Table 4; RFC 6026 §8 for L and M).

use std::time::Duration;

use crate::net::Proto;

/// RFC 3261 base timer values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// T1: RTT estimate (default 500 ms).
    pub t1: Duration,
    /// T2: maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// T4: maximum time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The timers of RFC 3261 §17 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Timer A: INVITE request retransmit interval, starts at T1, doubles (UDP only; §17.1.1.2).
    A,
    /// Timer B: INVITE transaction timeout, 64·T1 (§17.1.1.2).
    B,
    /// Timer D: wait time for response retransmits, ≥ 32 s for UDP, 0 for TCP (§17.1.1.2).
    D,
    /// Timer E: non-INVITE request retransmit interval, T1 doubling to T2 (UDP only; §17.1.2.2).
    E,
    /// Timer F: non-INVITE transaction timeout, 64·T1 (§17.1.2.2).
    F,
    /// Timer G: INVITE final response retransmit interval, T1 doubling to T2 (UDP; §17.2.1).
    G,
    /// Timer H: wait time for ACK receipt, 64·T1 (§17.2.1).
    H,
    /// Timer I: wait time for ACK retransmits, T4 for UDP, 0 for TCP (§17.2.1).
    I,
    /// Timer J: wait time for non-INVITE request retransmits, 64·T1 UDP, 0 TCP (§17.2.2).
    J,
    /// Timer K: wait time for response retransmits, T4 UDP, 0 TCP (§17.1.2.2).
    K,
    /// Timer L: wait time for accepted INVITE request retransmits, 64·T1 (RFC 6026 §8.7).
    L,
    /// Timer M: wait time for retransmission of 2xx to INVITE, 64·T1 (RFC 6026 §8.4).
    M,
    /// 2xx retransmission by the UAS core, T1 doubling to T2 until ACK (RFC 3261 §13.3.1.4).
    Retransmit2xx,
}

impl Timers {
    /// 64·T1.
    pub fn t64(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D for a transport.
    pub fn d(&self, proto: Proto) -> Duration {
        if proto.is_reliable() {
            Duration::ZERO
        } else {
            Duration::from_secs(32).max(self.t64() / 2)
        }
    }

    /// Timers I and K for a transport.
    pub fn t4_or_zero(&self, proto: Proto) -> Duration {
        if proto.is_reliable() {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J for a transport.
    pub fn j(&self, proto: Proto) -> Duration {
        if proto.is_reliable() {
            Duration::ZERO
        } else {
            self.t64()
        }
    }
}
