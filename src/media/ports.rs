//! The RTP/RTCP port pool (`[media] rtp_ports`): even RTP ports with RTCP on the next one.

use std::collections::VecDeque;

/// A pool of port pairs.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    total: usize,
}

impl PortPool {
    /// Pairs from `lo` to `hi` (inclusive), RTP on even ports.
    pub fn new(lo: u16, hi: u16) -> Self {
        let start = lo + (lo % 2);
        let free: VecDeque<u16> = (start..hi).step_by(2).filter(|p| *p < hi).collect();
        Self {
            total: free.len(),
            free,
        }
    }

    /// Take a pair (its RTP port), `None` when exhausted.
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Give a pair back; it is reused last (stray late packets find nobody).
    pub fn give(&mut self, rtp: u16) {
        self.free.push_back(rtp);
    }

    /// Free pairs.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// All pairs.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_pairs_and_exhaustion() {
        let mut p = PortPool::new(20001, 20006);
        assert_eq!(p.total(), 2, "20002/3 and 20004/5; 20006 has no RTCP port");
        assert_eq!(p.take(), Some(20002));
        assert_eq!(p.take(), Some(20004));
        assert_eq!(p.take(), None);
        p.give(20002);
        assert_eq!(p.available(), 1);
        assert_eq!(p.take(), Some(20002));
    }
}
