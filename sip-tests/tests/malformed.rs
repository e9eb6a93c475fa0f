//! Bad bytes against the running server (DESIGN "Errors and bad input"): garbage and
//! unroutable fragments are dropped, a salvageable request gets 400, nothing panics, and the
//! server keeps answering OPTIONS. "No response" is established with an OPTIONS barrier
//! (see `sip_tests::raw`), not a fixed wait.

use std::time::Duration;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use sip_tests::TestServer;
use sip_tests::raw::{RawClient, Received};
use understudy::sip::{Message, SipMessage};

const LIMIT: Duration = Duration::from_secs(3);

fn invite(client: &RawClient, call_id: &str, content_length: Option<usize>) -> Vec<u8> {
    let me = client.addr();
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let cl = content_length.unwrap_or(body.len());
    format!(
        "INVITE sip:bob@pbx.local SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@pbx.local>;tag=malformed\r\n\
         To: <sip:bob@pbx.local>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 INVITE\r\n\
         Contact: <sip:alice@{me}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {cl}\r\n\
         \r\n\
         {body}"
    )
    .into_bytes()
}

fn lines(rs: &[Received]) -> Vec<String> {
    rs.iter().map(Received::first_line).collect()
}

#[tokio::test]
async fn garbage_gets_no_response() -> Result<()> {
    let server = TestServer::start().await?;
    let client = RawClient::bind(server.sip).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4475);
    let mut payloads: Vec<Vec<u8>> = vec![
        b"hello world".to_vec(),
        b"\x00\x01\x02\x03\xff\xfe\xfd".to_vec(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
        b"INVITE\r\n\r\n".to_vec(),
        vec![b'A'; 60_000],
        "\u{feff}REGISTER sip:pbx.local SIP/2.0\r\n"
            .as_bytes()
            .to_vec(),
    ];
    for len in [1, 17, 512, 1400, 9000] {
        payloads.push((0..len).map(|_| rng.r#gen::<u8>()).collect());
    }
    let mut answered = Vec::new();
    for p in &payloads {
        let got = client.exchange(p, LIMIT).await?;
        if !got.is_empty() {
            let head = String::from_utf8_lossy(&p[..p.len().min(60)]).into_owned();
            answered.push(format!("{head:?} -> {:?}", lines(&got)));
        }
    }
    assert!(
        answered.is_empty(),
        "unroutable input was answered: {answered:#?}"
    );
    let (status, metrics) = server.get_text("/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        !metrics.contains("understudy_malformed_total{action=\"dropped\"} 0\n"),
        "dropped garbage is counted: {metrics}"
    );
    Ok(())
}

/// Requests that parse but carry no usable Via (nor From/To/Call-ID/CSeq) cannot be answered:
/// a response is routed by its Via (RFC 3261 §18.2.2) and must copy those headers (§8.2.6.2).
#[tokio::test]
async fn requests_without_a_routable_via_get_no_response() -> Result<()> {
    let server = TestServer::start().await?;
    let client = RawClient::bind(server.sip).await?;
    let payloads: [&[u8]; 3] = [
        b"INVITE sip:bob@pbx.local SIP/2.0\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\n\r\n",
    ];
    let mut answered = Vec::new();
    for p in payloads {
        let got = client.exchange(p, LIMIT).await?;
        if !got.is_empty() {
            answered.push(format!(
                "{:?} -> {:?}",
                String::from_utf8_lossy(p),
                lines(&got)
            ));
        }
    }
    assert!(
        answered.is_empty(),
        "requests without a routable Via were answered: {answered:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn truncated_request_without_routing_headers_is_dropped() -> Result<()> {
    let server = TestServer::start().await?;
    let client = RawClient::bind(server.sip).await?;
    let full = invite(&client, "trunc1", None);
    let text = String::from_utf8(full.clone())?;
    let cut = text.find("From:").expect("From") + 10;
    let got = client.exchange(&full[..cut], LIMIT).await?;
    assert!(
        got.is_empty(),
        "truncated before Call-ID/CSeq, answered: {:?}",
        lines(&got)
    );
    Ok(())
}

#[tokio::test]
async fn content_length_larger_than_body_gets_400() -> Result<()> {
    let server = TestServer::start().await?;
    let client = RawClient::bind(server.sip).await?;
    let msg = invite(&client, "clbig1", Some(900));
    let got = client.exchange(&msg, LIMIT).await?;
    let statuses: Vec<Option<u16>> = got.iter().map(Received::status).collect();
    assert_eq!(
        statuses.first(),
        Some(&Some(400)),
        "answers: {:?}",
        lines(&got)
    );
    let Some(Message::Response(r)) = &got[0].message else {
        unreachable!()
    };
    assert_eq!(
        r.call_id()?,
        "clbig1",
        "the 400 is routed back with our Call-ID"
    );
    assert_eq!(r.cseq()?.seq, 7);
    assert!(
        statuses.iter().all(|s| *s == Some(400)),
        "nothing but 400: {:?}",
        lines(&got)
    );
    Ok(())
}

#[tokio::test]
async fn every_prefix_of_a_request_is_survived() -> Result<()> {
    let server = TestServer::start().await?;
    let client = RawClient::bind(server.sip).await?;
    let len = invite(&client, "prefix0000", None).len();
    let mut answered = 0;
    for cut in (1..len).step_by(11) {
        // A fresh branch and Call-ID per prefix, so no prefix is a retransmission of another.
        let full = invite(&client, &format!("prefix{cut:04}"), None);
        let got = client.exchange(&full[..cut], LIMIT).await?;
        for r in &got {
            let s = r.status();
            assert!(
                matches!(s, Some(100 | 400 | 401 | 407)),
                "prefix of {cut} bytes answered {:?}",
                r.first_line()
            );
        }
        answered += usize::from(!got.is_empty());
    }
    assert!(answered > 0, "no prefix was salvageable: none answered 400");
    // Still alive and answering.
    client.barrier(LIMIT).await?;
    Ok(())
}

/// The datagram that killed a node (and then its stand-by): a BYE whose To tag is `u`, 15
/// × `a` and `é` — 17 bytes after the `u`, split inside the two-byte `é` by the old call-tag
/// parser. A tag must be a token (RFC 3261 §25.1): the node answers 400 and keeps serving.
#[tokio::test]
async fn a_to_tag_that_is_not_a_token_gets_400_and_the_node_survives() -> Result<()> {
    let server = TestServer::start().await?;
    let client = RawClient::bind(server.sip).await?;
    let me = client.addr();
    let tag = format!("u{}é", "a".repeat(15));
    let bye = format!(
        "BYE sip:alice@pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKutf8;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@pbx.local>;tag=x1\r\nTo: <sip:alice@pbx.local>;tag={tag}\r\n\
         Call-ID: tag-utf8\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let got = client.exchange(bye.as_bytes(), LIMIT).await?;
    let statuses: Vec<Option<u16>> = got.iter().map(Received::status).collect();
    assert_eq!(statuses, [Some(400)], "answers: {:?}", lines(&got));
    client.barrier(LIMIT).await?;
    let (status, metrics) = server.get_text("/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("understudy_internal_errors_total 0\n"),
        "{metrics}"
    );
    Ok(())
}
