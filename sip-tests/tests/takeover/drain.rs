//! Scenario: `understudy drain` before a planned stop. The main hands its calls to the
//! stand-by (switchover; the stand-by re-binds them), and the command returns once the main
//! is stand-by with no call and the peer acknowledged the hand-off. Stopping the drained
//! node then costs nothing: the calls go on and end through the new active, with one CDR
//! each, written there.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_every_call_to_the_peer_before_a_stop() -> Result<()> {
    let (callers, callees) = (names("dra", 5), names("drb", 5));
    let users = users_of(&[&callers, &callees]);
    let mut pair = Pair::start("drain", &PairSpec::default().with_users(&users)).await?;
    let ec = phones(&callers, pair.main.sip, false).await?;
    let ee = phones(&callees, pair.main.sip, false).await?;
    for ua in &ee {
        answer_n(ua, 2, &Answer::ok());
    }
    wait_synced(&pair.standby, &users).await?;
    let targets: Vec<Vec<String>> = (0..callers.len())
        .map(|i| vec![callees[i].clone(), callees[(i + 1) % callees.len()].clone()])
        .collect();
    let (ec, calls) = set_up_calls(ec, targets, &ee, 10).await?;
    let out = tokio::process::Command::new(sip_tests::cluster::binary())
        .args(["drain", "--admin", &format!("http://{}", pair.main.admin)])
        .output()
        .await?;
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("[drain] {said}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "understudy drain failed: {said}");
    ensure!(said.contains("drained: 10 calls"), "drain said: {said}");
    let st = pair.main.status().await?;
    ensure!(
        st["role"] == "standby" && num(&st["counts"], "calls") == 0,
        "{st}"
    );
    // The drained node can go: SIGTERM writes no CDR (it has no call left).
    let main_cdrs = stop_and_read_cdrs(&mut pair.main).await?;
    ensure!(main_cdrs.is_empty(), "the drained node wrote {main_cdrs:?}");
    let refs: Vec<&Call> = calls.iter().collect();
    let new_active = pair.standby.sip;
    let (ec, ee) = expect_calls_rebound(ec, ee, &refs, new_active).await?;
    let (ec, ee) = hang_up_calls(ec, ee, &refs, new_active).await?;
    ensure_no_protocol_errors(ec.iter().chain(&ee))?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &refs, "CDR")?;
    Ok(())
}
