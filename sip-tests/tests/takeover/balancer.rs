//! Scale-out behind Kamailio (`deploy/kamailio/understudy-lb.cfg`): two pairs behind a
//! Kamailio dispatcher. New calls are spread over the pairs by Call-ID; a pair's main is
//! killed; its calls are kept (its stand-by re-binds them through the balancer) and end
//! normally; new calls go on reaching both pairs.

use sip_tests::kamailio::Kamailio;

use super::*;

/// Kamailio in front of `pairs` (one dispatcher set each: main, then stand-by).
async fn balancer(dir: &std::path::Path, port: u16, pairs: &[&Pair]) -> Result<Kamailio> {
    let list = dir.join("dispatcher.list");
    let mut text = String::new();
    for (i, p) in pairs.iter().enumerate() {
        text.push_str(&format!("{} sip:{} 0 10\n", i + 1, p.main.sip));
        text.push_str(&format!("{} sip:{} 0 5\n", i + 1, p.standby.sip));
    }
    std::fs::write(&list, text)?;
    Kamailio::start(
        "kamailio/understudy-lb.cfg",
        dir,
        "kamailio-lb",
        &[
            format!("LB_LISTEN=udp:127.0.0.1:{port}"),
            format!("DS_LIST=\"{}\"", list.display()),
            format!("PAIRS={}", pairs.len()),
        ],
        port,
    )
    .await
}

/// Calls in progress at `node` (0 when it does not answer).
async fn calls_at(node: &Node) -> u64 {
    node.status()
        .await
        .map(|v| num(&v["counts"], "calls"))
        .unwrap_or(0)
}

/// `n` calls from each caller through the balancer to the carrier; their dialogs.
async fn place(callers: &mut [Ua], n: usize, round: usize) -> Result<Vec<(usize, DialogId)>> {
    let mut out = Vec::new();
    for (i, ua) in callers.iter_mut().enumerate() {
        for k in 0..n {
            let id = ua.call(&format!("0{round}{i}{k}")).await?;
            out.push((i, id));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pairs_behind_kamailio_keep_their_calls_and_share_new_ones() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let lb_port = sip_tests::cluster::free_port();
    let lb: SocketAddr = format!("127.0.0.1:{lb_port}").parse()?;
    let carrier = Ua::bind("carrier").await?;
    let spec = PairSpec {
        trunks: vec![
            TrunkSpec::new("balancer", lb, "8"),
            TrunkSpec::new("carrier", carrier.addr(), "0"),
        ],
        ..PairSpec::default()
    };
    let mut one = Pair::start("lb-one", &spec).await?;
    let two = Pair::start("lb-two", &spec).await?;
    let kam = balancer(dir.path(), lb_port, &[&one, &two]).await?;
    answer_n(&carrier, 200, &Answer::ok());
    let mut callers = Vec::new();
    for i in 0..4 {
        let ua = Ua::bind(&format!("caller{i}")).await?;
        ua.set_server(lb);
        callers.push(ua);
    }
    // The balancer probes every node before it sends calls; the first call waits for it.
    let until = Instant::now() + Duration::from_secs(10);
    while !kam.text().contains("LB: call") {
        let mut probe = Ua::bind("probe").await?;
        probe.set_server(lb);
        if let Ok(id) = probe.call("0999").await {
            probe.bye(&id).await?;
            break;
        }
        ensure!(
            Instant::now() < until,
            "no call through the balancer:\n{}",
            kam.text()
        );
    }

    let first = place(&mut callers, 5, 1).await?;
    let (n1, n2) = (calls_at(&one.main).await, calls_at(&two.main).await);
    eprintln!("[balancer] 20 calls: pair one {n1}, pair two {n2}");
    ensure!(
        n1 + n2 == 20 && n1 > 0 && n2 > 0,
        "calls spread: {n1} + {n2}\n{}",
        kam.text()
    );
    one.standby
        .wait_status(
            Duration::from_secs(5),
            "pair one's calls in its digest",
            |v| num(&v["digest"], "calls_known") == n1,
        )
        .await?;

    // Pair one's main dies; its stand-by re-binds its calls through the balancer.
    let report = kill_and_settle(&mut one, n1, n1, Duration::from_secs(15), "balancer").await?;
    check_report(
        &report,
        &[("recovered", n1), ("failed", 0), ("orphaned", 0)],
    )?;
    // New calls reach both pairs: pair one's through its new active.
    let second = match place(&mut callers, 5, 2).await {
        Ok(s) => s,
        Err(e) => bail!("{e}\nbalancer log:\n{}", kam.text()),
    };
    let (m1, m2) = (calls_at(&one.standby).await, calls_at(&two.main).await);
    eprintln!("[balancer] after the kill, 20 more: pair one (stand-by) {m1}, pair two {m2}");
    ensure!(
        m1 > n1 && m2 > n2 && m1 + m2 == 40,
        "after the takeover: pair one {m1} (had {n1}), pair two {m2} (had {n2})"
    );
    // Every call, old and new, ends through the balancer.
    for (i, id) in first.iter().chain(second.iter()) {
        let ua = callers.get_mut(*i).context("caller")?;
        let r = ua.bye(id).await?;
        ensure!(
            r.status == 200,
            "{}'s BYE: {} {}",
            ua.user(),
            r.status,
            r.reason
        );
    }
    for node in [&one.standby, &two.main] {
        node.wait_status(Duration::from_secs(5), "without calls", |v| {
            num(&v["counts"], "calls") == 0
        })
        .await?;
    }
    Ok(())
}
