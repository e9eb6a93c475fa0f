//! Deterministic simulation of the pair: both nodes' sans-IO [`Server`]s on one virtual
//! clock, joined by a simulated network that can lose, duplicate, delay and reorder
//! datagrams, cut links, and tap what crosses them. Every random choice comes from one seed
//! (the network's generator here, the servers' through [`crate::entropy`]), so a seed replays
//! a run exactly.
//!
//! Not an API: test support for the pair's protocol tests (`sim::tests`) and the simulator
//! runs of issue "Deterministic simulation of the pair".

// Test support: a broken assumption panics, which is how a test learns of it.
#![allow(clippy::panic)]

pub mod endpoint;
pub mod run;
#[cfg(test)]
mod tests;

pub use endpoint::Endpoint;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::entropy::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::dialog::LocalContact;
use crate::net::{Flow, Inbound, Proto};
use crate::pair::epoch::EpochStore;
use crate::server::Server;
use crate::sip::parse_datagram;

/// The wall clock (unix ms) at the start of every simulation.
pub const WALL0: u64 = 1_700_000_000_000;

/// The simulated disk of a node: its epoch survives a crash; writes may be slow or fail.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// The persisted epoch.
    pub epoch: u64,
    /// How long a write takes.
    pub latency: Duration,
    /// Whether writes fail (a full or read-only disk).
    pub failing: bool,
}

/// An epoch store on a simulated [`Disk`], shared with the simulator.
#[derive(Debug, Clone, Default)]
pub struct SharedEpoch {
    /// The disk.
    pub disk: Arc<Mutex<Disk>>,
    pending: Option<(u64, Option<Instant>)>,
}

impl EpochStore for SharedEpoch {
    fn load(&self) -> Result<u64, String> {
        self.disk.lock().map(|d| d.epoch).map_err(|e| e.to_string())
    }

    fn store(&mut self, epoch: u64) -> Result<(), String> {
        let mut d = self.disk.lock().map_err(|e| e.to_string())?;
        if d.failing {
            return Err("simulated disk failure".into());
        }
        d.epoch = epoch;
        Ok(())
    }

    fn begin(&mut self, epoch: u64) {
        self.pending = Some((epoch, None));
    }

    fn poll(&mut self, now: Instant) -> Option<crate::pair::epoch::Persisted> {
        let (epoch, ready) = self.pending?;
        let latency = self.disk.lock().map(|d| d.latency).unwrap_or_default();
        let ready = ready.unwrap_or(now + latency);
        if now < ready {
            self.pending = Some((epoch, Some(ready)));
            return None;
        }
        self.pending = None;
        Some((epoch, self.store(epoch)))
    }
}

/// A datagram (or TCP segment carrying one message) on the simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender.
    pub from: SocketAddr,
    /// Destination.
    pub to: SocketAddr,
    /// Transport.
    pub proto: Proto,
    /// The message.
    pub bytes: bytes::Bytes,
}

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Instant,
    seq: u64,
    d: Datagram,
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What the network does to UDP datagrams (TCP is reliable and in order, only delayed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// One-way delay.
    pub delay: Duration,
    /// Extra random delay, up to this (reorders datagrams).
    pub jitter: Duration,
    /// Probability a UDP datagram is lost.
    pub loss: f64,
    /// Probability a UDP datagram arrives twice.
    pub duplicate: f64,
    /// UDP datagrams larger than this are dropped (a path MTU whose fragments a firewall
    /// drops); `None`: no limit.
    pub max_udp: Option<usize>,
    /// Datagrams dropped for their size.
    pub dropped_oversize: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            max_udp: None,
            dropped_oversize: 0,
        }
    }
}

/// One node of the pair.
#[derive(Debug)]
pub struct Node {
    /// Its SIP address (UDP and TCP).
    pub addr: SocketAddr,
    /// The running server, `None` while crashed.
    pub server: Option<Server>,
    cfg: Arc<Config>,
    epoch: SharedEpoch,
    /// How far its wall clock is off the world's (read at each start).
    pub clock_offset_ms: i64,
}

/// The simulated world.
#[derive(Debug)]
pub struct Sim {
    /// The virtual clock.
    pub now: Instant,
    start: Instant,
    rng: StdRng,
    /// The nodes.
    pub nodes: Vec<Node>,
    net: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Network behaviour.
    pub faults: Faults,
    /// Links cut (from, to): nothing crosses them.
    pub cut: HashSet<(SocketAddr, SocketAddr)>,
    /// Everything sent that matched the tap, in order.
    pub tapped: Vec<Datagram>,
    tap: Option<fn(&Datagram) -> bool>,
    /// What the nodes sent to addresses that are neither nodes nor endpoints, in order.
    pub outbox: Vec<Datagram>,
    /// The simulated endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Every CDR written, with the node that wrote it.
    pub cdrs: Vec<(usize, crate::cdr::CdrRecord)>,
}

