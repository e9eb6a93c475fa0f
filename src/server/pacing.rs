//! Re-bind pacing at takeover: re-INVITEs go to each destination (a trunk, a phone's address)
//! in an adaptive window, so that a takeover under load never overwhelms the endpoints it is
//! saving (stock socket buffers drop a burst; a carrier answers one with 503 or silence).
//!
//! Per destination, a window of re-binds in flight starts at [`START`] and grows while
//! re-binds are answered promptly (both legs within [`prompt`] of the start: no
//! retransmission was needed) — by one per prompt answer up to [`QUICK`] (or the first sign of
//! congestion), by one per window's worth after it — up to [`MAX`]; it halves when a re-bind was slow,
//! refused with 503 or timed out. New re-binds start as earlier ones end (the answers clock
//! them), so an endpoint never gets more than two at once past the first few, however many
//! calls it has.
//! A call occupies a place at both its legs' destinations until its re-bind ends. A trunk
//! with `max_cps` also gets at most that many re-binds started per second. Sans-IO: the clock
//! is an argument.

use crate::entropy::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Initial window per destination.
pub(crate) const START: f64 = 4.0;
/// Up to this window, it grows by one per prompt answer (then by one per window's worth).
pub(crate) const QUICK: f64 = 16.0;

/// Largest window per destination (re-binds in flight; they arrive clocked by the answers,
/// not in one burst).
pub(crate) const MAX: f64 = 64.0;

/// How long a re-bind may take and still count as prompt: two round trips (leg A, then leg
/// B) without a retransmission, i.e. under 2 × T1.
pub(crate) fn prompt(t1: Duration) -> Duration {
    t1 * 2
}

#[derive(Debug, Clone)]
struct Dest {
    window: f64,
    /// Below it the window grows by one per prompt answer; above, by one per window.
    threshold: f64,
    in_flight: usize,
    /// When the window last halved: re-binds that were already under way then do not halve
    /// it again (one reaction per window's worth, as TCP reacts once per round trip; else a
    /// burst of slow answers from one busy moment collapses the window to 1).
    halved_at: Option<Instant>,
    /// `max_cps` token bucket: tokens and when they were last refilled.
    bucket: Option<(f64, f64, Instant)>,
}

impl Dest {
    fn new(cps: Option<u32>, now: Instant) -> Self {
        Self {
            window: START,
            threshold: QUICK,
            in_flight: 0,
            halved_at: None,
            bucket: cps.map(|c| (f64::from(c), f64::from(c), now)),
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some((tokens, rate, at)) = self.bucket.as_mut() {
            let dt = now.saturating_duration_since(*at).as_secs_f64();
            *tokens = (*tokens + dt * *rate).min(rate.max(1.0));
            *at = now;
        }
    }

    fn room(&self) -> bool {
        (self.in_flight as f64) < self.window.floor().max(1.0)
            && self.bucket.is_none_or(|(t, _, _)| t >= 1.0)
    }
}

/// How a paced re-bind ended, for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answered promptly: the window grows.
    Prompt,
    /// Slow, refused with 503, or timed out: the window halves.
    Congested,
}

/// The pacer of one takeover.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    dests: HashMap<SocketAddr, Dest>,
    /// Re-binds in flight: their destinations and when they started.
    running: HashMap<u64, ([SocketAddr; 2], Instant)>,
    /// `max_cps` per trunk address.
    caps: Vec<(crate::config::TrunkAddress, u32)>,
}

impl Pacer {
    /// A pacer honouring `max_cps` for these trunk addresses.
    pub(crate) fn new(caps: Vec<(crate::config::TrunkAddress, u32)>) -> Self {
        Self {
            caps,
            ..Self::default()
        }
    }

    fn dest(&mut self, addr: SocketAddr, now: Instant) -> &mut Dest {
        let cps = self
            .caps
            .iter()
            .find(|(t, _)| t.matches(addr))
            .map(|(_, c)| *c);
        self.dests
            .entry(addr)
            .or_insert_with(|| Dest::new(cps, now))
    }

    /// Whether a re-bind to `dests` may start now; if so it is counted as started.
    pub(crate) fn admit(&mut self, now: Instant, token: u64, dests: [SocketAddr; 2]) -> bool {
        for d in dests {
            let dest = self.dest(d, now);
            dest.refill(now);
            if !dest.room() {
                return false;
            }
        }
        let [a, b] = dests;
        let same = a == b;
        for d in if same { vec![a] } else { vec![a, b] } {
            let dest = self.dest(d, now);
            dest.in_flight += 1;
            if let Some((tokens, _, _)) = dest.bucket.as_mut() {
                *tokens -= 1.0;
            }
        }
        self.running.insert(token, (dests, now));
        true
    }

