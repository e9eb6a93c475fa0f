//! Media relay benchmark (`cargo bench --bench media`, or `sipp-scenarios/bench-media.sh`):
//! N concurrent streams at 50 packets/s each way (160-byte payloads), sent three ways in the
//! same run: directly between two sockets, through Understudy's relay, and through rtpengine
//! (the reference). The generator is one thread (paced sends and an epoll loop for the
//! receives), so on a 2-core machine it gets one core and the relay under test the other.
//!
//! The run has `ROUNDS` rounds (default 3); each sends the direct streams, then the streams of
//! both relays, the one going first alternating from round to round, so that a change in a
//! shared machine's load falls on both. Every run prints a line: packets sent and received,
//! the one-way latency percentiles and the CPU used. The relays' figures are packets/s
//! received (and the loss), CPU per 1,000 received packets and the latency added to the
//! round's direct run (p50, p99); the summary has the median of each over the rounds, and the
//! worst round's loss. CPU per packet and added latency move against each other with the
//! machine's load: a relay woken less often finds more packets per wake-up, spends less per
//! packet and holds them longer. On a shared machine a single run can land in either state,
//! hence the rounds.
//!
//! CPU is counted the same way for both relays: the run time of the relay's own threads
//! (`/proc/<pid>/task/*/schedstat`, in ns) from the start to the end of the measured window
//! (sending plus a 300 ms drain), divided by the packets received in that run. For Understudy
//! that is the `media-relay` thread inside this process; for rtpengine, every thread of the
//! daemon (its workers and its timer threads). The generator's CPU is in neither. The relayed
//! line also shows the older estimate, this process's CPU in the relay run minus the direct
//! run. That figure also moves with the generator's own cost, which is not the same in both
//! runs (the replies arrive spread differently, so the receive wake-ups differ), and it counts
//! in 10 ms ticks; it is shown for comparison with earlier results only.
//!
//! rtpengine (Debian `rtpengine-daemon`) runs as a child process in userspace-only mode
//! (`--table=-1`, no kernel forwarding) on 127.0.0.1 with `RTPENGINE_THREADS` worker threads
//! (default 1, as Understudy's relay has one thread). Each stream is set up over its ng control
//! protocol (bencoded dictionaries over UDP): `offer` with an SDP naming side A's socket, then
//! `answer` with one naming side B's; the SDP in each reply gives the port rtpengine allocated
//! for the other side to send to. If rtpengine is missing or does not start, the bench says so
//! and prints the Understudy figures with `rtpengine=unavailable` in the summary.
//!
//! The last line, `SUMMARY bench-media ...`, has every figure of both relays (medians) and the
//! ratios understudy/rtpengine (throughput, CPU per 1,000 packets, added p99 latency).
//!
//! Knobs: `STREAMS` (default 500), `PPS` per stream and direction (50), `SECS` (5), `ROUNDS` (3),
//! `RTP_BASE` (first relay port, 21000), `RTPENGINE` (the daemon's path, `rtpengine`),
//! `RTPENGINE_THREADS` (1), `RTPENGINE_PORT_MIN` (first rtpengine media port, 25000).

// Benchmark code: it may unwrap, index and panic (the no-panic lints are for the server).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use understudy::media::Relay;

/// utime + stime of a process in ms, from `/proc/<pid>/stat` (`self` for this process).
fn cpu_ms(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let k: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (u + k) * 10.0 // CLK_TCK = 100
}

/// CPU time in ms of the threads of process `pid` (`self` for this one) whose name is `comm`
/// (all of them if `None`): the sum of their run times in `/proc/<pid>/task/*/schedstat`, in ns.
fn threads_cpu_ms(pid: &str, comm: Option<&str>) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let dir = task.path();
        if let Some(comm) = comm {
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if name.trim_end() != comm {
                continue;
            }
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e6
}

