//! The pair's protocol on the simulator: settling, replayed and forged pair messages, and
//! registration sync at scale.

use std::time::{Duration, Instant};

use super::{Datagram, Sim, pair_config};
use crate::net::{Flow, Proto};
use crate::pair::Role;
use crate::registrar::{Binding, Origin};
use crate::sip::NameAddr;

const MAIN: &str = "127.0.0.1:5060";
const STANDBY: &str = "127.0.0.1:5062";

fn pair(seed: u64, extra: &str) -> Sim {
    let mut sim = Sim::new(seed);
    sim.add_node(pair_config("main-1", "main", MAIN, STANDBY, extra));
    sim.add_node(pair_config("standby-1", "standby", STANDBY, MAIN, extra));
    sim
}

/// Call-IDs of the calls endpoint `i` has up (answered).
fn answered(sim: &Sim, i: usize) -> Vec<String> {
    sim.endpoints
        .get(i)
        .map(|e| {
            e.dialogs
                .values()
                .filter(|d| !d.remote_tag.is_empty())
                .map(|d| d.call_id.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn role(sim: &Sim, i: usize) -> Option<Role> {
    sim.server(i).map(crate::server::Server::role)
}

/// Run until the main is active and the stand-by stand-by (at most 5 s).
fn settle(sim: &mut Sim) {
    assert!(
        sim.run_until(Duration::from_secs(5), Duration::from_millis(10), settled)
            .is_some(),
        "the pair did not settle"
    );
}

fn settled(sim: &Sim) -> bool {
    role(sim, 0) == Some(Role::Active) && role(sim, 1) == Some(Role::Standby)
}

#[test]
fn the_pair_settles_main_active_standby_standby() {
    let mut sim = pair(1, "");
    let took = sim.run_until(Duration::from_secs(5), Duration::from_millis(10), settled);
    assert!(took.is_some(), "not settled");
    sim.run_for(Duration::from_secs(5));
    assert!(settled(&sim), "flapped");
}

fn keepalive_from_main(d: &Datagram) -> bool {
    d.from.to_string() == MAIN && d.to.to_string() == STANDBY && d.bytes.starts_with(b"OPTIONS ")
}

/// Keep-alives captured from the link and replayed once the main is dead neither delay the
/// takeover nor count as the peer being alive.
#[test]
fn replayed_keepalives_do_not_delay_the_takeover() {
    let mut detection = Vec::new();
    for replay in [false, true] {
        let mut sim = pair(7, "");
        assert!(
            sim.run_until(Duration::from_secs(5), Duration::from_millis(10), settled)
                .is_some()
        );
        sim.tap(keepalive_from_main);
        sim.run_for(Duration::from_secs(3));
        let captured = std::mem::take(&mut sim.tapped);
        assert!(
            captured.len() >= 10,
            "{} keep-alives captured",
            captured.len()
        );
        sim.kill(0);
        let killed = sim.now;
        let mut replays = captured.iter().cycle();
        let mut became = None;
        for _ in 0..200 {
            if replay && let Some(d) = replays.next() {
                sim.inject(d.clone());
            }
            sim.run_for(Duration::from_millis(50));
            if role(&sim, 1) == Some(Role::Active) {
                became = Some(sim.now.saturating_duration_since(killed));
                break;
            }
        }
        let became = became.unwrap_or_else(|| panic!("no takeover (replay {replay})"));
        if replay {
            let (_, refused, _) = sim.server(1).map(|s| s.pair_refusals()).unwrap_or_default();
            assert!(refused > 0, "replays were not refused");
        }
        detection.push(became);
    }
    let (plain, replayed) = (detection[0], detection[1]);
    assert!(
        replayed <= plain + Duration::from_millis(100),
        "replays delayed the takeover: {replayed:?} against {plain:?}"
    );
    assert!(plain < Duration::from_millis(1500), "detection {plain:?}");
}

fn bind(sim: &mut Sim, i: usize, aor: &str, port: u32) {
    let now = sim.now;
    let Some(s) = sim.server_mut(i) else {
        return;
    };
    let uri = format!(
        "<sip:{aor}@10.{}.{}.{}:5060>",
        (port >> 16) & 255,
        (port >> 8) & 255,
        port & 255
    );
    let contact = NameAddr::parse(&uri).expect("contact");
    s.registrar_mut().location_mut().bind(
        aor,
        Binding {
            contact,
            expires_at: now + Duration::from_secs(3600),
            source: Some(Flow::udp("192.0.2.10:5060".parse().expect("addr"))),
            call_id: format!("reg-{port}"),
            cseq: 1,
            origin: Origin::Local,
            registered_at_s: 1,
        },
    );
}

fn bindings(sim: &Sim, i: usize) -> usize {
    sim.server(i)
        .map_or(0, |s| s.registrar().location().binding_count())
}

fn notify_to_standby(d: &Datagram) -> bool {
    d.from.to_string() == MAIN && d.to.to_string() == STANDBY && d.bytes.starts_with(b"NOTIFY ")
}

/// 100,000 bindings (some AORs with several contacts) reach the stand-by in chunks of at
/// most 64 KB on the state channel; a later change follows within a keep-alive interval.
#[test]
fn registration_sync_of_100_000_bindings() {
    let mut sim = pair(3, "");
    sim.kill(1);
    for i in 0..90_000u32 {
        bind(&mut sim, 0, &format!("u{i}"), i);
    }
    for i in 0..5_000u32 {
        bind(&mut sim, 0, &format!("u{i}"), 200_000 + i);
        bind(&mut sim, 0, &format!("u{i}"), 300_000 + i);
    }
    assert_eq!(bindings(&sim, 0), 100_000);
    sim.tap(notify_to_standby);
    let cpu = Instant::now();
    sim.start_node(1);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(20), |s| {
        bindings(s, 1) == 100_000
    });
    let cpu = cpu.elapsed();
    let took = took.unwrap_or_else(|| panic!("the stand-by knows {} of 100000", bindings(&sim, 1)));
    let notifies = sim.tapped.len();
    let bytes: usize = sim.tapped.iter().map(|d| d.bytes.len()).sum();
    let biggest = sim.tapped.iter().map(|d| d.bytes.len()).max().unwrap_or(0);
    println!(
        "regsync 100000 bindings: {notifies} NOTIFYs, {bytes} bytes, largest {biggest} B, \
         virtual {took:?}, cpu {cpu:?} (debug build, both nodes)"
    );
    assert!(
        sim.tapped.iter().all(|d| d.proto == Proto::Tcp),
        "bulk state on the TCP channel"
    );
    assert!(biggest < 64 * 1024, "largest NOTIFY {biggest} B");
    assert!(took < Duration::from_secs(10));
    // A later change reaches the stand-by within one keep-alive interval (200 ms).
    bind(&mut sim, 0, "late", 999_999);
    let took = sim.run_until(Duration::from_secs(2), Duration::from_millis(5), |s| {
        bindings(s, 1) == 100_001
    });
    assert!(
        took.is_some_and(|t| t <= Duration::from_millis(200)),
        "{took:?}"
    );
}

/// A lost NOTIFY (version gap) makes the stand-by subscribe again and get the full state.
#[test]
fn a_lost_reg_notify_brings_the_full_state_again() {
    let mut sim = pair(5, "");
    settle(&mut sim);
    sim.run_for(Duration::from_secs(1));
    bind(&mut sim, 0, "alice", 1);
    assert!(
        sim.run_until(
            Duration::from_secs(2),
            Duration::from_millis(5),
            |s| bindings(s, 1) == 1
        )
        .is_some()
    );
    // The next NOTIFY is lost on the (reliable) channel: cut the link for a moment.
    let (m, sb) = (MAIN.parse().expect("addr"), STANDBY.parse().expect("addr"));
    sim.cut.insert((m, sb));
    bind(&mut sim, 0, "bob", 2);
    sim.run_for(Duration::from_millis(30));
    sim.cut.clear();
    bind(&mut sim, 0, "carol", 3);
    let took = sim.run_until(Duration::from_secs(5), Duration::from_millis(10), |s| {
        bindings(s, 1) == 3
    });
    assert!(
        took.is_some(),
        "the stand-by knows {} of 3",
        bindings(&sim, 1)
    );
}

/// A reg NOTIFY altered on the way (or forged) is refused; so is one replayed.
#[test]
fn forged_and_replayed_reg_notifies_are_refused() {
    let mut sim = pair(9, "");
    settle(&mut sim);
    sim.tap(notify_to_standby);
    bind(&mut sim, 0, "alice", 1);
    assert!(
        sim.run_until(
            Duration::from_secs(2),
            Duration::from_millis(5),
            |s| bindings(s, 1) == 1
        )
        .is_some()
    );
    let real = sim.tapped.last().cloned().expect("a NOTIFY");
    let text = String::from_utf8_lossy(&real.bytes).into_owned();
    let forged = text.replace("alice", "mallo");
    assert_ne!(forged, text);
    let (before_refused, before_replays, _) =
        sim.server(1).map(|s| s.pair_refusals()).unwrap_or_default();
    let _ = before_refused;
    // Later than any transaction would absorb it as a retransmission: the replay first,
    // then the forgery (its own branch, so it is not taken for a retransmission either).
    sim.run_for(Duration::from_secs(40));
    sim.inject(real.clone());
    sim.run_for(Duration::from_millis(100));
    let forged = forged.replace("branch=z9hG4bK", "branch=z9hG4bKforged");
    sim.inject(Datagram {
        bytes: bytes::Bytes::from(forged.into_bytes()),
        ..real.clone()
    });
    sim.run_for(Duration::from_millis(100));
    let now = sim.now;
    let learned = sim
        .server(1)
        .map(|s| s.registrar().location().lookup("mallo", now).len())
        .unwrap_or(0);
    assert_eq!(learned, 0, "the forged binding was learned");
    let (_, replays, _) = sim.server(1).map(|s| s.pair_refusals()).unwrap_or_default();
    assert!(
        replays > before_replays,
        "the replayed NOTIFY was not refused as a replay"
    );
}

/// A slow epoch write holds the takeover (no calls accepted meanwhile); a failing one keeps
/// the node stand-by, whatever the main does.
#[test]
fn the_epoch_is_durable_before_the_node_is_active() {
    let mut sim = pair(11, "");
    settle(&mut sim);
    if let Some(d) = sim.disk(1) {
        d.lock().expect("disk").latency = Duration::from_millis(500);
    }
    sim.kill(0);
    let taking = sim.run_until(Duration::from_secs(3), Duration::from_millis(5), |s| {
        role(s, 1) == Some(Role::TakingOver)
    });
    assert!(taking.is_some(), "never started taking over");
    assert!(
        !sim.server(1)
            .is_some_and(crate::server::Server::accepts_calls)
    );
    let active = sim.run_until(Duration::from_secs(3), Duration::from_millis(5), |s| {
        role(s, 1) == Some(Role::Active)
    });
    let active = active.expect("active once durable");
    assert!(
        active >= Duration::from_millis(490),
        "active after {active:?}, before the write"
    );
    assert_eq!(
        sim.disk(1).map(|d| d.lock().expect("disk").epoch),
        sim.server(1).map(|s| s.epoch())
    );

    let mut sim = pair(12, "");
    settle(&mut sim);
    if let Some(d) = sim.disk(1) {
        d.lock().expect("disk").failing = true;
    }
    sim.kill(0);
    let never = sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| {
        role(s, 1) == Some(Role::Active)
    });
    assert_eq!(never, None, "became active without a durable epoch");
    assert_eq!(role(&sim, 1), Some(Role::Standby));
}

const LEFT: &str = "127.0.0.2:5070";
const RIGHT: &str = "127.0.0.3:5070";

fn trunks() -> String {
    format!(
        "[[trunks]]\nname = \"left\"\naddress = \"{LEFT}\"\nprefixes = [\"8\"]\n\
         [[trunks]]\nname = \"right\"\naddress = \"{RIGHT}\"\nprefixes = [\"9\"]\n"
    )
}

/// Takeover under steady load, endpoints with small receive buffers (a stock socket drops a
/// burst): 1,000 calls held while new ones arrive at 100 per second; the main dies. Every
/// call answered before the death — also those answered in its last keep-alive interval —
/// is re-bound and its later BYE is answered 200 by the new active, with almost no
/// re-INVITE lost to the endpoints' buffers.
#[test]
fn takeover_under_load_rebinds_every_call_without_overwhelming_endpoints() {
    let mut sim = pair(21, &trunks());
    let left = sim.add_endpoint(super::Endpoint::new(LEFT.parse().expect("addr"), 64));
    let right = sim.add_endpoint(super::Endpoint::new(RIGHT.parse().expect("addr"), 64));
    settle(&mut sim);
    let main: std::net::SocketAddr = MAIN.parse().expect("addr");
    let standby: std::net::SocketAddr = STANDBY.parse().expect("addr");
    // 100 calls a second for 10 s: 1,000 calls up.
    for _ in 0..100 {
        for _ in 0..10 {
            sim.with_endpoint(left, |e, now| e.call(now, main, "91234"));
        }
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_millis(50));
    let up = sim.endpoints[left].confirmed();
    assert!(up >= 990, "{up} calls up before the kill");
    let drops_before = sim.endpoints[right].stats.dropped + sim.endpoints[left].stats.dropped;
    let answered_before: Vec<String> = answered(&sim, left);
    sim.kill(0);
    let killed = sim.now;
    // New calls keep coming, now to the stand-by (the trunk fails over).
    let mut active_at = None;
    for _ in 0..100 {
        for _ in 0..10 {
            sim.with_endpoint(left, |e, now| e.call(now, standby, "91234"));
        }
        sim.run_for(Duration::from_millis(100));
        if active_at.is_none() && role(&sim, 1) == Some(Role::Active) {
            active_at = Some(sim.now.saturating_duration_since(killed));
        }
    }
    let report = sim
        .server(1)
        .and_then(crate::server::Server::takeover_report);
    println!("takeover after {active_at:?}: {report:?}");
    let report = report.expect("report");
    assert_eq!(report["in_progress"], false, "{report}");
    let rebind_ms = report["rebind_ms"].as_u64().unwrap_or(u64::MAX);
    println!("last re-bind {rebind_ms} ms after the takeover began");
    // Every call answered before the kill ends with a BYE answered 200 by the new active.
    let drops_after_takeover =
        sim.endpoints[right].stats.dropped + sim.endpoints[left].stats.dropped;
    println!(
        "endpoint drops: {drops_before} before the kill, {drops_after_takeover} after the takeover"
    );
    // Callers hang up at 100 a second.
    let mut hung = 0;
    for ids in answered_before.chunks(10) {
        for id in ids {
            if sim
                .with_endpoint(left, |e, now| e.hang_up(now, id))
                .unwrap_or(false)
            {
                hung += 1;
            }
        }
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(40));
    let ls = sim.endpoints[left].stats;
    let rs = sim.endpoints[right].stats;
    println!("left {ls:?}\nright {rs:?}");
    assert_eq!(
        hung,
        answered_before.len(),
        "some calls were no longer up at the caller"
    );
    assert_eq!(ls.byes_failed, 0, "BYEs not answered 200: {ls:?}");
    assert!(ls.byes_ok >= answered_before.len() as u64);
    let reinvites = ls.reinvites + rs.reinvites;
    let lost = drops_after_takeover.saturating_sub(drops_before);
    assert!(
        lost * 100 <= reinvites.max(1),
        "{lost} re-INVITEs lost or retransmitted of {reinvites}"
    );
}

fn calls_up(sim: &mut Sim, left: usize, n: usize) -> Vec<String> {
    let main: std::net::SocketAddr = MAIN.parse().expect("addr");
    for _ in 0..n {
        sim.with_endpoint(left, |e, now| e.call(now, main, "91234"));
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_millis(300));
    answered(sim, left)
}

/// A hang-up that reaches the new active before its call's re-bind started ends the call at
/// once on both legs (the callee gets its BYE), and the call is not re-bound afterwards.
#[test]
fn a_bye_before_the_rebind_ends_the_call_on_both_legs() {
    let mut sim = pair(31, &trunks());
    let left = sim.add_endpoint(super::Endpoint::new(LEFT.parse().expect("addr"), 64));
    let right = sim.add_endpoint(super::Endpoint::new(RIGHT.parse().expect("addr"), 4096));
    settle(&mut sim);
    let calls = calls_up(&mut sim, left, 200);
    assert_eq!(calls.len(), 200);
    // From now on the callee is slow (a busy SBC): 20 ms a message.
    sim.endpoints[right].service = Duration::from_millis(20);
    sim.kill(0);
    assert!(
        sim.run_until(Duration::from_secs(3), Duration::from_millis(5), |s| role(
            s, 1
        )
            == Some(Role::Active))
            .is_some()
    );
    sim.run_for(Duration::from_millis(50));
    // The slow callee holds the re-binds back: most calls are still waiting. Their callers
    // hang up through the new active.
    let standby: std::net::SocketAddr = STANDBY.parse().expect("addr");
    let last: Vec<String> = calls.iter().rev().take(50).cloned().collect();
    for id in &last {
        assert!(
            sim.with_endpoint(left, |e, now| e.hang_up_via(now, id, Some(standby)))
                .unwrap_or(false)
        );
    }
    sim.run_for(Duration::from_secs(60));
    let report = sim
        .server(1)
        .and_then(crate::server::Server::takeover_report)
        .expect("report");
    println!("{report}");
    let early = report["ended_before_rebind"].as_u64().unwrap_or(0);
    assert!(
        early > 0,
        "no BYE arrived before its call's re-bind: {report}"
    );
    let ls = sim.endpoints[left].stats;
    assert_eq!(ls.byes_ok, 50, "{ls:?}");
    assert_eq!(ls.byes_failed, 0);
    assert_eq!(
        sim.endpoints[right].stats.byes_received, 50,
        "callees got their BYE"
    );
    assert_eq!(report["recovered"].as_u64(), Some(200 - early), "{report}");
}

/// An endpoint that answers re-bind re-INVITEs with 503 (overloaded) gets them again later:
/// no call is dropped for it.
#[test]
fn rebinds_refused_with_503_are_tried_again() {
    let mut sim = pair(41, &trunks());
    let left = sim.add_endpoint(super::Endpoint::new(LEFT.parse().expect("addr"), 64));
    let right = sim.add_endpoint(super::Endpoint::new(RIGHT.parse().expect("addr"), 64));
    settle(&mut sim);
    let calls = calls_up(&mut sim, left, 100);
    assert_eq!(calls.len(), 100);
    sim.endpoints[left].refuse_reinvites = 40;
    sim.kill(0);
    sim.run_for(Duration::from_secs(30));
    let report = sim
        .server(1)
        .and_then(crate::server::Server::takeover_report)
        .expect("report");
    assert_eq!(report["recovered"].as_u64(), Some(100), "{report}");
    assert!(report["deferred"].as_u64().unwrap_or(0) >= 40, "{report}");
    assert_eq!(sim.endpoints[left].stats.refused, 40);
    for id in &calls {
        assert!(
            sim.with_endpoint(left, |e, now| e.hang_up(now, id))
                .unwrap_or(false)
        );
        sim.run_for(Duration::from_millis(5));
    }
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.endpoints[left].stats.byes_ok, 100);
    assert_eq!(sim.endpoints[right].stats.byes_received, 100);
}

/// A network split with calls set up on both sides: once it heals, the node that steps down
/// hands its calls to the winner, which re-binds them; every call then ends through the
/// winner, with exactly one CDR.
#[test]
fn after_a_split_heals_every_call_has_one_owner_and_one_cdr() {
    let mut sim = pair(51, &trunks());
    let left = sim.add_endpoint(super::Endpoint::new(LEFT.parse().expect("addr"), 64));
    let right = sim.add_endpoint(super::Endpoint::new(RIGHT.parse().expect("addr"), 64));
    settle(&mut sim);
    let (main, standby): (std::net::SocketAddr, std::net::SocketAddr) =
        (MAIN.parse().expect("addr"), STANDBY.parse().expect("addr"));
    let before = calls_up(&mut sim, left, 20);
    assert_eq!(before.len(), 20);
    // Split: the nodes no longer hear each other; both end up active.
    sim.cut.insert((main, standby));
    sim.cut.insert((standby, main));
    let both = sim.run_until(Duration::from_secs(5), Duration::from_millis(10), |s| {
        role(s, 0) == Some(Role::Active) && role(s, 1) == Some(Role::Active)
    });
    assert!(both.is_some(), "not both active during the split");
    sim.run_for(Duration::from_secs(1));
    // Calls on both sides of the split.
    for i in 0..20 {
        let via = if i % 2 == 0 { main } else { standby };
        sim.with_endpoint(left, |e, now| e.call(now, via, "91234"));
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_millis(500));
    let up: Vec<String> = answered(&sim, left);
    assert_eq!(up.len(), 40);
    // Heal.
    sim.cut.clear();
    let one = sim.run_until(Duration::from_secs(5), Duration::from_millis(10), |s| {
        [role(s, 0), role(s, 1)]
            .iter()
            .filter(|r| **r == Some(Role::Active))
            .count()
            == 1
    });
    assert!(one.is_some(), "still two actives after healing");
    sim.run_for(Duration::from_secs(5));
    let winner = if role(&sim, 0) == Some(Role::Active) {
        0
    } else {
        1
    };
    let winner_addr = sim.nodes[winner].addr;
    let owned = sim.server(winner).map_or(0, |s| s.b2bua().call_count());
    assert_eq!(owned, 40, "the winner owns every call");
    let loser = 1 - winner;
    assert_eq!(sim.server(loser).map_or(0, |s| s.b2bua().call_count()), 0);
    // Every call ends through the winner.
    for id in &up {
        let target = sim.endpoints[left].dialogs.get(id).map(|d| d.remote_target);
        assert_eq!(
            target,
            Some(winner_addr),
            "call {id} is not bound to the winner"
        );
        assert!(
            sim.with_endpoint(left, |e, now| e.hang_up(now, id))
                .unwrap_or(false)
        );
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(5));
    let ls = sim.endpoints[left].stats;
    assert_eq!((ls.byes_ok, ls.byes_failed), (40, 0), "{ls:?}");
    assert_eq!(sim.endpoints[right].stats.byes_received, 40);
    let mut per_call: std::collections::HashMap<String, usize> =
        std::collections::HashMap::default();
    for (_, c) in &sim.cdrs {
        *per_call.entry(c.token.clone()).or_default() += 1;
    }
    assert_eq!(
        per_call.len(),
        40,
        "CDRs: {:?}",
        sim.cdrs
            .iter()
            .map(|(n, c)| (n, &c.end_reason))
            .collect::<Vec<_>>()
    );
    assert!(
        per_call.values().all(|n| *n == 1),
        "a call with several CDRs: {per_call:?}"
    );
}

/// Seeds that once broke an invariant (the bug each found is in the note of the issue
/// "Deterministic simulation of the pair"), and a few more: every run keeps every invariant.
#[test]
fn fixed_seeds_keep_every_invariant() {
    // 2: duplicate CDR after a re-bind answered 481 (the call had ended on the old active);
    // 19: the same, 481 on the second leg; 29, 934: registrations lost when a restarted node
    // won; 129, 503, 910: stale calls after a split whose winner crashed; 304: a hand-over
    // to a slow disk made the old active reclaim; 912, 986: ringing calls failed twice;
    // 1039: a BYE that reached the wrong node; 1823: both legs hung up at once, one to each
    // node of a split, while the winner re-bound the call (two CDRs); 7420: the simulated
    // phone took a retransmitted 2xx as a new remote target (the model's bug, not the node's);
    // 36, 116, 253: the active crashed and restarted at once (as stand-by) before the stand-by
    // missed its keep-alives: two stand-bys, nobody active; 446, 3599, 5615, 5924: a
    // restarted node's keep-alives fell in the replay window of its previous boot; 3315: the
    // restarted main took over at start-up while the stand-by's takeover waited on a slow
    // disk at the same epoch, re-bound the main's live call, ended it and lost the tie (the
    // main kept the call).
    let regressions = [
        2, 5, 8, 19, 29, 36, 116, 129, 253, 304, 446, 503, 561, 597, 710, 800, 910, 912, 934, 986,
        1039, 1823, 3315, 3599, 5615, 5924, 7420,
    ];
    let more = 3000..3010;
    let mut failed = Vec::new();
    for seed in regressions.into_iter().chain(more) {
        let faults = super::run::schedule(seed);
        let r = super::run::run(seed, &faults);
        if !r.violations.is_empty() {
            failed.push(format!(
                "seed {seed}: {:?}\n  {}",
                r.violations,
                r.trace.join("\n  ")
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The pair across a WAN: every link 40 ms ± 10 ms one way, 1 % loss, reordering, and UDP
/// datagrams over 1,400 bytes dropped (fragments a firewall discards). 2,000 calls up and
/// 10,000 registrations synchronised; the main dies: the stand-by detects it, every call is
/// re-bound and its BYE completes through the new active, every registration is known.
#[test]
fn across_a_wan_2000_calls_and_10000_registrations_survive_a_kill() {
    let mut sim = pair(61, &trunks());
    sim.faults.delay = Duration::from_millis(35);
    sim.faults.jitter = Duration::from_millis(10);
    sim.faults.loss = 0.01;
    sim.faults.max_udp = Some(1400);
    let left = sim.add_endpoint(super::Endpoint::new(LEFT.parse().expect("addr"), 64));
    let right = sim.add_endpoint(super::Endpoint::new(RIGHT.parse().expect("addr"), 64));
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(20), settled)
            .is_some()
    );
    for i in 0..10_000u32 {
        bind(&mut sim, 0, &format!("p{i}"), i);
    }
    let main: std::net::SocketAddr = MAIN.parse().expect("addr");
    for _ in 0..200 {
        for _ in 0..10 {
            sim.with_endpoint(left, |e, now| e.call(now, main, "91234"));
        }
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(3));
    let up: Vec<String> = answered(&sim, left);
    assert_eq!(up.len(), 2000, "calls up across the WAN");
    assert_eq!(
        bindings(&sim, 1),
        10_000,
        "registrations synchronised before the kill"
    );
    let oversize_before = sim.faults.dropped_oversize;
    sim.kill(0);
    let detected = sim
        .run_until(Duration::from_secs(5), Duration::from_millis(10), |s| {
            role(s, 1) == Some(Role::Active)
        })
        .expect("takeover");
    sim.run_for(Duration::from_secs(20));
    let report = sim
        .server(1)
        .and_then(crate::server::Server::takeover_report)
        .expect("report");
    println!("WAN: detection {detected:?}; report {report}");
    assert_eq!(report["recovered"].as_u64(), Some(2000), "{report}");
    assert_eq!(bindings(&sim, 1), 10_000);
    for ids in up.chunks(20) {
        for id in ids {
            assert!(
                sim.with_endpoint(left, |e, now| e.hang_up(now, id))
                    .unwrap_or(false)
            );
        }
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(40));
    let ls = sim.endpoints[left].stats;
    assert_eq!((ls.byes_ok, ls.byes_failed), (2000, 0), "{ls:?}");
    assert_eq!(sim.endpoints[right].stats.byes_received, 2000);
    println!(
        "WAN: UDP datagrams over 1,400 bytes dropped: {} before the kill, {} in all",
        oversize_before, sim.faults.dropped_oversize
    );
}

/// A flood of authentic registration SUBSCRIBEs (50 dialogs, as a stand-by restarting in a
/// loop would make, its Contact silent so no NOTIFY is refused): the active keeps at most 4
/// subscriptions, the newest.
#[test]
fn registration_subscriptions_are_bounded() {
    use crate::sip::{HeaderName, Method, Request};
    let mut sim = pair(71, "");
    settle(&mut sim);
    let (main, standby): (std::net::SocketAddr, std::net::SocketAddr) =
        (MAIN.parse().expect("addr"), STANDBY.parse().expect("addr"));
    let mut signer = crate::pair::auth::Signer::new(b"simulated-pair-secret", sim.wall_ms() - 1);
    for i in 0..50 {
        let mut r = Request::new(Method::Subscribe, format!("sip:reg@{main}"));
        let h = &mut r.headers;
        h.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {standby};branch=z9hG4bKflood{i}"),
        );
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("<sip:standby-1@{standby}>;tag=f{i}"),
        );
        h.push(HeaderName::To, format!("<sip:reg@{main}>"));
        h.push(HeaderName::CallId, format!("regflood-{i}"));
        h.push(HeaderName::CSeq, "1 SUBSCRIBE");
        h.push(HeaderName::Contact, "<sip:flood@127.0.0.9:5099>");
        h.push(HeaderName::Event, "reg");
        h.push(HeaderName::Expires, "600");
        let wall = sim.wall_ms();
        signer.sign(
            &mut r.headers,
            &crate::pair::auth::start_of_request("SUBSCRIBE"),
            b"",
            wall,
            crate::pair::auth::Channel::Datagram,
        );
        sim.inject(super::Datagram {
            from: standby,
            to: main,
            proto: Proto::Udp,
            bytes: r.to_bytes(),
        });
        sim.run_for(Duration::from_millis(5));
    }
    sim.run_for(Duration::from_millis(200));
    let now = sim.now;
    let subs = sim
        .server(0)
        .map(|s| s.status_json(now, serde_json::Value::Null)["reg_subscribers"].as_u64())
        .unwrap_or_default();
    assert_eq!(
        subs,
        Some(4),
        "registration subscriptions held by the active"
    );
}

/// The two nodes were given different users: each names exactly the settings that differ
/// (a changed password, a user only one of them has), and no password crosses the link.
#[test]
fn the_nodes_name_the_settings_that_differ() {
    let mut sim = Sim::new(72);
    let alice = |pw: &str| format!("[[users]]\nname = \"alice\"\npassword = \"{pw}\"\n");
    sim.add_node(pair_config(
        "main-1",
        "main",
        MAIN,
        STANDBY,
        &alice("first-secret"),
    ));
    sim.add_node(pair_config(
        "standby-1",
        "standby",
        STANDBY,
        MAIN,
        &format!(
            "{}[[users]]\nname = \"zed\"\npassword = \"zed-secret\"\n",
            alice("second-secret")
        ),
    ));
    sim.tap(|d| String::from_utf8_lossy(&d.bytes).contains("K\tv1"));
    settle(&mut sim);
    sim.run_for(Duration::from_secs(2));
    let now = sim.now;
    let differs = |sim: &Sim, i: usize| -> Vec<String> {
        sim.server(i)
            .map(|s| s.status_json(now, serde_json::Value::Null)["config_differs"].clone())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    };
    let main = differs(&sim, 0);
    let standby = differs(&sim, 1);
    for (node, list, zed) in [
        ("main", &main, "(only on the peer)"),
        ("stand-by", &standby, "(not on the peer)"),
    ] {
        assert!(
            list.contains(&"user[alice].password".to_string()),
            "{node}: {list:?}"
        );
        assert!(list.contains(&"users".to_string()), "{node}: {list:?}");
        assert!(
            list.contains(&format!("user[zed].password {zed}")),
            "{node}: {list:?}"
        );
        assert!(
            !list.iter().any(|k| k.starts_with("user[alice].contact")),
            "{node}: {list:?}"
        );
        assert_eq!(list.len(), 7, "{node}: {list:?}");
    }
    assert!(
        !sim.tapped.is_empty(),
        "the lists crossed the state channel"
    );
    // The stand-by's file is corrected and reloaded: both nodes agree again.
    let fixed = pair_config(
        "standby-1",
        "standby",
        STANDBY,
        MAIN,
        &alice("first-secret"),
    );
    let now = sim.now;
    let changes = sim
        .server_mut(1)
        .map(|s| s.reload(now, fixed))
        .expect("stand-by running")
        .expect("users reload without a restart");
    assert_eq!(changes, vec!["users ~alice -zed".to_string()]);
    sim.run_for(Duration::from_secs(2));
    let now = sim.now;
    for i in 0..2 {
        let st = sim
            .server(i)
            .map(|s| s.status_json(now, serde_json::Value::Null))
            .unwrap_or_default();
        assert_eq!(st["config_match"], true, "node {i}: {st}");
        assert_eq!(st["config_differs"], serde_json::json!([]), "node {i}");
    }
    for d in &sim.tapped {
        let text = String::from_utf8_lossy(&d.bytes);
        assert!(
            !text.contains("secret\""),
            "a value crossed the link: {text}"
        );
        assert!(!text.contains("first-secret") && !text.contains("zed-secret"));
    }
}