    /// Re-binds admitted and not yet finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// How long the re-bind of `token` has run.
    pub(crate) fn elapsed(&self, now: Instant, token: u64) -> Option<Duration> {
        self.running
            .get(&token)
            .map(|(_, t)| now.saturating_duration_since(*t))
    }

    /// The re-bind of `token` ended at `now` (or stepped back to wait): free its places and
    /// adapt.
    pub(crate) fn finished(&mut self, now: Instant, token: u64, verdict: Verdict) {
        let Some(([a, b], started)) = self.running.remove(&token) else {
            return;
        };
        let dests = if a == b { vec![a] } else { vec![a, b] };
        for d in dests {
            if let Some(dest) = self.dests.get_mut(&d) {
                dest.in_flight = dest.in_flight.saturating_sub(1);
                match verdict {
                    Verdict::Prompt if dest.window < dest.threshold => {
                        dest.window = (dest.window + 1.0).min(MAX);
                    }
                    Verdict::Prompt => dest.window = (dest.window + 1.0 / dest.window).min(MAX),
                    Verdict::Congested if dest.halved_at.is_some_and(|h| started < h) => {}
                    Verdict::Congested => {
                        dest.window = (dest.window / 2.0).max(1.0);
                        dest.threshold = dest.window;
                        dest.halved_at = Some(now);
                    }
                }
            }
        }
    }

    /// The window toward `addr`.
    #[cfg(test)]
    pub(crate) fn window(&self, addr: SocketAddr) -> Option<f64> {
        self.dests.get(&addr).map(|d| d.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], p))
    }

    #[test]
    fn the_window_starts_small_grows_on_prompt_answers_and_halves_on_congestion() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let (x, y) = (a(1), a(2));
        let admitted = (0..10).filter(|&t| p.admit(t0, t, [x, y])).count();
        assert_eq!(admitted, START as usize);
        for t in 0..4 {
            p.finished(t0, t, Verdict::Prompt);
        }
        // Before any congestion: one more per prompt answer.
        assert_eq!(p.window(x), Some(START + 4.0));
        let admitted = (10..30).filter(|&t| p.admit(t0, t, [x, y])).count();
        assert_eq!(admitted, 8);
        p.finished(t0, 10, Verdict::Congested);
        assert_eq!(p.window(x), Some(4.0));
        // After it: one more per window's worth.
        for t in 11..15 {
            p.finished(t0, t, Verdict::Prompt);
        }
        assert!(
            p.window(x).is_some_and(|w| w > 4.8 && w < 5.0),
            "{:?}",
            p.window(x)
        );
        // Other destinations are not held back by a congested one.
        assert!(p.admit(t0, 99, [a(3), a(4)]));
    }

    #[test]
    fn max_cps_limits_starts_per_second() {
        let t0 = Instant::now();
        let trunk = a(5060);
        let mut p = Pacer::new(vec![(
            crate::config::TrunkAddress {
                ip: trunk.ip(),
                port: Some(trunk.port()),
            },
            3,
        )]);
        let mut started = 0;
        for t in 0..100u64 {
            if p.admit(t0, t, [a(t as u16 + 10), trunk]) {
                started += 1;
                p.finished(t0, t, Verdict::Prompt);
            }
        }
        assert_eq!(started, 3, "a burst of at most max_cps");
        let later = t0 + Duration::from_secs(1);
        let more = (100..200u64)
            .filter(|&t| {
                let ok = p.admit(later, t, [a(t as u16 + 10), trunk]);
                if ok {
                    p.finished(t0, t, Verdict::Prompt);
                }
                ok
            })
            .count();
        assert_eq!(more, 3, "three more a second later");
    }

    /// Slow answers from re-binds that were all under way at one busy moment halve the window
    /// once, not once each; a re-bind started after that halving can halve it again.
    #[test]
    fn one_busy_moment_halves_the_window_once() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let t2 = t1 + Duration::from_secs(2);
        let mut p = Pacer::default();
        let (x, y) = (a(1), a(2));
        // Grow the window to 16 with prompt answers.
        let mut token = 0;
        while p.window(x).unwrap_or(START) < 16.0 {
            assert!(p.admit(t0, token, [x, y]));
            p.finished(t0, token, Verdict::Prompt);
            token += 1;
        }
        let busy: Vec<u64> = (100..116).filter(|&t| p.admit(t0, t, [x, y])).collect();
        assert_eq!(busy.len(), 16);
        for t in &busy {
            p.finished(t1, *t, Verdict::Congested);
        }
        assert_eq!(p.window(x), Some(8.0), "halved once for the whole burst");
        assert!(p.admit(t1, 200, [x, y]));
        p.finished(t2, 200, Verdict::Congested);
        assert_eq!(
            p.window(x),
            Some(4.0),
            "a later slow answer halves it again"
        );
    }
}
