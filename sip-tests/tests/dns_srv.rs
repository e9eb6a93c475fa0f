//! A trunk named by a host (RFC 3263): a real DNS server on loopback (dnsmasq) gives
//! `_sip._udp.carrier.test` two SRV targets, priority 10 and 20, each a SIPp carrier. Calls
//! go to the first; once it is stopped, the next call goes to the second within one
//! transaction timeout (Timer B), and the one after that straight to it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sip_tests::Ua;
use sip_tests::cluster::{Node, Solo, free_port, password_of};
use sip_tests::sipp::{Sipp, scenarios};

/// dnsmasq on 127.0.0.1, killed on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq(port: u16) -> Result<Dnsmasq> {
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            "--local-ttl=30",
            "--host-record=a.carrier.test,127.0.0.81",
            "--host-record=b.carrier.test,127.0.0.82",
            "--srv-host=_sip._udp.carrier.test,a.carrier.test,5060,10,1",
            "--srv-host=_sip._udp.carrier.test,b.carrier.test,5060,20,1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start dnsmasq (apt-get install dnsmasq-base)")?;
    Ok(Dnsmasq(child))
}

fn carrier(ip: &str, name: &'static str, dir: &std::path::Path) -> Result<Sipp> {
    let args: Vec<String> = [
        "-sf",
        &scenarios().join("smart-uas.xml").to_string_lossy(),
        "-i",
        ip,
        "-p",
        "5060",
        "-set",
        "publish",
        "0",
        "-set",
        "notifier",
        "489",
        "-recv_timeout",
        "60000",
        "-timeout",
        "90s",
        "-nostdin",
    ]
    .map(String::from)
    .to_vec();
    Sipp::start(name, None, dir, &args)
}

/// Where the B leg of the one call up went.
async fn b_leg_remote(node: &Node) -> Result<String> {
    let v: Value = node.get_json("/calls").await?;
    v["calls"][0]["b"]["remote"]
        .as_str()
        .map(str::to_string)
        .context(format!("no call with a B leg: {v}"))
}

/// alice calls `number`; returns where the B leg went and how long the answer took.
async fn call(node: &Node, alice: &mut Ua, number: &str) -> Result<(String, Duration)> {
    let t0 = Instant::now();
    let d = alice.call(number).await?;
    let took = t0.elapsed();
    let remote = b_leg_remote(node).await?;
    let r = alice.bye(&d).await?;
    ensure!(r.status == 200, "BYE: {}", r.status);
    Ok((remote, took))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_in_priority_order_and_failover_within_one_transaction_timeout() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let port = free_port();
    let _dns = dnsmasq(port)?;
    let mut first = carrier("127.0.0.81", "carrier-a", dir.path())?;
    let _second = carrier("127.0.0.82", "carrier-b", dir.path())?;
    let t1_ms = 50;
    let extra = format!(
        "[dns]\nservers = [\"127.0.0.1:{port}\"]\n\n[timers]\nt1_ms = {t1_ms}\n\n\
         [[trunks]]\nname = \"carrier\"\naddress = \"carrier.test\"\nprefixes = [\"0\"]\n\n\
         [[trunks]]\nname = \"nowhere\"\naddress = \"nowhere.test\"\nprefixes = [\"7\"]\n"
    );
    let solo = Solo::start(&["alice"], &extra).await?;
    let node = &solo.node;
    let v = node
        .wait_json(
            Duration::from_secs(10),
            "/trunks",
            "both SRV targets",
            |v| {
                v["trunks"][0]["dns"]["targets"]
                    .as_array()
                    .is_some_and(|t| t.len() == 2)
            },
        )
        .await?;
    eprintln!("[dns] /trunks: {}", v["trunks"][0]["dns"]);

    // A host that does not resolve: said in /trunks, its calls get 503, the rest works.
    let v = node
        .wait_json(
            Duration::from_secs(10),
            "/trunks",
            "nowhere.test failing",
            |v| v["trunks"][1]["dns"]["error"].is_string(),
        )
        .await?;
    eprintln!("[dns] unknown host: {}", v["trunks"][1]["dns"]);

    let mut alice = Ua::bind("alice").await?;
    alice.set_server(node.sip);
    alice.set_password(&password_of("alice"));
    ensure!(alice.register().await?.status == 200, "alice registers");

    let out = alice.invite("7000")?;
    let r = alice.wait_final(&out).await?;
    ensure!(
        r.status == 503 && r.reason == "Trunk Not Resolved",
        "a call to the unresolved trunk: {} {}",
        r.status,
        r.reason
    );
    let (to, _) = call(node, &mut alice, "0111").await?;
    ensure!(to == "127.0.0.81:5060", "priority 10 first, went to {to}");

    // The first target stops: the next call times out there (Timer B) and goes on to the
    // second, within one transaction timeout.
    first.stop();
    let timer_b = Duration::from_millis(64 * t1_ms);
    let (to, took) = call(node, &mut alice, "0112").await?;
    eprintln!(
        "[dns] first target stopped: the call answered by {to} after {} ms (Timer B {} ms)",
        took.as_millis(),
        timer_b.as_millis()
    );
    ensure!(
        to == "127.0.0.82:5060",
        "failed over to priority 20, went to {to}"
    );
    ensure!(
        took < timer_b + Duration::from_secs(2),
        "failover took {took:?}, more than one transaction timeout ({timer_b:?})"
    );
    // The failed target goes last for a while: the next call goes straight to the second.
    let (to, took) = call(node, &mut alice, "0113").await?;
    ensure!(
        to == "127.0.0.82:5060",
        "the failed target yields: went to {to}"
    );
    ensure!(
        took < timer_b,
        "no second wait for the failed target: {took:?}"
    );
    Ok(())
}
