//! Scenario g: witnesses.

use super::*;

/// A witness the test controls: a UDP socket that records the OPTIONS it gets and answers
/// them 200 only once `answer` is set.
struct Witness {
    addr: SocketAddr,
    answer: Arc<AtomicBool>,
    seen: tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl Witness {
    async fn bind() -> Result<Self> {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let answer = Arc::new(AtomicBool::new(false));
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let flag = answer.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(p) = parse_datagram(&buf[..n]) else {
                    continue;
                };
                let Message::Request(r) = p.message else {
                    continue;
                };
                if r.method != Method::Options {
                    continue;
                }
                let answered = flag.load(Ordering::SeqCst);
                if answered {
                    let resp = response_to(&r, 200, Some(&new_tag()));
                    let _ = sock.send_to(&resp.to_bytes(), from).await;
                }
                let _ = tx.send((from, answered));
            }
        });
        Ok(Self {
            addr,
            answer,
            seen,
            task,
        })
    }

    /// The next OPTIONS the witness got (source, whether it answered), within `limit`.
    async fn next(&mut self, limit: Duration) -> Result<(SocketAddr, bool)> {
        tokio::time::timeout(limit, self.seen.recv())
            .await
            .context("no OPTIONS reached the witness")?
            .context("witness task ended")
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// With a witness configured, a stand-by cut off from the main takes over only when the
/// witness answers: while it is silent the stand-by stays stand-by and reports itself
/// isolated; once it answers OPTIONS, the stand-by takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_decides_whether_an_isolated_standby_takes_over() -> Result<()> {
    let mut witness = Witness::bind().await?;
    let spec = PairSpec {
        witnesses: vec![witness.addr],
        ..PairSpec::default()
    };
    let pair = Pair::start("witness", &spec).await?;
    let epoch0 = num(&pair.standby.status().await?, "epoch");
    for n in [&pair.main, &pair.standby] {
        let r = n.post("/test/partition?on").await?;
        ensure!(r.contains("true"), "{}: partition on: {r}", n.name);
    }
    // The stand-by misses the keep-alives, its probe fails, it asks the witness: silence.
    let v = pair
        .standby
        .wait_status(Duration::from_secs(5), "isolated", |v| {
            v["peer"]["isolated"] == true
        })
        .await?;
    ensure!(v["role"] == "standby", "isolated but {}", v["role"]);
    let (from, answered) = witness.next(Duration::from_secs(1)).await?;
    ensure!(
        from == pair.standby.sip && !answered,
        "witness OPTIONS from {from}"
    );
    // Still stand-by after its next attempt at the witness (the OPTIONS that follows).
    let (from, _) = witness.next(Duration::from_secs(5)).await?;
    ensure!(from == pair.standby.sip, "witness OPTIONS from {from}");
    let v = pair.standby.status().await?;
    ensure!(
        v["role"] == "standby" && num(&v, "epoch") == epoch0,
        "a stand-by without its witness took over: {v}"
    );
    // The witness answers: the stand-by takes over.
    witness.answer.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let v = pair
        .standby
        .wait_status(Duration::from_secs(5), "active", |v| v["role"] == "active")
        .await?;
    ensure!(num(&v, "epoch") > epoch0, "epoch did not rise: {v}");
    ensure!(v["peer"]["isolated"] == false, "still isolated: {v}");
    eprintln!(
        "[g witness] stand-by took over {:?} after the witness started answering",
        t0.elapsed()
    );
    Ok(())
}
