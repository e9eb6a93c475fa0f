//! Load: 10,000 INVITEs for a nonexistent user from a trunk address, a bounded window in
//! flight. Every one must get 404 (and is ACKed), and afterwards the server transaction table
//! must drain to zero (Timer I = T4 after the ACK; T1 is 50 ms so Timer H is 3.2 s).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sip_tests::server::T1_MS;
use sip_tests::{TestServer, trunk};
use tokio::net::UdpSocket;
use understudy::sip::{Message, SipMessage, parse_datagram};

const INVITES: usize = 10_000;
/// INVITEs in flight at once (keeps both socket buffers far from full).
const WINDOW: usize = 64;
/// The whole exchange must finish within this.
const BUDGET: Duration = Duration::from_secs(120);
/// Silence after which the INVITEs in flight are retransmitted (Timer A on a real UAC).
const RETRANSMIT_AFTER: Duration = Duration::from_secs(1);

fn invite(me: SocketAddr, i: usize) -> String {
    format!(
        "INVITE sip:ghost{i}@pbx.local SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKflood{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:load@{me}>;tag=f{i}\r\n\
         To: <sip:ghost{i}@pbx.local>\r\n\
         Call-ID: flood-{i}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:load@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn ack(me: SocketAddr, i: usize, to: &str) -> String {
    format!(
        "ACK sip:ghost{i}@pbx.local SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKflood{i};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:load@{me}>;tag=f{i}\r\n\
         To: {to}\r\n\
         Call-ID: flood-{i}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[derive(Debug, Default)]
struct Tally {
    answered: HashSet<usize>,
    other: HashMap<u16, usize>,
    retransmitted: usize,
}

async fn flood(sock: &UdpSocket, server: SocketAddr) -> Result<Tally> {
    let me = sock.local_addr()?;
    let mut t = Tally::default();
    let mut in_flight: HashSet<usize> = HashSet::new();
    let mut next = 0;
    let mut buf = vec![0u8; 65_535];
    while t.answered.len() < INVITES {
        while in_flight.len() < WINDOW && next < INVITES {
            sock.send_to(invite(me, next).as_bytes(), server).await?;
            in_flight.insert(next);
            next += 1;
        }
        let n = match tokio::time::timeout(RETRANSMIT_AFTER, sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                for &i in &in_flight {
                    sock.send_to(invite(me, i).as_bytes(), server).await?;
                    t.retransmitted += 1;
                }
                continue;
            }
        };
        let Ok(p) = parse_datagram(&buf[..n]) else {
            bail!("unparseable datagram from the server");
        };
        let Message::Response(r) = p.message else {
            bail!("the server sent a request to the load generator");
        };
        let i: usize = r
            .call_id()?
            .strip_prefix("flood-")
            .and_then(|s| s.parse().ok())
            .context("unknown Call-ID")?;
        match r.status {
            100 => {}
            404 => {
                let to = r
                    .headers
                    .get(&understudy::sip::HeaderName::To)
                    .unwrap_or_default();
                sock.send_to(ack(me, i, to).as_bytes(), server).await?;
                in_flight.remove(&i);
                t.answered.insert(i);
            }
            s => {
                *t.other.entry(s).or_default() += 1;
                in_flight.remove(&i);
                t.answered.insert(i);
            }
        }
    }
    Ok(t)
}

#[tokio::test]
async fn invite_flood_from_trunk_all_404_and_tables_drain() -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut cfg = TestServer::config();
    cfg.trunks
        .push(trunk("loadgen", sock.local_addr()?, &["7"], 0));
    let server = TestServer::start_with(cfg).await?;

    let started = Instant::now();
    let tally = tokio::time::timeout(BUDGET, flood(&sock, server.sip))
        .await
        .context("the flood did not finish within its budget")??;
    let took = started.elapsed();
    println!(
        "{INVITES} INVITEs answered in {took:?} ({:.0}/s), {} retransmitted",
        INVITES as f64 / took.as_secs_f64(),
        tally.retransmitted
    );
    assert_eq!(tally.answered.len(), INVITES);
    assert!(
        tally.other.is_empty(),
        "answers other than 404: {:?}",
        tally.other
    );

    let limit = Duration::from_millis(64 * T1_MS) + Duration::from_secs(5);
    let c = server
        .wait_counts(limit, "drained", |c| {
            c.server_transactions == 0 && c.calls == 0
        })
        .await?;
    assert_eq!(
        c.client_transactions, 0,
        "no client transaction was ever needed: {c:?}"
    );
    let cdrs = server.stop().await?;
    assert!(
        cdrs.is_empty(),
        "refused INVITEs are not calls: {} CDRs",
        cdrs.len()
    );
    Ok(())
}