fn env(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Results {
    sent: u64,
    received: u64,
    latencies_us: Vec<u64>,
    /// This process's CPU over the window.
    cpu_ms: f64,
    /// The relay's own CPU over the same window (its threads' run time), if one was given.
    relay_cpu_ms: f64,
    secs: f64,
}

/// One stream direction: a socket that sends to `dest`.
struct Stream {
    sock: UdpSocket,
    dest: SocketAddr,
    seq: u16,
}

fn run(
    streams: &mut [Stream],
    pps: u64,
    secs: u64,
    epoch: Instant,
    relay: Option<(&str, Option<&str>)>,
) -> Results {
    let mut poll = Poll::new().expect("poll");
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(&mut s.sock, Token(i), Interest::READABLE)
            .expect("register");
    }
    let interval = Duration::from_micros(1_000_000 / pps);
    let n = streams.len();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut p = [0u8; 172];
    p[0] = 0x80;
    let mut received = 0u64;
    let mut sent_total = 0u64;
    let mut lat = Vec::with_capacity((n as u64 * pps * secs) as usize + 1024);
    let relay_cpu = || relay.map_or(0.0, |(pid, comm)| threads_cpu_ms(pid, comm));
    let cpu0 = cpu_ms("self");
    let relay0 = relay_cpu();
    let t0 = Instant::now();
    let stop_sending = t0 + Duration::from_secs(secs);
    let drain_until = stop_sending + Duration::from_millis(300);
    let mut sent = 0usize; // stream-slots sent in this round
    let mut round_start = t0;
    loop {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        // Send the packets due: stream i of a round goes out at round_start + i/n of the interval.
        if now < stop_sending {
            if now >= round_start + interval {
                round_start += interval;
                sent = 0;
            }
            let due =
                (((now - round_start).as_nanos() * n as u128) / interval.as_nanos()) as usize + 1;
            while sent < due.min(n) {
                let s = &mut streams[sent];
                p[2..4].copy_from_slice(&s.seq.to_be_bytes());
                p[4..8].copy_from_slice(&(u32::from(s.seq) * 160).to_be_bytes());
                p[8..12].copy_from_slice(&(sent as u32).to_be_bytes());
                p[12..20].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                let _ = s.sock.send_to(&p, s.dest);
                s.seq = s.seq.wrapping_add(1);
                sent += 1;
                sent_total += 1;
            }
        }
        let next_send = round_start + interval.mul_f64((sent.min(n) as f64) / n as f64);
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(5));
        let _ = poll.poll(&mut events, Some(wait));
        for ev in events.iter() {
            let s = &streams[ev.token().0];
            loop {
                match s.sock.recv_from(&mut buf) {
                    Ok((len, _)) if len >= 20 => {
                        let at = u64::from_be_bytes(buf[12..20].try_into().unwrap_or([0; 8]));
                        let now = epoch.elapsed().as_nanos() as u64;
                        lat.push(now.saturating_sub(at) / 1000);
                        received += 1;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
    let cpu = cpu_ms("self") - cpu0;
    let relay_cpu_ms = relay_cpu() - relay0;
    for s in streams.iter_mut() {
        let _ = poll.registry().deregister(&mut s.sock);
    }
    lat.sort_unstable();
    Results {
        sent: sent_total,
        received,
        latencies_us: lat,
        cpu_ms: cpu,
        relay_cpu_ms,
        secs: secs as f64,
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn sock() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind")
}

/// A bencoded value, as the ng control protocol carries them.
#[derive(Debug, Clone, PartialEq)]
enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    Dict(Vec<(Vec<u8>, Bencode)>),
}

impl Bencode {
    fn str(s: &str) -> Self {
        Self::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from string keys (sorted on encoding, as bencode requires).
    fn dict(entries: &[(&str, Bencode)]) -> Self {
        Self::Dict(
            entries
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
        )
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Self::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Self::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode(out);
                }
                out.push(b'e');
            }
            Self::Dict(entries) => {
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'd');
                for (k, v) in sorted {
                    Self::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the front of `input`; returns it and the rest.
    fn decode(input: &[u8]) -> Option<(Self, &[u8])> {
        match *input.first()? {
            b'i' => {
                let end = input.iter().position(|&c| c == b'e')?;
                let i = std::str::from_utf8(&input[1..end]).ok()?.parse().ok()?;
                Some((Self::Int(i), &input[end + 1..]))
            }
            b'l' => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while *rest.first()? != b'e' {
                    let (item, r) = Self::decode(rest)?;
                    items.push(item);
                    rest = r;
                }
                Some((Self::List(items), &rest[1..]))
            }
            b'd' => {
                let mut rest = &input[1..];
                let mut entries = Vec::new();
                while *rest.first()? != b'e' {
                    let (Self::Bytes(k), r) = Self::decode(rest)? else {
                        return None;
                    };
                    let (v, r) = Self::decode(r)?;
                    entries.push((k, v));
                    rest = r;
                }
                Some((Self::Dict(entries), &rest[1..]))
            }
            b'0'..=b'9' => {
                let colon = input.iter().position(|&c| c == b':')?;
                let len: usize = std::str::from_utf8(&input[..colon]).ok()?.parse().ok()?;
                let body = input.get(colon + 1..colon + 1 + len)?;
                Some((Self::Bytes(body.to_vec()), &input[colon + 1 + len..]))
            }
            _ => None,
        }
    }

    /// The string value of `key` in a dictionary.
    fn get_str(&self, key: &str) -> Option<String> {
        let Self::Dict(entries) = self else {
            return None;
        };
        entries.iter().find_map(|(k, v)| match v {
            Self::Bytes(b) if k == key.as_bytes() => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
    }
}

/// The rtpengine daemon, a child process killed when this is dropped (also on a panic).
struct Rtpengine {
    child: Child,
    control: std::net::UdpSocket,
    cookie: u64,
    threads: u64,
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rtpengine {
    /// Starts the daemon in the foreground, userspace only, and waits for it to answer a `ping`.
    fn start(streams: usize) -> Result<Self, String> {
        let bin = std::env::var("RTPENGINE").unwrap_or_else(|_| "rtpengine".into());
        let threads = env("RTPENGINE_THREADS", 1);
        let port_min = env("RTPENGINE_PORT_MIN", 25000);
        // Two legs per stream, an RTP/RTCP pair each, and room to spare.
        let port_max = port_min + 8 * streams as u64 + 64;
        // A free port for the control socket: bind one, note it, let it go.
        let ng = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_err(|e| format!("no free control port: {e}"))?;
        let log = std::env::temp_dir().join("bench-media-rtpengine.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&bin)
            .args([
                "--config-file=none",
                "--table=-1",
                "--foreground",
                "--log-stderr",
                "--log-level=3",
                "--interface=127.0.0.1",
                &format!("--listen-ng={ng}"),
                &format!("--port-min={port_min}"),
                &format!("--port-max={port_max}"),
                &format!("--num-threads={threads}"),
                "--delete-delay=0",
                "--timeout=60",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e} (apt-get install rtpengine-daemon)"))?;
        let control = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        control.connect(ng).map_err(|e| e.to_string())?;
        control
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let mut daemon = Self {
            child,
            control,
            cookie: 0,
            threads,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{bin} exited ({status}): {}", tail.trim()));
            }
            let ping = Bencode::dict(&[("command", Bencode::str("ping"))]);
            if let Ok(reply) = daemon.request(&ping)
                && reply.get_str("result").as_deref() == Some("pong")
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{bin} did not answer on {ng} within 5 s"));
            }
        }
        daemon
            .control
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one ng command (`<cookie> <bencoded dictionary>`) and returns the reply's dictionary.
    fn request(&mut self, message: &Bencode) -> Result<Bencode, String> {
        self.cookie += 1;
        let cookie = format!("bench{}", self.cookie);
        let mut out = format!("{cookie} ").into_bytes();
        message.encode(&mut out);
        self.control.send(&out).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65536];
        loop {
            let len = self.control.recv(&mut buf).map_err(|e| e.to_string())?;
            let reply = &buf[..len];
            // A late reply to an earlier (timed out) request has another cookie: skip it.
            let Some(rest) = reply
                .strip_prefix(cookie.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            else {
                continue;
            };
            let (value, _) = Bencode::decode(rest).ok_or("undecodable ng reply")?;
            return Ok(value);
        }
    }

    /// Sets up one call: `offer` from A, `answer` from B. Returns where A and B must send.
    fn call(
        &mut self,
        i: usize,
        a: SocketAddr,
        b: SocketAddr,
    ) -> Result<(SocketAddr, SocketAddr), String> {
        let call_id = Bencode::str(&format!("bench-media-{i}"));
        let offer = Bencode::dict(&[
            ("command", Bencode::str("offer")),
            ("call-id", call_id.clone()),
            ("from-tag", Bencode::str("a")),
            ("sdp", Bencode::str(&sdp(a))),
        ]);
        let reply = self.request(&offer)?;
        // The offer's SDP goes to B: its address is where B sends.
        let b_dest = sdp_address(&reply)?;
        let answer = Bencode::dict(&[
            ("command", Bencode::str("answer")),
            ("call-id", call_id),
            ("from-tag", Bencode::str("a")),
            ("to-tag", Bencode::str("b")),
            ("sdp", Bencode::str(&sdp(b))),
        ]);
        let reply = self.request(&answer)?;
        let a_dest = sdp_address(&reply)?;
        Ok((a_dest, b_dest))
    }
}

/// A one-stream audio SDP (PCMU) naming `addr`.
fn sdp(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// The media address in the SDP of an ng reply (`c=` and the first `m=` line).
fn sdp_address(reply: &Bencode) -> Result<SocketAddr, String> {
    if reply.get_str("result").as_deref() != Some("ok") {
        return Err(format!(
            "ng error: {}",
            reply.get_str("error-reason").unwrap_or_default()
        ));
    }
    let sdp = reply.get_str("sdp").ok_or("ng reply without sdp")?;
    let mut ip = None;
    let mut port = None;
    for line in sdp.lines() {
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = c.trim().parse().ok();
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            port = port.or_else(|| m.split_whitespace().next()?.parse::<u16>().ok());
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        _ => Err(format!("no c=/m= address in the reply's SDP: {sdp}")),
    }
}

/// A relayed run's figures, for its line and the summary.
struct Figures {
    pps: f64,
    loss_pct: f64,
    cpu_per_1000: f64,
    p50_added: u64,
    p99_added: u64,
}

fn figures(x: &Results, direct: &Results) -> Figures {
    Figures {
        pps: x.received as f64 / x.secs,
        loss_pct: 100.0 * (1.0 - x.received as f64 / x.sent.max(1) as f64).max(0.0),
        cpu_per_1000: x.relay_cpu_ms * 1000.0 / x.received.max(1) as f64,
        p50_added: pct(&x.latencies_us, 0.5).saturating_sub(pct(&direct.latencies_us, 0.5)),
        p99_added: pct(&x.latencies_us, 0.99).saturating_sub(pct(&direct.latencies_us, 0.99)),
    }
}

/// The median of the rounds' figures, each figure on its own; the loss is the worst round's.
fn median(rounds: &[Figures]) -> Figures {
    let mid = |f: &dyn Fn(&Figures) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        pps: mid(&|f| f.pps),
        loss_pct: rounds.iter().map(|f| f.loss_pct).fold(0.0, f64::max),
        cpu_per_1000: mid(&|f| f.cpu_per_1000),
        p50_added: mid(&|f| f.p50_added as f64) as u64,
        p99_added: mid(&|f| f.p99_added as f64) as u64,
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// Both sides of `streams` streams, each side a socket on 127.0.0.1.
fn socket_pairs(streams: usize) -> Vec<(UdpSocket, UdpSocket)> {
    (0..streams).map(|_| (sock(), sock())).collect()
}

/// Prints one run's line.
fn line(name: &str, x: &Results, expected: f64, cpu: &str) {
    println!(
        "{name}: sent {} (target {expected:.0}), received {} ({:.2} %), p50 {} us, p99 {} us, {cpu}",
        x.sent,
        x.received,
        100.0 * x.received as f64 / x.sent.max(1) as f64,
        pct(&x.latencies_us, 0.5),
        pct(&x.latencies_us, 0.99),
    );
}

fn main() {
    let streams = env("STREAMS", 500) as usize;
    let pps = env("PPS", 50);
    let secs = env("SECS", 5);
    let rounds = env("ROUNDS", 3).max(1);
    let epoch = Instant::now();
    println!(
        "bench-media: {streams} streams x 2 directions x {pps} packets/s, {secs} s per run, {rounds} rounds"
    );

    // Direct: endpoint A sends to endpoint B and back.
    let mut direct = Vec::new();
    for (a, b) in socket_pairs(streams) {
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        direct.push(Stream {
            sock: a,
            dest: ba,
            seq: 0,
        });
        direct.push(Stream {
            sock: b,
            dest: aa,
            seq: 0,
        });
    }

    // Relayed: A → relay leg A → relay leg B → B, and back.
    let mut relay = Relay::new("127.0.0.1".parse().expect("ip")).expect("relay thread");
    let base = env("RTP_BASE", 21000) as u16;
    let mut relayed = Vec::new();
    for (i, (a, b)) in socket_pairs(streams).into_iter().enumerate() {
        let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let pa = base + (i as u16) * 4;
        let pb = pa + 2;
        let token = i as u64 + 1;
        relay.open(token, 0, pa).expect("open A");
        relay.open(token, 1, pb).expect("open B");
        relay.set_peer(
            token,
            0,
            aa,
            SocketAddr::new(aa.ip(), aa.port() + 1),
            vec![(0, 8000)],
            true,
        );
        relay.set_peer(
            token,
            1,
            ba,
            SocketAddr::new(ba.ip(), ba.port() + 1),
            vec![(0, 8000)],
            true,
        );
        relayed.push(Stream {
            sock: a,
            dest: SocketAddr::from(([127, 0, 0, 1], pa)),
            seq: 0,
        });
        relayed.push(Stream {
            sock: b,
            dest: SocketAddr::from(([127, 0, 0, 1], pb)),
            seq: 0,
        });
    }

    // rtpengine: A → rtpengine → B, and back, with calls set up over the ng protocol.
    let mut reference = Rtpengine::start(streams).and_then(|mut daemon| {
        let mut through = Vec::new();
        for (i, (a, b)) in socket_pairs(streams).into_iter().enumerate() {
            let (aa, ba) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
            let (a_dest, b_dest) = daemon
                .call(i, aa, ba)
                .map_err(|e| format!("call {i} setup failed: {e}"))?;
            through.push(Stream {
                sock: a,
                dest: a_dest,
                seq: 0,
            });
            through.push(Stream {
                sock: b,
                dest: b_dest,
                seq: 0,
            });
        }
        Ok((daemon, through))
    });
    if let Err(e) = &reference {
        println!("rtpengine: unavailable: {e}");
    }
    std::thread::sleep(Duration::from_millis(200));

    // Rounds: the direct run, then both relays, in turns (which goes first alternates), so that
    // a change in the machine's load falls on both alike.
    let expected = streams as f64 * 2.0 * pps as f64 * secs as f64;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 1..=rounds {
        let d = run(&mut direct, pps, secs, epoch, None);
        let tag = format!("[{round}/{rounds}]");
        line(
            &format!("direct    {tag}"),
            &d,
            expected,
            &format!("process CPU {:.0} ms (the generator)", d.cpu_ms),
        );
        for turn in 0..2 {
            if (turn == 0) == (round % 2 == 1) {
                let r = run(
                    &mut relayed,
                    pps,
                    secs,
                    epoch,
                    Some(("self", Some("media-relay"))),
                );
                line(
                    &format!("relayed   {tag}"),
                    &r,
                    expected,
                    &format!(
                        "relay CPU {:.0} ms (1 thread; process CPU {:.0} ms, {:.0} ms over the direct run)",
                        r.relay_cpu_ms,
                        r.cpu_ms,
                        r.cpu_ms - d.cpu_ms
                    ),
                );
                ours.push(figures(&r, &d));
            } else if let Ok((daemon, through)) = &mut reference {
                let pid = daemon.pid().to_string();
                let x = run(through, pps, secs, epoch, Some((&pid, None)));
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
                line(
                    &format!("rtpengine {tag}"),
                    &x,
                    expected,
                    &format!(
                        "relay CPU {:.0} ms ({tasks} threads, {} of them workers; process CPU of the generator {:.0} ms)",
                        x.relay_cpu_ms, daemon.threads, x.cpu_ms
                    ),
                );
                theirs.push((figures(&x, &d), tasks));
            }
        }
    }
    drop(relay);

    let u = median(&ours);
    let mut summary = format!(
        "SUMMARY bench-media streams={streams} pps_per_stream={pps} secs={secs} rounds={rounds} relayed_pps={:.0} cpu_ms_per_1000_packets={:.3} added_latency_p50_us={} added_latency_p99_us={} loss_pct={:.3} threads=1",
        u.pps, u.cpu_per_1000, u.p50_added, u.p99_added, u.loss_pct
    );
    match &reference {
        Ok((daemon, _)) => {
            let tasks = theirs.iter().map(|t| t.1).max().unwrap_or(0);
            let figs: Vec<Figures> = theirs.into_iter().map(|t| t.0).collect();
            let e = median(&figs);
            summary.push_str(&format!(
                " rtpengine_pps={:.0} rtpengine_cpu_ms_per_1000_packets={:.3} rtpengine_added_latency_p50_us={} rtpengine_added_latency_p99_us={} rtpengine_loss_pct={:.3} rtpengine_threads={tasks} rtpengine_workers={} ratio_pps={} ratio_cpu_per_1000={} ratio_p99_added={}",
                e.pps,
                e.cpu_per_1000,
                e.p50_added,
                e.p99_added,
                e.loss_pct,
                daemon.threads,
                ratio(u.pps, e.pps),
                ratio(u.cpu_per_1000, e.cpu_per_1000),
                ratio(u.p99_added as f64, e.p99_added as f64),
            ));
        }
        Err(_) => summary.push_str(" rtpengine=unavailable"),
    }
    println!("{summary}");
}
