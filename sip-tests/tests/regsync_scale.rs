//! Registration sync at scale between two real processes: bindings registered on the main
//! (10 contacts per user, digest-authenticated REGISTERs over UDP) all reach the stand-by
//! over the state channel. Prints the figures the pair is judged by: time to full sync,
//! bytes of NOTIFYs on the channel, and the stand-by's resident memory per binding.
//!
//! `cargo test` runs it with 5,000 bindings; `REGSYNC_BINDINGS=100000` gives the
//! production-scale figure.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sip_tests::cluster::{Node, Pair, PairSpec, password_of};
use tokio::net::UdpSocket;
use understudy::sip::digest::answer_challenge;

use crate::bounded::{challenge, exchange};

pub(crate) const CONTACTS_PER_USER: usize = 10;

/// Resident memory a binding may cost the stand-by, registrar and sync state together.
const MAX_KIB_PER_BINDING: f64 = 4.0;

async fn registrations(node: &Node) -> Result<u64> {
    Ok(node.metric("understudy_registrations").await? as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_registered_on_the_main_all_reach_the_standby() -> Result<()> {
    let bindings: usize = std::env::var("REGSYNC_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let users: Vec<String> = (0..bindings.div_ceil(CONTACTS_PER_USER))
        .map(|i| format!("r{i}"))
        .collect();
    let spec = PairSpec {
        users: users.iter().map(|u| (u.clone(), password_of(u))).collect(),
        ..PairSpec::default()
    };
    let mut pair = Pair::start("regsync-scale", &spec).await?;
    let mut r = run(&pair, &users, bindings).await;
    if r.is_ok() {
        r = restart_standby(&mut pair, bindings).await;
    }
    if r.is_err() {
        eprintln!("stand-by log tail:\n{}", pair.standby.log_tail(30));
    }
    r
}

/// A stand-by that restarts (it lost every binding) gets the whole state again: one full
/// NOTIFY split into chunks on the state channel.
async fn restart_standby(pair: &mut Pair, bindings: usize) -> Result<()> {
    let bytes_before = notify_bytes(&pair.main).await?;
    pair.standby.kill9();
    pair.standby.start()?;
    let start = Instant::now();
    pair.wait_settled().await?;
    let settled = start.elapsed();
    wait_for_bindings(&pair.standby, bindings).await?;
    let synced = start.elapsed();
    let bytes = notify_bytes(&pair.main).await? - bytes_before;
    let resyncs = pair.standby.metric("understudy_reg_resyncs_total").await?;
    println!(
        "regsync: restarted stand-by: saw the active {:.2} s after start, held all {bindings} \
         bindings {:.2} s after start; full state {:.1} MB; {resyncs} resyncs; RSS {} KiB",
        settled.as_secs_f64(),
        synced.as_secs_f64(),
        bytes / 1e6,
        pair.standby.rss_kib()?,
    );
    if resyncs != 0.0 {
        bail!("the restarted stand-by asked for the full state again {resyncs} times");
    }
    Ok(())
}

async fn notify_bytes(node: &Node) -> Result<f64> {
    node.metric("understudy_reg_notify_bytes_total{dir=\"sent\"}")
        .await
}

async fn wait_for_bindings(standby: &Node, bindings: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60 + bindings as u64 / 1_000);
    loop {
        let n = registrations(standby).await?;
        if n == bindings as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the stand-by holds {n} of {bindings} bindings");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `bindings` digest-authenticated REGISTERs from `sock` to `server`, `CONTACTS_PER_USER`
/// per user of `users`, each with its own contact (127.0.x.y:port); by Call-ID, for
/// [`exchange`].
pub(crate) async fn register_requests(
    sock: &UdpSocket,
    server: std::net::SocketAddr,
    users: &[String],
    bindings: usize,
) -> Result<Vec<(String, String)>> {
    let me = sock.local_addr()?;
    let ch = challenge(sock, server, "REGISTER", "sip:pbx.local").await?;
    let mut reqs = Vec::with_capacity(bindings);
    for i in 0..bindings {
        let user = users
            .get(i / CONTACTS_PER_USER)
            .map_or("r0", String::as_str);
        let nc = u32::try_from(i + 1)?;
        let auth = answer_challenge(
            &ch,
            user,
            &password_of(user),
            "REGISTER",
            "sip:pbx.local",
            nc,
            "cn",
        )
        .unwrap_or_default();
        let id = format!("rs-{i}");
        // Each binding its own contact address (127.0.x.y:port).
        let contact = format!(
            "127.0.{}.{}:{}",
            1 + i / 60_000,
            1 + i % 250,
            10_000 + i % 50_000
        );
        reqs.push((
            id.clone(),
            format!(
                "REGISTER sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.local>;tag=t{i}\r\nTo: <sip:{user}@pbx.local>\r\n\
                 Call-ID: {id}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{contact}>\r\nExpires: 3600\r\n\
                 Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
            ),
        ));
    }
    Ok(reqs)
}

async fn run(pair: &Pair, users: &[String], bindings: usize) -> Result<()> {
    let (main, standby) = (&pair.main, &pair.standby);
    let rss_before = standby.rss_kib()?;
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let reqs = register_requests(&sock, main.sip, users, bindings).await?;
    let start = Instant::now();
    let got = exchange(&sock, main.sip, &reqs, 64).await?;
    let ok = got.values().filter(|s| **s == 200).count();
    if ok != bindings {
        bail!("{ok} of {bindings} REGISTERs accepted");
    }
    let registered = start.elapsed();
    let on_main = registrations(main).await?;
    if on_main != bindings as u64 {
        bail!("the main holds {on_main} bindings, not {bindings}");
    }
    wait_for_bindings(standby, bindings).await?;
    let synced = start.elapsed();
    let bytes = notify_bytes(main).await?;
    let notifies = main
        .metric("understudy_reg_notifies_total{dir=\"sent\"}")
        .await?;
    let rss_after = standby.rss_kib()?;
    let dropped = main
        .metric("understudy_transport_dropped_total{reason=\"tcp_write_queue_full\"}")
        .await?;
    let received = standby
        .metric("understudy_reg_notifies_total{dir=\"received\"}")
        .await?;
    println!(
        "regsync: main dropped {dropped} TCP connections at a full write queue; stand-by received {received} NOTIFYs"
    );
    let resyncs = standby.metric("understudy_reg_resyncs_total").await?;
    let refused = standby
        .metric("understudy_pair_refused_total{reason=\"replayed\"}")
        .await?;
    let per_binding = rss_after.saturating_sub(rss_before) as f64 / bindings as f64;
    println!(
        "regsync: {bindings} bindings ({} users): registered on the main in {:.2} s, all on \
         the stand-by {:.2} s after the first REGISTER ({:.2} s after the last answer); \
         {notifies} NOTIFYs, {:.1} MB on the channel; stand-by RSS {rss_before} -> \
         {rss_after} KiB ({per_binding:.2} KiB per binding)",
        users.len(),
        registered.as_secs_f64(),
        synced.as_secs_f64(),
        (synced - registered).as_secs_f64(),
        bytes / 1e6,
    );
    if bytes <= 0.0 {
        bail!("no NOTIFY bytes counted");
    }
    // The burst of partial NOTIFYs must arrive in order and fresh: a gap would bring the
    // whole state again (and again, at this rate) over the channel.
    if resyncs != 0.0 || refused != 0.0 {
        bail!(
            "the stand-by asked for the full state {resyncs} times, refused {refused} NOTIFYs as replayed"
        );
    }
    if per_binding > MAX_KIB_PER_BINDING {
        bail!("the stand-by costs {per_binding:.2} KiB per binding (limit {MAX_KIB_PER_BINDING})");
    }
    Ok(())
}
