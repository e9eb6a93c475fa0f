//! SIP over TLS under load: 40 test UAs, each on its own TLS connection to the node (its
//! certificate checked against a test CA), registered with digest auth; 1,000 calls offered
//! at 200 calls/s (caller → node → callee, every leg over TLS, each call answered and hung
//! up). Every call must complete, each with its CDR, over one connection per UA.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sip_tests::cluster::{Solo, free_port, password_of};
use sip_tests::{Answer, Ua};

/// UAs per side.
const PAIRS: usize = 20;
/// Calls per caller (20 × 50 = 1,000).
const CALLS_EACH: usize = 50;
/// The offered rate.
const RATE: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tls_calls_offered_at_200_per_second_all_complete() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let certs = sip_tests::certs::make(dir.path())?;
    let tls_port = free_port();
    let callers: Vec<String> = (0..PAIRS).map(|i| format!("tc{i}")).collect();
    let callees: Vec<String> = (0..PAIRS).map(|i| format!("td{i}")).collect();
    let users: Vec<&str> = callers.iter().chain(&callees).map(String::as_str).collect();
    let node_extra = format!(
        "sip_tls = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    let mut solo = Solo::start_with(&users, &node_extra, "[calls]\nmax_calls = 10000\n").await?;
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));

    let mut uas = Vec::new();
    for u in &users {
        let mut ua = Ua::bind_tcp(u).await?;
        ua.set_server_tls(tls, &certs.ca)?;
        ua.set_password(&password_of(u));
        let r = ua.register().await?;
        ensure!(r.status == 200, "{u}: REGISTER over TLS got {}", r.status);
        uas.push(ua);
    }
    let callee_uas = uas.split_off(PAIRS);
    for ua in &callee_uas {
        for _ in 0..CALLS_EACH {
            ua.answer_next_invite(Answer::ok());
        }
    }
    let v = solo.node.status().await?;
    let conns = v["tcp_connections"].as_u64().unwrap_or(0);
    ensure!(
        conns == 2 * PAIRS as u64,
        "one TLS connection per UA expected, the node has {conns}"
    );

    // Caller i places its k-th call at (k × PAIRS + i) / RATE seconds: 200 calls/s in all.
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut ua) in uas.into_iter().enumerate() {
        let callee = callees[i].clone();
        tasks.spawn(async move {
            let mut failures = Vec::new();
            for k in 0..CALLS_EACH {
                let slot = (k * PAIRS + i) as u64;
                tokio::time::sleep_until(start + Duration::from_millis(slot * 1000 / RATE)).await;
                let result = async {
                    let d = ua.call(&callee).await?;
                    let r = ua.bye(&d).await?;
                    ensure!(r.status == 200, "BYE got {}", r.status);
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = result {
                    failures.push(format!("{} call {k}: {e:#}", ua.user()));
                }
            }
            (ua, failures)
        });
    }
    let t0 = Instant::now();
    let mut failures = Vec::new();
    let mut caller_uas = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (ua, f) = r.context("caller task")?;
        caller_uas.push(ua);
        failures.extend(f);
    }
    let took = t0.elapsed();
    let total = PAIRS * CALLS_EACH;
    eprintln!(
        "[tls load] {total} calls offered at {RATE}/s over TLS: {} failed; done in {:.2} s \
         ({:.0} calls/s completed)",
        failures.len(),
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    ensure!(
        failures.is_empty(),
        "{} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let v = solo.node.status().await?;
    ensure!(
        v["tcp_connections"].as_u64() == Some(2 * PAIRS as u64),
        "still one TLS connection per UA: {}",
        v["tcp_connections"]
    );
    let st = solo.node.terminate().await?;
    ensure!(st.success(), "node exit {st}");
    let cdrs = solo.node.cdrs()?;
    let normal = cdrs.iter().filter(|c| c.end_reason == "normal").count();
    ensure!(normal == total, "{normal} normal CDRs of {total}");
    drop((caller_uas, callee_uas));
    Ok(())
}
