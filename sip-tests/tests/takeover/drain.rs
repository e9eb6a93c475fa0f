//! Scenario: `understudy drain` before a planned stop. The main hands its calls to the
//! stand-by (switchover; the stand-by re-binds them), and the command returns once the main
//! is stand-by with no call and the peer acknowledged the hand-off. Stopping the drained
//! node then costs nothing: the calls go on and end through the new active, with one CDR
//! each, written there.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_every_call_to_the_peer_before_a_stop() -> Result<()> {
    let users = ten_call_users("dr");
    let mut pair = Pair::start("drain", &PairSpec::default().with_users(&users)).await?;
    let (ec, ee, calls) = ten_calls(&pair, "dr").await?;
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
    rebound_then_ended_at_the_standby(&mut pair, ec, ee, &calls).await
}

/// In the moment after a hand-off, before the peer's re-bind reaches an endpoint, its
/// requests still come to the old node. They get answers that keep the dialog alive
/// (RFC 5057): 491 to a re-INVITE, 503 with Retry-After to anything else — never the 481
/// that would end the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_crossing_a_handoff_do_not_end_the_call() -> Result<()> {
    let users = vec!["hoa".to_string(), "hob".to_string()];
    let pair = Pair::start("handoff-cross", &PairSpec::default().with_users(&users)).await?;
    let ec = phones(&users[..1], pair.main.sip, false).await?;
    let ee = phones(&users[1..], pair.main.sip, false).await?;
    answer_n(&ee[0], 1, &Answer::ok());
    wait_synced(&pair.standby, &users).await?;
    let (ec, calls) = set_up_calls(ec, vec![vec![users[1].clone()]], &ee, 1).await?;
    let call = calls.first().context("a call")?.clone();
    pair.main.post("/switchover").await?;
    pair.main
        .wait_status(Duration::from_secs(5), "stand-by without calls", |v| {
            v["role"] == "standby" && num(&v["counts"], "calls") == 0
        })
        .await?;
    // The caller's requests as if the re-bind had not reached it yet: to the old node.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let me = sock.local_addr()?;
    let mut answers = Vec::new();
    for (i, method) in ["INFO", "INVITE", "UPDATE"].into_iter().enumerate() {
        let text = format!(
            "{method} sip:{}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKcross{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:hoa@pbx.local>;tag={}\r\nTo: <sip:hob@pbx.local>;tag={}\r\n\
             Call-ID: {}\r\nCSeq: {} {method}\r\nContact: <sip:hoa@{me}>\r\nContent-Length: 0\r\n\r\n",
            users[1],
            pair.main.sip,
            call.a.local_tag,
            call.a.remote_tag,
            call.a.call_id,
            100 + i,
        );
        sock.send_to(text.as_bytes(), pair.main.sip).await?;
        let mut buf = vec![0u8; 4096];
        // The final answer (an INVITE gets 100 Trying first).
        let r = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .context("an answer from the old node")??;
            let Ok(Message::Response(r)) =
                parse_datagram(buf.get(..n).unwrap_or_default()).map(|p| p.message)
            else {
                bail!("not a response");
            };
            if r.status >= 200 {
                break r;
            }
        };
        eprintln!("[handoff cross] {method} -> {} {}", r.status, r.reason);
        answers.push((method, r.status));
    }
    ensure!(
        answers == [("INFO", 503), ("INVITE", 491), ("UPDATE", 491)],
        "answers at the old node: {answers:?}"
    );
    // The call itself goes on at the new active.
    let refs = [&call];
    let new_active = pair.standby.sip;
    let (ec, ee) = expect_calls_rebound(ec, ee, &refs, new_active).await?;
    let (_ec, _ee) = hang_up_calls(ec, ee, &refs, new_active).await?;
    Ok(())
}
