//! Scenario w: the pair across a WAN. The nodes run in their own site namespaces (the NAT
//! test bed) and reach each other only through a userspace relay that delays each packet by
//! 40 ms ± 10 ms (so datagrams reorder), loses 1 % of the datagrams and drops those over
//! 1,400 bytes (`sip_tests::wan`). 400 phones sit behind the bed's NAT routers, registered at
//! both nodes; 10,000 more bindings are registered at the main alone. 2,000 calls go up
//! through the main; kill -9 of the main: every call is re-bound and hung up through the new
//! active, and every registration is known there.

use sip_tests::cluster::Site;
use sip_tests::natbed;
use sip_tests::wan::{Impairment, Relay, Side};
use tokio::net::UdpSocket;

use super::*;
use crate::bounded::exchange;
use crate::regsync_scale::{CONTACTS_PER_USER, register_requests};

/// Phones per home: callers behind home 1, callees behind home 2.
const PHONES: usize = 200;
/// Calls each caller places (to the callees in turn).
const CALLS_PER_CALLER: usize = 10;
/// Bindings registered at the main alone (from behind home 1).
const BULK_BINDINGS: usize = 10_000;

#[test]
fn the_pair_across_a_wan_keeps_2000_calls_and_10000_registrations() {
    const BED: &str = "natwan";
    if !(natbed::inside() && std::env::var(natbed::INNER).is_ok_and(|p| p == BED)) {
        natbed::run_in_core(
            BED,
            30,
            "takeover::wan::the_pair_across_a_wan_keeps_2000_calls_and_10000_registrations",
        );
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(wan())
        .expect("the pair across a WAN");
}

async fn wan() -> Result<()> {
    let main_side = Side {
        relay: SocketAddr::new("192.0.2.1".parse()?, 5070),
        node: SocketAddr::new(natbed::MAIN, 5060),
    };
    let standby_side = Side {
        relay: SocketAddr::new("198.51.100.1".parse()?, 5070),
        node: SocketAddr::new(natbed::STANDBY, 5060),
    };
    let relay = Relay::start(main_side, standby_side, Impairment::wan(), 7).await?;
    let callers = names("wc", PHONES);
    let callees = names("wd", PHONES);
    let bulk: Vec<String> = (0..BULK_BINDINGS.div_ceil(CONTACTS_PER_USER))
        .map(|i| format!("r{i}"))
        .collect();
    let users = users_of(&[&callers, &callees]);
    let mut spec = PairSpec {
        sites: Some([
            Site {
                netns: natbed::ns("main"),
                ip: natbed::MAIN,
                peer_via: Some(main_side.relay),
            },
            Site {
                netns: natbed::ns("sb"),
                ip: natbed::STANDBY,
                peer_via: Some(standby_side.relay),
            },
        ]),
        ..PairSpec::default()
    }
    .with_users(&users)
    .with_users(&bulk);
    // A WAN round trip is ~80 ms: keep-alives every 200 ms, silence for 3 of them.
    spec.query_timeout_ms = 2000;
    let mut pair = Pair::start("wan", &spec).await?;

    // 10,000 bindings at the main, from behind home 1.
    let sock = UdpSocket::from_std({
        let s = natbed::udp_in(&natbed::ns("p1"), SocketAddr::new(natbed::PHONE1, 7000))?;
        s.set_nonblocking(true)?;
        s
    })?;
    let reqs = register_requests(&sock, pair.main.sip, &bulk, BULK_BINDINGS).await?;
    let got = exchange(&sock, pair.main.sip, &reqs, 64).await?;
    let ok = got.values().filter(|s| **s == 200).count();
    ensure!(
        ok == BULK_BINDINGS,
        "{ok} of {BULK_BINDINGS} REGISTERs accepted"
    );

    // The phones, each registered at both nodes.
    let (ec, ee) = super::nat::homes_of(&pair, &callers, &callees).await?;
    let all_bindings = (BULK_BINDINGS + 2 * PHONES) as f64;
    let synced_at = Instant::now() + Duration::from_secs(60);
    while pair.standby.metric("understudy_registrations").await? < all_bindings {
        ensure!(
            Instant::now() < synced_at,
            "the stand-by never learned every registration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for ua in &ee {
        answer_n(ua, CALLS_PER_CALLER, &Answer::ok());
    }
    let targets: Vec<Vec<String>> = (0..PHONES)
        .map(|i| {
            (0..CALLS_PER_CALLER)
                .map(|k| callees[(i + k) % PHONES].clone())
                .collect()
        })
        .collect();
    let want = PHONES * CALLS_PER_CALLER;
    let (ec, calls) = set_up_calls(ec, targets, &ee, want).await?;
    let killed = kill_main(&mut pair, want as u64, want as u64).await?;
    pair.standby
        .wait_status(Duration::from_secs(10), "active", |v| v["role"] == "active")
        .await?;
    let detection = killed.elapsed();
    let report = wait_settled(&pair.standby, Duration::from_secs(120)).await?;
    show_report("w wan", &report, killed);
    let c = &relay.counters;
    eprintln!(
        "[w wan] detection {:.3} s; {} calls re-bound, last {} ms after the takeover started; \
         relay: {} datagrams forwarded, {} lost, {} over 1,400 bytes dropped, {} stream bytes \
         on {} connections",
        detection.as_secs_f64(),
        num(&report, "recovered"),
        num(&report, "rebind_ms"),
        c.datagrams.load(std::sync::atomic::Ordering::Relaxed),
        c.lost.load(std::sync::atomic::Ordering::Relaxed),
        c.too_big.load(std::sync::atomic::Ordering::Relaxed),
        c.stream_bytes.load(std::sync::atomic::Ordering::Relaxed),
        c.connections.load(std::sync::atomic::Ordering::Relaxed),
    );
    check_report(
        &report,
        &[
            ("recovered", want as u64),
            ("nat_no_flow", 0),
            // The bulk bindings are behind home 1's router, registered at the main only.
            ("endpoints_behind_nat", BULK_BINDINGS as u64),
        ],
    )?;
    let known = pair.standby.metric("understudy_registrations").await?;
    ensure!(
        known >= all_bindings,
        "the new active knows {known} registrations"
    );
    rebound_then_ended_at_the_standby(&mut pair, ec, ee, &calls).await
}
