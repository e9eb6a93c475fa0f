//! HEP capture (`[capture] hep`): every SIP message in and out of the node is copied to a
//! capture server. The receiver here is a real HEP decoder — Kamailio's `sipcapture` module,
//! the capture engine Homer's server is built on (`deploy/capture/kamailio-hep.cfg`), logging
//! each SIP message it decoded. A call through the node shows up there message by message,
//! on both legs, with the right senders.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sip_tests::cluster::{Solo, free_port};
use sip_tests::{Answer, Ua};

/// Kamailio, killed on drop.
struct Capture {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Capture {
    fn start(dir: &std::path::Path, port: u16) -> Result<Self> {
        let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/capture/kamailio-hep.cfg");
        let db = dir.join("hep-db");
        std::fs::create_dir_all(&db)?;
        let log = dir.join("kamailio-hep.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-w"])
            .arg(dir)
            .arg("-A")
            .arg(format!("HEP_LISTEN=udp:127.0.0.1:{port}"))
            .arg("-A")
            .arg(format!("HEP_DB=\"text://{}\"", db.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start kamailio (apt-get install kamailio)")?;
        Ok(Self { child, log })
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The decoded messages of call `call_id`: (first word: method or status, sender).
    fn messages(&self, call_id: &str) -> Vec<(String, String)> {
        let needle = format!("call-id={call_id} ");
        self.text()
            .lines()
            .filter_map(|l| l.split_once("HEP ").map(|(_, rest)| rest))
            .filter(|rest| rest.contains(&needle))
            .filter_map(|rest| {
                let mut w = rest.split_whitespace();
                let what = w.next()?.to_string();
                let src = rest.split_once("src=")?.1.trim().to_string();
                Some((what, src))
            })
            .collect()
    }

    /// Wait until Kamailio listens (its start-up lines name the socket).
    async fn wait_listening(&mut self, port: u16) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.text().contains(&format!(":{port}")) {
            if let Some(st) = self.child.try_wait()? {
                bail!("kamailio exited ({st}):\n{}", self.text());
            }
            ensure!(
                Instant::now() < until,
                "kamailio did not start:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
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
    let mut capture = Capture::start(dir.path(), port)?;
    capture.wait_listening(port).await?;
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
        let (got_a, got_b) = (capture.messages(&a.call_id), capture.messages(&b.call_id));
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
