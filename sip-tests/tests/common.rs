//! Helpers shared by the call tests.

use anyhow::Result;
use sip_tests::{TestServer, Ua};
use understudy::b2bua::{Side, parse_tag};
use understudy::cdr::CdrRecord;

/// A server with alice and bob registered from their own UAs.
pub async fn alice_and_bob() -> Result<(TestServer, Ua, Ua)> {
    let server = TestServer::start().await?;
    let mut alice = server.ua("alice").await?;
    let mut bob = server.ua("bob").await?;
    assert_eq!(alice.register().await?.status, 200);
    assert_eq!(bob.register().await?.status, 200);
    Ok((server, alice, bob))
}

/// Once the server is idle, stop it and return its CDR, failing the test unless it wrote
/// exactly one.
pub async fn only_cdr(server: TestServer) -> Result<CdrRecord> {
    server.wait_idle().await?;
    let mut cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    Ok(cdrs.remove(0))
}

/// The call token and side of one of the B2BUA's tags, failing the test if it is not one.
pub fn token_of(tag: Option<String>, side: Side) -> u64 {
    let tag = tag.expect("a tag");
    match parse_tag(&tag) {
        Some((token, s)) if s == side => token,
        other => panic!("tag {tag:?} is not a {side:?}-leg B2BUA tag: {other:?}"),
    }
}
