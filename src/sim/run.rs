//! Seeded runs of the pair under a mixed workload with injected faults, and the invariants
//! checked during and after each run (issue "Deterministic simulation of the pair").
//!
//! A run: 50 phones that register at the pair and 2 trunks; for [`WORK`] of virtual time
//! calls are placed and hung up at random, while the fault schedule kills and restarts nodes,
//! cuts the pair link (both ways or one way), makes the network lose, duplicate and reorder
//! datagrams, asks for a switchover, or slows the epoch disk. Then the network heals, every
//! node runs again, the calls still up are hung up, and everything settles.
//!
//! Invariants:
//! - once the network has healed and settled, never two nodes active with the same epoch,
//!   and exactly one active;
//! - every call ends on both endpoints (no dialog left anywhere);
//! - no call has more than one CDR, and every call both endpoints had up has one;
//! - tables stay bounded (server transactions, calls);
//! - the stand-by knows every phone's registration once the link is up.
//!
//! Everything is a function of the seed; [`shrink`] removes faults from a failing schedule
//! while it still fails, for a minimal trace.

use crate::entropy::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Endpoint, Sim, pair_config};
use crate::pair::Role;

/// How long calls are placed and hung up (and faults injected).
pub const WORK: Duration = Duration::from_secs(20);

const MAIN: &str = "127.0.0.1:5060";
const STANDBY: &str = "127.0.0.1:5062";
const LEFT: &str = "127.0.0.2:5070";
const RIGHT: &str = "127.0.0.3:5070";
const PHONES: usize = 50;

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Kill node `node` at `at_ms`; restart it `down_ms` later.
    Kill {
        /// When.
        at_ms: u64,
        /// Which node (0 = main, 1 = stand-by).
        node: usize,
        /// How long it stays down.
        down_ms: u64,
    },
    /// Cut the pair link from `at_ms` for `ms` (`one_way`: only main → stand-by).
    Partition {
        /// When.
        at_ms: u64,
        /// How long.
        ms: u64,
        /// Only one direction.
        one_way: bool,
    },
    /// Lossy, duplicating, reordering network from `at_ms` for `ms`.
    Lossy {
        /// When.
        at_ms: u64,
        /// How long.
        ms: u64,
        /// Loss probability (percent).
        loss_pct: u8,
    },
    /// An operator asks node `node` for a switchover at `at_ms`.
    Switchover {
        /// When.
        at_ms: u64,
        /// Which node.
        node: usize,
    },
    /// Cut node `node` from every endpoint (phones and trunks), both ways, from `at_ms` for
    /// `ms`; the pair link stays up (the node's uplink to its users fails, not its peer
    /// link).
    EndpointCut {
        /// When.
        at_ms: u64,
        /// How long.
        ms: u64,
        /// Which node.
        node: usize,
    },
    /// Node `node`'s wall clock is `ms` off (either way, within `pair.max_clock_skew_ms`);
    /// after a restart at `at_ms` it is `jump_ms` further off (a clock stepped while the
    /// node was down).
    ClockSkew {
        /// Which node.
        node: usize,
        /// Offset from the start.
        ms: i64,
        /// When the node restarts with the jumped clock.
        at_ms: u64,
        /// The step.
        jump_ms: i64,
    },
    /// Node `node`'s epoch writes take `ms` from the start.
    SlowDisk {
        /// Which node.
        node: usize,
        /// Write latency.
        ms: u64,
    },
}

impl Fault {
    fn at(&self) -> u64 {
        match *self {
            Self::Kill { at_ms, .. }
            | Self::Partition { at_ms, .. }
            | Self::Lossy { at_ms, .. }
            | Self::Switchover { at_ms, .. }
            | Self::EndpointCut { at_ms, .. }
            | Self::ClockSkew { at_ms, .. } => at_ms,
            Self::SlowDisk { .. } => 0,
        }
    }
}

