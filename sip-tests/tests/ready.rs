//! `/health` and `/ready` for load balancers and orchestrators: the active is ready; the
//! stand-by is ready once its active answers and registration sync is up, and after a kill
//! -9 of the main it is ready as the new active; a stand-by whose active never answers is
//! not ready (503, with the reason), though alive (`/health` 200).

use std::time::Duration;

use anyhow::{Result, ensure};
use sip_tests::cluster::{Pair, PairSpec, Solo, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_which_nodes_can_serve() -> Result<()> {
    let mut pair = Pair::start("ready", &PairSpec::default().with_users(["alice"])).await?;
    for n in [&pair.main, &pair.standby] {
        let (st, body) = n.http_status("GET", "/health").await?;
        ensure!(
            st == 200 && body.contains("ok"),
            "{}: /health {st} {body}",
            n.name
        );
    }
    let v = pair
        .main
        .wait_json(Duration::from_secs(10), "/ready", "ready", |v| {
            v["ready"] == true
        })
        .await?;
    ensure!(v["reason"] == "active", "main /ready: {v}");
    let v = pair
        .standby
        .wait_json(Duration::from_secs(10), "/ready", "ready", |v| {
            v["ready"] == true
        })
        .await?;
    ensure!(v["reason"] == "standby in sync", "stand-by /ready: {v}");

    pair.main.kill9();
    let v = pair
        .standby
        .wait_json(
            Duration::from_secs(10),
            "/ready",
            "ready as the new active",
            |v| v["ready"] == true && v["reason"] == "active",
        )
        .await?;
    ensure!(v["role"] == "active", "after the kill: {v}");

    // A stand-by whose active never answers: alive, not ready, and it says why.
    let lonely = Solo::start_with(
        &["alice"],
        "home_role = \"standby\"\n",
        &format!(
            "[pair]\npeer = \"127.0.0.1:{}\"\nsecret = \"ready-test-secret\"\n",
            free_port()
        ),
    )
    .await?;
    let (st, body) = lonely.node.http_status("GET", "/health").await?;
    ensure!(st == 200, "lonely /health {st} {body}");
    let (st, body) = lonely.node.http_status("GET", "/ready").await?;
    ensure!(
        st == 503 && body.contains("not answering"),
        "a stand-by without its active: /ready {st} {body}"
    );
    Ok(())
}
