//! HEP capture (`[capture] hep`): every SIP message in and out of the node is copied to a
//! capture server. The receiver here is a real HEP decoder — Kamailio's `sipcapture` module,
//! the capture engine Homer's server is built on (`deploy/capture/kamailio-hep.cfg`), logging
//! each SIP message it decoded. A call through the node shows up there message by message,
//! on both legs, with the right senders.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sip_tests::cluster::{Solo, free_port};
use sip_tests::kamailio::Kamailio;
use sip_tests::{Answer, Ua};

/// The decoded messages of call `call_id` in the receiver's log: (first word: method or
/// status, sender).
fn messages(capture: &Kamailio, call_id: &str) -> Vec<(String, String)> {
    let needle = format!("call-id={call_id} ");
    capture
        .text()
        .lines()
        .filter_map(|l| l.split_once("HEP ").map(|(_, rest)| rest))
        .filter(|rest| rest.contains(&needle))
        .filter_map(|rest| {
            let what = rest.split_whitespace().next()?.to_string();
            let src = rest.split_once("src=")?.1.trim().to_string();
            Some((what, src))
        })
        .collect()
}

/// `got` holds `want` in order (other messages between them allowed).
fn in_order(got: &[(String, String)], want: &[(&str, String)]) -> bool {
    let mut it = got.iter();
    want.iter()
        .all(|(w, src)| it.any(|(g, s)| g == w && s == src))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_shows_up_message_by_message_in_the_hep_receiver() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let port = free_port();
    let db = dir.path().join("hep-db");
    std::fs::create_dir_all(&db)?;
    let capture = Kamailio::start(
        "capture/kamailio-hep.cfg",
        dir.path(),
        "kamailio-hep",
        &[
            format!("HEP_LISTEN=udp:127.0.0.1:{port}"),
            format!("HEP_DB=\"text://{}\"", db.display()),
        ],
        port,
    )
    .await?;
    let extra = format!("[capture]\nhep = \"127.0.0.1:{port}\"\nhep_id = 2042\n");
    let solo = Solo::start(&["alice", "bob"], &extra).await?;
    let node = &solo.node;
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
    ensure!(alice.bye(&a).await?.status == 200, "BYE");
    bob.expect_request_in(&b.call_id, understudy::sip::Method::Bye)
        .await?;

    let (pbx, al, bo) = (
        node.sip.to_string(),
        alice.addr().to_string(),
        bob.addr().to_string(),
    );
    // Leg A: alice's INVITE (challenged, then with credentials), our answers, her ACK and BYE.
    let want_a = [
        ("INVITE", al.clone()),
        ("407", pbx.clone()),
        ("INVITE", al.clone()),
        ("180", pbx.clone()),
        ("200", pbx.clone()),
        ("ACK", al.clone()),
        ("BYE", al.clone()),
        ("200", pbx.clone()),
    ];
    // Leg B: our INVITE, bob's answers, our ACK and BYE.
    let want_b = [
        ("INVITE", pbx.clone()),
        ("180", bo.clone()),
        ("200", bo.clone()),
        ("ACK", pbx.clone()),
        ("BYE", pbx.clone()),
        ("200", bo.clone()),
    ];
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (got_a, got_b) = (
            messages(&capture, &a.call_id),
            messages(&capture, &b.call_id),
        );
        if in_order(&got_a, &want_a) && in_order(&got_b, &want_b) {
            eprintln!("[hep] leg A: {got_a:?}\n[hep] leg B: {got_b:?}");
            break;
        }
        if Instant::now() >= until {
            bail!(
                "the HEP receiver did not see the call:\nleg A {got_a:?}\nleg B {got_b:?}\n{}",
                capture.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = node.get_text("/metrics").await?;
    let sent = metric(&m, "understudy_hep_sent_total");
    ensure!(
        sent >= 14 && metric(&m, "understudy_hep_dropped_total") == 0,
        "metrics: {sent} sent\n{m}"
    );
    Ok(())
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}