/// The random fault schedule of `seed` (at least one fault). The kinds added later (a node
/// cut from its endpoints, a clock off and stepped) come from a second stream, so that the
/// schedules of the seeds kept as regressions did not change.
pub fn schedule(seed: u64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17);
    let work = u64::try_from(WORK.as_millis()).unwrap_or(20_000);
    let n = rng.gen_range(1..=3);
    let mut faults: Vec<Fault> = (0..n)
        .map(|_| {
            let at_ms = rng.gen_range(2_000..work.saturating_sub(2_000).max(2_001));
            match rng.gen_range(0..5) {
                0 => Fault::Kill {
                    at_ms,
                    node: rng.gen_range(0..2),
                    down_ms: rng.gen_range(500..6_000),
                },
                1 => Fault::Partition {
                    at_ms,
                    ms: rng.gen_range(300..4_000),
                    one_way: rng.gen_bool(0.3),
                },
                2 => Fault::Lossy {
                    at_ms,
                    ms: rng.gen_range(500..5_000),
                    loss_pct: rng.gen_range(1..15),
                },
                3 => Fault::Switchover {
                    at_ms,
                    node: rng.gen_range(0..2),
                },
                _ => Fault::SlowDisk {
                    node: rng.gen_range(0..2),
                    ms: rng.gen_range(10..800),
                },
            }
        })
        .collect();
    let mut more = StdRng::seed_from_u64(seed ^ 0x0c1c);
    if more.gen_bool(0.5) {
        let at_ms = more.gen_range(2_000..work.saturating_sub(2_000).max(2_001));
        faults.push(if more.gen_bool(0.5) {
            Fault::EndpointCut {
                at_ms,
                ms: more.gen_range(300..4_000),
                node: more.gen_range(0..2),
            }
        } else {
            Fault::ClockSkew {
                node: more.gen_range(0..2),
                ms: more.gen_range(-2_000..=2_000),
                at_ms,
                jump_ms: more.gen_range(-2_000..=2_000),
            }
        });
    }
    faults
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Calls placed.
    pub placed: usize,
    /// Calls answered (confirmed at the caller).
    pub answered: usize,
    /// Takeovers and step-downs seen.
    pub role_changes: usize,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// What happened, for a failing seed.
    pub trace: Vec<String>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5060)))
}

fn config_extra() -> String {
    let mut s = format!(
        "[[trunks]]\nname = \"left\"\naddress = \"{LEFT}\"\nprefixes = [\"8\"]\n\
         [[trunks]]\nname = \"right\"\naddress = \"{RIGHT}\"\nprefixes = [\"9\"]\n"
    );
    for i in 0..PHONES {
        s.push_str(&format!(
            "[[users]]\nname = \"u{i}\"\npassword = \"pw-u{i}\"\n"
        ));
    }
    s
}

fn phone_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 1, u8::try_from(i + 1).unwrap_or(1)], 5060))
}

/// Where endpoints send new requests: the active node (DNS failover), else the main.
fn target(sim: &Sim) -> SocketAddr {
    for i in 0..2 {
        if sim.server(i).map(crate::server::Server::role) == Some(Role::Active) {
            return sim.nodes.get(i).map_or_else(|| addr(MAIN), |n| n.addr);
        }
    }
    addr(MAIN)
}

fn roles(sim: &Sim) -> [Option<(Role, u64)>; 2] {
    [0, 1].map(|i| sim.server(i).map(|s| (s.role(), s.epoch())))
}