impl Sim {
    /// An empty world whose network draws from `seed` (the servers' draws are reseeded
    /// from it too).
    pub fn new(seed: u64) -> Self {
        crate::entropy::reseed(seed ^ 0x5157_5157);
        let now = Instant::now();
        Self {
            now,
            start: now,
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            net: BinaryHeap::new(),
            seq: 0,
            faults: Faults::default(),
            cut: HashSet::default(),
            tapped: Vec::new(),
            tap: None,
            outbox: Vec::new(),
            endpoints: Vec::new(),
            cdrs: Vec::new(),
        }
    }

    /// Wall clock (unix ms) now.
    pub fn wall_ms(&self) -> u64 {
        WALL0
            + u64::try_from(self.now.saturating_duration_since(self.start).as_millis()).unwrap_or(0)
    }

    /// Add a node with this configuration (its `sip_udp` is its address) and start it.
    pub fn add_node(&mut self, cfg: Config) -> usize {
        let addr = cfg
            .node
            .sip_udp
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
        self.nodes.push(Node {
            addr,
            server: None,
            cfg: Arc::new(cfg),
            epoch: SharedEpoch::default(),
            clock_offset_ms: 0,
        });
        let i = self.nodes.len() - 1;
        self.start_node(i);
        i
    }

    /// (Re)start node `i` with nothing but its persisted epoch. It reads its wall clock
    /// (off by its `clock_offset_ms`) at start; from then on time is monotonic.
    pub fn start_node(&mut self, i: usize) {
        let wall = self.wall_ms();
        let now = self.now;
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        let wall = wall.saturating_add_signed(n.clock_offset_ms);
        let me = LocalContact {
            udp: n.addr.to_string(),
            tcp: n.addr.to_string(),
            tls: String::new(),
        };
        let mut s = Server::new(n.cfg.clone(), me, now, wall, Box::new(n.epoch.clone()));
        s.handle_timeout(now);
        n.server = Some(s);
        self.collect(i);
    }

