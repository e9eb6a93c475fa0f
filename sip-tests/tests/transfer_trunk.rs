//! A transfer to a number behind a carrier that challenges every INVITE and BYE (SIPp,
//! `sipp-scenarios/carrier.xml`): the transfer's INVITE is answered with the trunk's
//! credentials like any call's, the transferee is joined to the carrier, and the hang-up's BYE
//! is answered too.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sip_tests::cluster::Solo;
use sip_tests::sipp::{Sipp, scenarios};
use sip_tests::{Answer, Ua};

use crate::transfer::notifies_until_done;

const CARRIER_IP: &str = "127.0.0.78";

fn lines(log: &std::path::Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_carrier_answers_its_challenges() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let log = dir.path().join("carrier-log.txt");
    let args: Vec<String> = [
        "-sf",
        &scenarios().join("carrier.xml").to_string_lossy(),
        "-i",
        CARRIER_IP,
        "-p",
        "5060",
        "-set",
        "user",
        "pbx1",
        "-set",
        "password",
        "trunk-secret",
        "-trace_logs",
        "-log_file",
        &log.to_string_lossy(),
        "-timeout",
        "60s",
        "-nostdin",
    ]
    .map(String::from)
    .to_vec();
    let _carrier = Sipp::start("carrier", None, dir.path(), &args)?;
    let extra = format!(
        "\n[[trunks]]\nname = \"carrier\"\naddress = \"{CARRIER_IP}\"\nprefixes = [\"0\"]\n\
         username = \"pbx1\"\npassword = \"trunk-secret\"\n"
    );
    let mut solo = Solo::start(&["alice", "bob"], &extra).await?;
    let [mut alice, mut bob]: [Ua; 2] = solo
        .registered(&["alice", "bob"])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two phones"))?;
    bob.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    let b = bob
        .live_dialogs()
        .first()
        .map(|d| d.id.clone())
        .context("bob's leg")?;

    let r = bob.refer(&b, "<sip:0123@pbx.local>").await?;
    ensure!(r.status == 202, "REFER: {} {}", r.status, r.reason);
    let n = notifies_until_done(&mut bob, &b.call_id).await?;
    ensure!(
        n.last().map(String::as_str) == Some("SIP/2.0 200 OK"),
        "NOTIFYs: {n:?}\ncarrier log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    ensure!(alice.bye(&a).await?.status == 200, "alice hangs up");
    let until = Instant::now() + Duration::from_secs(5);
    while lines(&log, "CALL-OK") < 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        lines(&log, "CALL-OK") == 1 && lines(&log, "CHALLENGED") == 1,
        "the carrier's log (one challenged INVITE answered, one BYE answered):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let st = solo.node.terminate().await?;
    ensure!(st.success(), "node exit {st}");
    let cdrs = solo.node.cdrs()?;
    ensure!(
        cdrs.len() == 2
            && cdrs[0].end_reason == "transferred"
            && cdrs[1].end_reason == "normal"
            && cdrs[1].trunk.as_deref() == Some("carrier")
            && cdrs[1].callee == "0123",
        "CDRs: {cdrs:#?}"
    );
    Ok(())
}
