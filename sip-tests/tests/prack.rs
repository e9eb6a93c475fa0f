//! Reliable provisional responses (RFC 3262) and early media through the B2BUA, between two
//! SIPp peers: a gateway that supports 100rel calls a carrier that requires it and plays
//! early media before it answers. Both legs' PRACKs are answered (each SIPp scenario fails
//! its call otherwise), and the early media reaches the caller while the call still rings —
//! with media in bypass and in relay mode.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sip_tests::cluster::{Solo, free_port};
use sip_tests::rtp::Receiver;
use sip_tests::sipp::{Sipp, scenarios};
use tokio::net::UdpSocket;

const GATEWAY: &str = "127.0.0.93";
const CARRIER: &str = "127.0.0.94";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn early_media_reaches_the_caller(mode: &str) -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    // Five seconds of PCMU silence for the carrier's early media.
    let stream = dir.path().join("silence.ulaw");
    std::fs::write(&stream, vec![0xffu8; 40_000])?;
    let extra = format!(
        "[media]\nmode = \"{mode}\"\nrtp_ports = \"33000-33099\"\n\n\
         [[trunks]]\nname = \"gateway\"\naddress = \"{GATEWAY}:5060\"\nprefixes = [\"8\"]\n\n\
         [[trunks]]\nname = \"carrier\"\naddress = \"{CARRIER}:5060\"\nprefixes = [\"0\"]\n"
    );
    let solo = Solo::start(&[], &extra).await?;
    let node = &solo.node;

    let rtp_port = free_port();
    let at_caller = Receiver::start(Arc::new(UdpSocket::bind((GATEWAY, rtp_port)).await?));
    let media_port = free_port().to_string();
    let mut carrier = Sipp::start(
        "carrier",
        None,
        dir.path(),
        &args(&[
            "-sf",
            &scenarios().join("uas-100rel.xml").to_string_lossy(),
            "-i",
            CARRIER,
            "-p",
            "5060",
            "-mi",
            CARRIER,
            "-mp",
            &media_port,
            "-m",
            "1",
            "-timeout",
            "30s",
            "-nostdin",
        ]),
    )?;
    let mut gateway = Sipp::start(
        "gateway",
        None,
        dir.path(),
        &args(&[
            "-sf",
            &scenarios().join("uac-100rel.xml").to_string_lossy(),
            "-i",
            GATEWAY,
            "-p",
            "5060",
            "-s",
            "0123",
            "-set",
            "rtp_port",
            &rtp_port.to_string(),
            "-m",
            "1",
            "-timeout",
            "30s",
            "-nostdin",
            &node.sip.to_string(),
        ]),
    )?;

    let log =
        |n: &str| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default();
    // Early media: the carrier's RTP reaches the caller while the call still rings.
    ensure!(
        at_caller.wait_for(20, Duration::from_secs(10)).await,
        "[{mode}] no early media at the caller ({} packets)\ngateway:\n{}\ncarrier:\n{}\nnode:\n{}",
        at_caller.packets(),
        log("gateway"),
        log("carrier"),
        node.log_tail(40)
    );
    let calls = node.calls().await?;
    let state = calls
        .first()
        .and_then(|c| c["state"].as_str())
        .context("the call in /calls")?
        .to_string();
    ensure!(
        state == "ringing",
        "[{mode}] 20 packets of early media arrived in state {state}, not before the answer"
    );
    if mode == "relay" {
        let src = calls[0]["media"]["b_to_a_packets"].as_u64().unwrap_or(0);
        ensure!(
            src >= 20,
            "[{mode}] the relay counted {src} packets from the carrier"
        );
    }

    let g = gateway.wait(Duration::from_secs(30)).await?;
    let c = carrier.wait(Duration::from_secs(30)).await?;
    let log =
        |n: &str| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default();
    ensure!(
        g.success(),
        "[{mode}] the gateway's call failed ({g}):\n{}",
        log("gateway")
    );
    ensure!(
        c.success(),
        "[{mode}] the carrier's call failed ({c}):\n{}",
        log("carrier")
    );
    let cdrs = node.wait_cdrs(1).await?;
    ensure!(
        cdrs.len() == 1 && cdrs[0].end_reason == "normal",
        "[{mode}] CDRs: {cdrs:?}"
    );
    eprintln!(
        "[prack {mode}] early media packets at the caller before the answer: ≥ 20; both PRACKs \
         answered; one normal CDR"
    );
    at_caller.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100rel_carrier_gets_its_prack_and_its_early_media_reaches_the_caller() -> Result<()> {
    early_media_reaches_the_caller("bypass").await?;
    early_media_reaches_the_caller("relay").await
}