    /// Crash node `i` (kill -9): everything but its persisted epoch is lost.
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.server = None;
        }
    }

    /// The simulated disk of node `i`.
    pub fn disk(&self, i: usize) -> Option<Arc<Mutex<Disk>>> {
        self.nodes.get(i).map(|n| n.epoch.disk.clone())
    }

    /// Record what the nodes send that `f` accepts.
    pub fn tap(&mut self, f: fn(&Datagram) -> bool) {
        self.tap = Some(f);
    }

    /// The server of node `i`, if running.
    pub fn server(&self, i: usize) -> Option<&Server> {
        self.nodes.get(i).and_then(|n| n.server.as_ref())
    }

    /// The server of node `i`, mutably.
    pub fn server_mut(&mut self, i: usize) -> Option<&mut Server> {
        self.nodes.get_mut(i).and_then(|n| n.server.as_mut())
    }

    /// Put a datagram on the network now (an endpoint, or an attacker, sends it).
    pub fn inject(&mut self, d: Datagram) {
        self.send(d);
    }

    fn send(&mut self, d: Datagram) {
        if self.cut.contains(&(d.from, d.to)) {
            return;
        }
        if let Some(tap) = self.tap
            && tap(&d)
        {
            self.tapped.push(d.clone());
        }
        let udp = d.proto == Proto::Udp;
        if udp && self.faults.max_udp.is_some_and(|m| d.bytes.len() > m) {
            self.faults.dropped_oversize += 1;
            return;
        }
        if udp && self.faults.loss > 0.0 && self.rng.r#gen::<f64>() < self.faults.loss {
            return;
        }
        let copies = if udp
            && self.faults.duplicate > 0.0
            && self.rng.r#gen::<f64>() < self.faults.duplicate
        {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if udp && !self.faults.jitter.is_zero() {
                let max = u64::try_from(self.faults.jitter.as_micros()).unwrap_or(0);
                Duration::from_micros(self.rng.gen_range(0..=max))
            } else {
                Duration::ZERO
            };
            self.seq += 1;
            self.net.push(Reverse(InFlight {
                at: self.now + self.faults.delay + jitter,
                seq: self.seq,
                d: d.clone(),
            }));
        }
    }

    /// Move what node `i` sent onto the network (or into the outbox).
    fn collect(&mut self, i: usize) {
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        let from = n.addr;
        let Some(s) = n.server.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = s.poll_transmit() {
            out.push(Datagram {
                from,
                to: t.flow.remote,
                proto: t.flow.proto,
                bytes: t.bytes,
            });
        }
        let cdrs = s.take_cdrs();
        let _ = s.take_media_commands();
        self.cdrs.extend(cdrs.into_iter().map(|c| (i, c)));
        for d in out {
            if self.nodes.iter().any(|n| n.addr == d.to)
                || self.endpoints.iter().any(|e| e.addr == d.to)
            {
                self.send(d);
            } else {
                if let Some(tap) = self.tap
                    && tap(&d)
                {
                    self.tapped.push(d.clone());
                }
                self.outbox.push(d);
            }
        }
    }

    /// Add an endpoint; returns its index.
    pub fn add_endpoint(&mut self, e: Endpoint) -> usize {
        self.endpoints.push(e);
        self.endpoints.len() - 1
    }

    /// Let endpoint `i` act (place a call, hang up...) and send what it produced.
    pub fn with_endpoint<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Endpoint, Instant) -> R,
    ) -> Option<R> {
        let now = self.now;
        let e = self.endpoints.get_mut(i)?;
        let r = f(e, now);
        let out = e.take_out();
        for d in out {
            self.send(d);
        }
        Some(r)
    }

    fn deliver(&mut self, d: Datagram) {
        if let Some(e) = self.endpoints.iter_mut().find(|e| e.addr == d.to) {
            e.receive(self.now, &d);
            let out = e.take_out();
            for d in out {
                self.send(d);
            }
            return;
        }
        let Some(i) = self.nodes.iter().position(|n| n.addr == d.to) else {
            return;
        };
        let now = self.now;
        let Some(s) = self.nodes.get_mut(i).and_then(|n| n.server.as_mut()) else {
            return;
        };
        let flow = Flow {
            proto: d.proto,
            remote: d.from,
            conn: None,
        };
        let inbound = match parse_datagram(&d.bytes) {
            Ok(p) => Inbound::Message(Box::new(p), flow),
            Err(e) => Inbound::Malformed {
                raw: d.bytes.clone(),
                error: e.to_string(),
                flow,
            },
        };
        s.handle_inbound(now, inbound);
        self.collect(i);
    }

    /// Let `d` of virtual time pass, delivering datagrams and firing timers in order.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let next_net = self.net.peek().map(|Reverse(f)| f.at);
            let next_timer = self
                .nodes
                .iter_mut()
                .filter_map(|n| n.server.as_mut().and_then(Server::poll_timeout))
                .chain(self.endpoints.iter().filter_map(Endpoint::poll_timeout))
                .min();
            let next = [next_net, next_timer].into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    if next_net == Some(t)
                        && let Some(Reverse(f)) = self.net.pop()
                    {
                        self.deliver(f.d);
                        continue;
                    }
                    let now = self.now;
                    let mut sent = Vec::new();
                    for e in &mut self.endpoints {
                        if e.poll_timeout().is_some_and(|t| t <= now) {
                            e.handle_timeout(now);
                            sent.extend(e.take_out());
                        }
                    }
                    for d in sent {
                        self.send(d);
                    }
                    for i in 0..self.nodes.len() {
                        let due = self
                            .nodes
                            .get_mut(i)
                            .and_then(|n| n.server.as_mut())
                            .and_then(Server::poll_timeout)
                            .is_some_and(|t| t <= now);
                        if due {
                            if let Some(s) = self.server_mut(i) {
                                s.handle_timeout(now);
                            }
                            self.collect(i);
                        }
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// Run until `f` holds (checked after every step of `step`), at most `limit`; returns
    /// the virtual time it took, or `None`.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut f: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let t0 = self.now;
        while self.now.saturating_duration_since(t0) < limit {
            if f(self) {
                return Some(self.now.saturating_duration_since(t0));
            }
            self.run_for(step);
        }
        f(self).then(|| self.now.saturating_duration_since(t0))
    }
}

/// A pair configuration for the simulator: node `name` with home role `home` at `me`, its
/// peer at `peer`, plus `extra` TOML.
pub fn pair_config(name: &str, home: &str, me: &str, peer: &str, extra: &str) -> Config {
    let text = format!(
        "[node]\nname = \"{name}\"\nhome_role = \"{home}\"\nsip_udp = \"{me}\"\nsip_tcp = \"{me}\"\n\
         [pair]\npeer = \"{peer}\"\nsecret = \"simulated-pair-secret\"\n\
         [cdr]\nenabled = false\n{extra}"
    );
    match Config::from_toml_str(&text, "sim") {
        Ok(c) => c,
        Err(e) => panic!("simulator config: {e}"),
    }
}
