//! OPTIONS outside a dialog (RFC 3261 §11): 200 with Allow, Accept and Supported.

use anyhow::Result;
use sip_tests::TestServer;
use understudy::sip::{HeaderName, SipMessage};

#[tokio::test]
async fn options_lists_capabilities() -> Result<()> {
    let server = TestServer::start().await?;
    let mut ua = server.ua("alice").await?;
    let r = ua.options(&format!("sip:{}", server.sip)).await?;
    assert_eq!(r.status, 200);
    for m in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"] {
        assert!(
            r.has_token(&HeaderName::Allow, m),
            "Allow lacks {m}: {:?}",
            r.headers.get(&HeaderName::Allow)
        );
    }
    let accept = r.headers.get(&HeaderName::Accept).unwrap_or_default();
    assert!(accept.contains("application/sdp"), "Accept: {accept:?}");
    assert!(
        r.headers.get(&HeaderName::Supported).is_some(),
        "no Supported header"
    );
    assert!(
        r.to_tag().is_some(),
        "a final response to OPTIONS carries a To tag"
    );
    Ok(())
}