/// Run `seed` with `faults`.
pub fn run(seed: u64, faults: &[Fault]) -> Report {
    let mut rep = Report::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(seed);
    // `SIM_TAP=text`: the trace shows every datagram containing `text` (e.g. a call token).
    if std::env::var("SIM_TAP").is_ok() {
        sim.tap(|d| {
            let t = std::env::var("SIM_TAP").unwrap_or_default();
            !t.is_empty() && d.bytes.windows(t.len()).any(|w| w == t.as_bytes())
        });
    }
    let extra = config_extra();
    sim.add_node(pair_config("main-1", "main", MAIN, STANDBY, &extra));
    sim.add_node(pair_config("standby-1", "standby", STANDBY, MAIN, &extra));
    for f in faults {
        if let Fault::SlowDisk { node, ms } = *f
            && let Some(d) = sim.disk(node)
            && let Ok(mut d) = d.lock()
        {
            d.latency = Duration::from_millis(ms);
        }
        if let Fault::ClockSkew { node, ms, .. } = *f
            && let Some(n) = sim.nodes.get_mut(node)
        {
            n.clock_offset_ms = ms;
            sim.kill(node);
            sim.start_node(node);
        }
    }
    let left = sim.add_endpoint(Endpoint::new(addr(LEFT), 64));
    let _right = sim.add_endpoint(Endpoint::new(addr(RIGHT), 64));
    let phones: Vec<usize> = (0..PHONES)
        .map(|i| sim.add_endpoint(Endpoint::new(phone_addr(i), 64)))
        .collect();
    sim.run_for(Duration::from_millis(1_200));
    for (i, &p) in phones.iter().enumerate() {
        let t = target(&sim);
        sim.with_endpoint(p, |e, now| {
            e.register(now, t, &format!("u{i}"), &format!("pw-u{i}"))
        });
        sim.run_for(Duration::from_millis(5));
    }
    sim.run_for(Duration::from_secs(1));
    let callers: Vec<usize> = phones.iter().copied().chain([left]).collect();
    let (main, standby) = (addr(MAIN), addr(STANDBY));
    let endpoint_addrs: Vec<SocketAddr> = sim.endpoints.iter().map(|e| e.addr).collect();
    let mut down: [Option<u64>; 2] = [None, None];
    let mut last_roles = roles(&sim);
    let mut healed_at: Option<u64> = None;
    let step = 100u64;
    let work = u64::try_from(WORK.as_millis()).unwrap_or(20_000);
    let mut t = 0u64;
    while t < work + 60_000 {
        let working = t < work;
        // Faults due now.
        let now_window = t..t + step;
        for f in faults.iter().filter(|f| now_window.contains(&f.at())) {
            rep.trace.push(format!("{t} ms: {f:?}"));
            match *f {
                Fault::Kill { node, down_ms, .. } => {
                    sim.kill(node);
                    if let Some(d) = down.get_mut(node) {
                        *d = Some(t + down_ms);
                    }
                }
                Fault::Partition { ms, one_way, .. } => {
                    sim.cut.insert((main, standby));
                    if !one_way {
                        sim.cut.insert((standby, main));
                    }
                    rep.trace.push(format!("partition until {} ms", t + ms));
                }
                Fault::Lossy { loss_pct, .. } => {
                    sim.faults.loss = f64::from(loss_pct) / 100.0;
                    sim.faults.duplicate = 0.02;
                    sim.faults.jitter = Duration::from_millis(20);
                }
                Fault::Switchover { node, .. } => {
                    let now = sim.now;
                    if let Some(s) = sim.server_mut(node) {
                        let _ = s.switchover(now);
                    }
                }
                Fault::EndpointCut { ms, node, .. } => {
                    let at = if node == 0 { main } else { standby };
                    for e in &endpoint_addrs {
                        sim.cut.insert((at, *e));
                        sim.cut.insert((*e, at));
                    }
                    rep.trace
                        .push(format!("endpoints cut off node {node} until {} ms", t + ms));
                }
                Fault::ClockSkew { node, jump_ms, .. } => {
                    // The clock is stepped while the node is down: it restarts with it.
                    if let Some(n) = sim.nodes.get_mut(node) {
                        n.clock_offset_ms = n.clock_offset_ms.saturating_add(jump_ms);
                    }
                    sim.kill(node);
                    sim.start_node(node);
                }
                Fault::SlowDisk { .. } => {}
            }
        }
        // Faults that end now.
        for f in faults {
            match *f {
                Fault::Partition { at_ms, ms, .. } | Fault::EndpointCut { at_ms, ms, .. }
                    if now_window.contains(&(at_ms + ms)) =>
                {
                    sim.cut.clear();
                    rep.trace.push(format!("{t} ms: partition healed"));
                }
                Fault::Lossy { at_ms, ms, .. } if now_window.contains(&(at_ms + ms)) => {
                    sim.faults.loss = 0.0;
                    sim.faults.duplicate = 0.0;
                    sim.faults.jitter = Duration::ZERO;
                    rep.trace.push(format!("{t} ms: network clean"));
                }
                _ => {}
            }
        }
        for (i, d) in down.iter_mut().enumerate() {
            if d.is_some_and(|until| until <= t || !working) {
                *d = None;
                sim.start_node(i);
                rep.trace.push(format!("{t} ms: node {i} restarted"));
            }
        }
        if !working && healed_at.is_none() {
            sim.cut.clear();
            sim.faults.loss = 0.0;
            sim.faults.duplicate = 0.0;
            sim.faults.jitter = Duration::ZERO;
            healed_at = Some(t);
            rep.trace.push(format!("{t} ms: everything healed"));
        }
        // Workload.
        if working {
            if rng.gen_bool(0.5) {
                let pick = rng.gen_range(0..callers.len());
                let caller = callers.get(pick).copied().unwrap_or(left);
                let number = match rng.gen_range(0..3) {
                    0 => format!("9{}", rng.gen_range(1000..9999)),
                    _ => format!("u{}", rng.gen_range(0..PHONES)),
                };
                let to = target(&sim);
                sim.with_endpoint(caller, |e, now| e.call(now, to, &number));
                rep.placed += 1;
            }
            if rng.gen_bool(0.3) {
                let who = rng.gen_range(0..sim.endpoints.len());
                if let Some(id) = sim.endpoints.get(who).and_then(Endpoint::some_call) {
                    sim.with_endpoint(who, |e, now| e.hang_up(now, &id));
                }
            }
        }
        // Hang everything up after a settling period.
        if t == work + 15_000 {
            rep.trace.push(format!("{t} ms: hanging up every call"));
            for e in 0..sim.endpoints.len() {
                let ids: Vec<String> = sim
                    .endpoints
                    .get(e)
                    .map(|ep| ep.dialogs.keys().cloned().collect())
                    .unwrap_or_default();
                for id in ids {
                    sim.with_endpoint(e, |ep, now| ep.hang_up(now, &id));
                }
            }
        }
        sim.run_for(Duration::from_millis(step));
        t += step;
        let r = roles(&sim);
        if r != last_roles {
            rep.role_changes += 1;
            rep.trace.push(format!("{t} ms: roles {r:?}"));
            last_roles = r;
        }
        check_running(&sim, &mut rep, t, healed_at);
    }
    rep.answered = sim
        .endpoints
        .iter()
        .map(|e| e.stats.answered as usize)
        .sum();
    for d in &sim.tapped {
        let text = String::from_utf8_lossy(&d.bytes);
        let first = text.lines().next().unwrap_or("");
        let cseq = text.lines().find(|x| x.starts_with("CSeq")).unwrap_or("");
        rep.trace
            .push(format!("tap: {} -> {} {first} [{cseq}]", d.from, d.to));
    }
    check_end(&sim, &mut rep);
    rep
}

