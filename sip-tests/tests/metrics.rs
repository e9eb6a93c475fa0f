//! `/metrics` read by a real Prometheus parser: `promtool check metrics` (Debian `prometheus`)
//! accepts the page of a main carrying a call, of its stand-by, and of the stand-by after it
//! took over — every family with `# HELP` and `# TYPE`, counters named `_total` — and the
//! histograms of answer time, keep-alive round trips and re-bind time have counted what
//! happened.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sip_tests::cluster::{Node, Pair, PairSpec, password_of};
use sip_tests::{Answer, Ua};

/// `promtool check metrics` on `node`'s page: its verdict (exit status and what it said).
async fn promtool(node: &Node) -> Result<String> {
    let page = node.get_text("/metrics").await?;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool (apt-get install prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {}: {}\n{said}\n--- the page ---\n{page}",
        node.name,
        out.status
    );
    Ok(page)
}

/// The value of an unlabelled sample.
fn value(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_every_page_and_the_histograms_count() -> Result<()> {
    let names = ["alice", "bob"].map(String::from).to_vec();
    let spec = PairSpec::default().with_users(&names);
    let mut pair = Pair::start("metrics", &spec).await?;
    let mut alice = Ua::bind("alice").await?;
    let mut bob = Ua::bind("bob").await?;
    for ua in [&mut alice, &mut bob] {
        ua.set_server(pair.main.sip);
        ua.set_password(&password_of(ua.user()));
        ensure!(
            ua.register().await?.status == 200,
            "{} registers",
            ua.user()
        );
    }
    bob.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    pair.standby
        .wait_status(Duration::from_secs(5), "the call in its digest", |v| {
            v["digest"]["calls_known"].as_u64() == Some(1)
        })
        .await?;

    let main = promtool(&pair.main).await?;
    ensure!(
        value(&main, "understudy_call_answer_seconds_count") == 1.0,
        "one answered call in the histogram:\n{main}"
    );
    let standby = promtool(&pair.standby).await?;
    ensure!(
        value(&standby, "understudy_keepalive_rtt_seconds_count") >= 1.0,
        "the stand-by's keep-alives were answered:\n{standby}"
    );

    pair.main.kill9();
    pair.standby
        .wait_status(
            Duration::from_secs(10),
            "active with the call re-bound",
            |v| v["role"] == "active" && v["takeover"]["recovered"].as_u64() == Some(1),
        )
        .await?;
    let after = promtool(&pair.standby).await?;
    ensure!(
        value(&after, "understudy_takeover_rebind_seconds_count") == 1.0
            && value(&after, "understudy_takeover_rebind_seconds_sum") > 0.0,
        "one re-bind timed:\n{after}"
    );
    ensure!(
        alice.bye(&a).await?.status == 200,
        "BYE through the new active"
    );
    Ok(())
}
