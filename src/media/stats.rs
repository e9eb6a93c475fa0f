//! Per-direction RTP stream statistics (RFC 3550 §6.4.1, Appendix A.1/A.8): packets, bytes,
//! loss from sequence gaps, interarrival jitter, time of the last packet.

/// One direction of one leg.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StreamStats {
    /// Packets relayed.
    pub packets: u64,
    /// Payload bytes relayed.
    pub bytes: u64,
    /// Packets missing by sequence number.
    pub lost: u64,
    /// Interarrival jitter in milliseconds.
    pub jitter_ms: f64,
    /// Milliseconds since the relay started when the last packet arrived.
    pub last_ms: u64,
    /// Packets dropped because they came from a source the leg is not latched to.
    pub foreign: u64,
    #[serde(skip)]
    base_seq: u32,
    #[serde(skip)]
    max_seq: u32,
    #[serde(skip)]
    cycles: u32,
    #[serde(skip)]
    transit: Option<i64>,
    #[serde(skip)]
    jitter: f64,
    /// Packets expected and received before the last sequence restart.
    #[serde(skip)]
    prior: (u64, u64),
}

/// RFC 3550 A.1: a forward jump larger than this restarts the sequence (a new source or a
/// sender that looped), it is not counted as loss.
const MAX_DROPOUT: u32 = 3000;
/// ... and so does a backward jump larger than this.
const MAX_MISORDER: u32 = 100;

impl StreamStats {
    /// Account for an RTP packet (`arrival_ms` on any monotonic millisecond clock, `clock`
    /// the RTP clock rate).
    pub fn on_packet(&mut self, seq: u16, ts: u32, len: usize, arrival_ms: f64, clock: u32) {
        let seq = u32::from(seq);
        if self.packets == 0 {
            self.base_seq = seq;
            self.max_seq = seq;
        } else {
            let max16 = self.max_seq & 0xffff;
            let delta = seq.wrapping_sub(max16) & 0xffff;
            if delta > 0 && delta < MAX_DROPOUT {
                if seq < max16 {
                    // Modulo 2^32 like the RFC's counters: the sender picks the numbers.
                    self.cycles = self.cycles.wrapping_add(1);
                }
                self.max_seq = (self.cycles << 16) | seq;
            } else if (MAX_DROPOUT..=0xffff - MAX_MISORDER).contains(&delta) {
                // Restart: what came before is settled, counting starts again here.
                let expected = u64::from(self.max_seq.wrapping_sub(self.base_seq)) + 1;
                let received = self.packets - self.prior.1;
                self.prior = (self.prior.0 + expected, self.prior.1 + received);
                self.cycles = 0;
                self.base_seq = seq;
                self.max_seq = seq;
                self.transit = None;
            }
        }
        self.packets += 1;
        self.bytes += len as u64;
        let expected = self.prior.0 + u64::from(self.max_seq.wrapping_sub(self.base_seq)) + 1;
        self.lost = expected.saturating_sub(self.packets);
        // RFC 3550 A.8: J += (|D| - J) / 16, in timestamp units.
        let arrival_ts = (arrival_ms * f64::from(clock) / 1000.0) as i64;
        let transit = arrival_ts - i64::from(ts);
        if let Some(prev) = self.transit {
            let d = (transit - prev).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
            self.jitter_ms = self.jitter * 1000.0 / f64::from(clock);
        }
        self.transit = Some(transit);
        self.last_ms = arrival_ms as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_and_jitter() {
        let mut s = StreamStats::default();
        // 50 packets at 20 ms, timestamps 160 apart, two missing, perfectly regular arrival.
        for i in 0u16..52 {
            if i == 10 || i == 30 {
                continue;
            }
            s.on_packet(i, u32::from(i) * 160, 172, f64::from(i) * 20.0, 8000);
        }
        assert_eq!(s.packets, 50);
        assert_eq!(s.lost, 2);
        assert!(s.jitter_ms < 0.01);
        // sequence wrap
        let mut w = StreamStats::default();
        for i in 0..10u32 {
            let seq = (65530 + i) as u16;
            w.on_packet(seq, i * 160, 172, f64::from(i) * 20.0, 8000);
        }
        assert_eq!(w.lost, 0);
        // jittery arrival
        let mut j = StreamStats::default();
        for i in 0u16..100 {
            let jitter = if i % 2 == 0 { 0.0 } else { 10.0 };
            j.on_packet(
                i,
                u32::from(i) * 160,
                172,
                f64::from(i) * 20.0 + jitter,
                8000,
            );
        }
        assert!(j.jitter_ms > 5.0, "{}", j.jitter_ms);
        // a sender that loops its recording (sequence restarts far back) is not loss
        let mut l = StreamStats::default();
        for round in 0..3u32 {
            for i in 0..236u32 {
                let n = round * 236 + i;
                l.on_packet((59133 + i) as u16, i * 240, 240, f64::from(n) * 30.0, 8000);
            }
        }
        assert_eq!(l.packets, 708);
        assert_eq!(l.lost, 0);
    }
}