fn check_running(sim: &Sim, rep: &mut Report, t: u64, healed_at: Option<u64>) {
    for i in 0..2 {
        if let Some(s) = sim.server(i) {
            let tx = s.transactions().server_count() + s.transactions().client_count();
            if tx > 50_000 {
                rep.violations
                    .push(format!("{t} ms: node {i} holds {tx} transactions"));
            }
            if s.b2bua().call_count() > 5_000 {
                rep.violations.push(format!(
                    "{t} ms: node {i} holds {} calls",
                    s.b2bua().call_count()
                ));
            }
        }
    }
    if healed_at.is_some_and(|h| t >= h + 5_000) {
        let r = roles(sim);
        let active: Vec<u64> = r
            .iter()
            .flatten()
            .filter(|(role, _)| *role == Role::Active)
            .map(|(_, e)| *e)
            .collect();
        if active.len() != 1 {
            rep.violations.push(format!(
                "{t} ms: {} active nodes after healing: {r:?}",
                active.len()
            ));
        }
    }
}

fn check_end(sim: &Sim, rep: &mut Report) {
    let mut left_up = 0;
    for e in &sim.endpoints {
        left_up += e.dialogs.len();
    }
    if left_up > 0 {
        let ids: Vec<String> = sim
            .endpoints
            .iter()
            .flat_map(|e| {
                e.dialogs
                    .values()
                    .map(move |d| format!("{}:{}", e.addr, d.call_id))
            })
            .take(5)
            .collect();
        rep.violations.push(format!(
            "{left_up} dialogs still up at the endpoints, e.g. {ids:?}"
        ));
    }
    let mut per_token: HashMap<&str, usize> = HashMap::default();
    for (_, c) in &sim.cdrs {
        *per_token.entry(c.token.as_str()).or_default() += 1;
    }
    let dup: Vec<String> = per_token
        .iter()
        .filter(|(_, n)| **n > 1)
        .take(3)
        .map(|(t, _)| {
            let which: Vec<String> = sim
                .cdrs
                .iter()
                .filter(|(_, c)| c.token == *t)
                .map(|(n, c)| format!("node {n}: {} (recovered {})", c.end_reason, c.recovered))
                .collect();
            format!("{t}: {which:?}")
        })
        .collect();
    if !dup.is_empty() {
        rep.violations
            .push(format!("calls with several CDRs: {dup:?}"));
    }
    let calls = sim.server(0).map_or(0, |s| s.b2bua().call_count())
        + sim.server(1).map_or(0, |s| s.b2bua().call_count());
    if calls > 0 {
        let which: Vec<String> = (0..2)
            .filter_map(|i| sim.server(i).map(|s| (i, s)))
            .flat_map(|(i, s)| {
                s.b2bua()
                    .calls()
                    .map(move |c| format!("node {i}: {:016x} {:?}", c.token, c.state))
            })
            .take(3)
            .collect();
        rep.violations.push(format!(
            "{calls} calls still held by the nodes after every hang-up: {which:?}"
        ));
    }
    // The stand-by knows every registration the active knows.
    let of =
        |role: Role| (0..2).find(|&i| sim.server(i).map(crate::server::Server::role) == Some(role));
    if let (Some(a), Some(s)) = (of(Role::Active), of(Role::Standby)) {
        let count = |i: usize| {
            sim.server(i)
                .map_or(0, |s| s.registrar().location().binding_count())
        };
        let (na, ns) = (count(a), count(s));
        if ns < na {
            rep.violations.push(format!(
                "the stand-by (node {s}) knows {ns} registrations, the active {na}"
            ));
        }
    }
}

/// Remove faults from a failing schedule while it still fails; the smallest failing one.
pub fn shrink(seed: u64, faults: &[Fault]) -> Vec<Fault> {
    let mut cur = faults.to_vec();
    let mut i = 0;
    while i < cur.len() {
        let mut fewer = cur.clone();
        fewer.remove(i);
        if !fewer.is_empty() && !run(seed, &fewer).violations.is_empty() {
            cur = fewer;
        } else {
            i += 1;
        }
    }
    cur
}
