//! REGISTER with digest auth (RFC 3261 §10.3, §22): challenge, wrong password, removal,
//! several contacts.

use anyhow::Result;
use sip_tests::TestServer;
use understudy::sip::digest::Algorithm;
use understudy::sip::{HeaderName, SipMessage};

#[tokio::test]
async fn register_answers_the_challenge_and_shows_in_registrations() -> Result<()> {
    let mut cfg = TestServer::config();
    cfg.registrar.digest_algorithms = vec![Algorithm::Md5, Algorithm::Sha256];
    let server = TestServer::start_with(cfg).await?;
    let mut alice = server.ua("alice").await?;
    alice.set_policy(|p| p.auto_auth = false);
    let first = alice.register().await?;
    assert_eq!(
        first.status, 401,
        "a REGISTER without credentials must be challenged"
    );
    let algs: Vec<&str> = first
        .headers
        .get_all(&HeaderName::WwwAuthenticate)
        .collect();
    assert!(
        algs.len() >= 2,
        "MD5 and SHA-256 challenges expected, got {algs:?}"
    );
    assert!(algs[0].contains("MD5"), "MD5 first: {algs:?}");
    assert!(
        algs.iter().any(|a| a.contains("SHA-256")),
        "a SHA-256 challenge: {algs:?}"
    );

    alice.set_policy(|p| p.auto_auth = true);
    let ok = alice.register().await?;
    assert_eq!(ok.status, 200, "{} {}", ok.status, ok.reason);
    let bound: Vec<String> = ok.contacts()?.iter().map(|c| c.uri.to_string()).collect();
    assert_eq!(bound, [alice.contact_uri()], "the 200 lists the binding");
    assert_eq!(server.contacts_of("alice").await?, [alice.contact_uri()]);
    assert_eq!(server.counts().await?.registrations, 1);
    Ok(())
}

#[tokio::test]
async fn default_challenge_is_md5_only() -> Result<()> {
    // Clients such as baresip (libre) refuse a 401 that names any algorithm they lack.
    let server = TestServer::start().await?;
    let mut alice = server.ua("alice").await?;
    alice.set_policy(|p| p.auto_auth = false);
    let first = alice.register().await?;
    let algs: Vec<&str> = first
        .headers
        .get_all(&HeaderName::WwwAuthenticate)
        .collect();
    assert_eq!(algs.len(), 1, "{algs:?}");
    assert!(algs[0].contains("algorithm=MD5"), "{algs:?}");
    Ok(())
}

#[tokio::test]
async fn register_with_sha256_digest() -> Result<()> {
    let mut cfg = TestServer::config();
    cfg.registrar.digest_algorithms = vec![Algorithm::Sha256, Algorithm::Md5];
    let server = TestServer::start_with(cfg).await?;
    let mut bob = server.ua("bob").await?;
    bob.set_policy(|p| p.prefer_sha256 = true);
    let ok = bob.register().await?;
    assert_eq!(ok.status, 200, "{} {}", ok.status, ok.reason);
    assert_eq!(server.contacts_of("bob").await?, [bob.contact_uri()]);
    Ok(())
}

#[tokio::test]
async fn wrong_password_gets_403_never_200() -> Result<()> {
    let server = TestServer::start().await?;
    let mut alice = server.ua("alice").await?;
    alice.set_password("not-alice-secret");
    let r = alice.register().await?;
    assert_eq!(r.status, 403, "wrong password: {} {}", r.status, r.reason);
    assert!(server.contacts_of("alice").await?.is_empty());
    assert_eq!(server.counts().await?.registrations, 0);
    // A second attempt is refused too (fresh challenge, same wrong answer).
    let r = alice.register().await?;
    assert_eq!(r.status, 403);
    assert!(server.contacts_of("alice").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn unknown_user_is_not_registered() -> Result<()> {
    let server = TestServer::start().await?;
    let mut mallory = server.ua("mallory").await?;
    let r = mallory.register().await?;
    assert_ne!(
        r.status / 100,
        2,
        "unknown user registered: {} {}",
        r.status,
        r.reason
    );
    assert_eq!(server.counts().await?.registrations, 0);
    Ok(())
}

#[tokio::test]
async fn unregister_with_expires_zero() -> Result<()> {
    let server = TestServer::start().await?;
    let mut alice = server.ua("alice").await?;
    assert_eq!(alice.register().await?.status, 200);
    assert_eq!(server.contacts_of("alice").await?.len(), 1);
    let r = alice.unregister().await?;
    assert_eq!(r.status, 200, "{} {}", r.status, r.reason);
    assert!(r.contacts()?.is_empty(), "no binding left in the 200");
    assert!(server.contacts_of("alice").await?.is_empty());
    assert_eq!(server.counts().await?.registrations, 0);
    Ok(())
}

#[tokio::test]
async fn several_contacts_for_one_user() -> Result<()> {
    let server = TestServer::start().await?;
    let mut desk = server.ua("alice").await?;
    let mut mobile = server.ua("alice").await?;
    assert_eq!(desk.register().await?.status, 200);
    let r = mobile.register().await?;
    assert_eq!(r.status, 200);
    let mut listed: Vec<String> = r.contacts()?.iter().map(|c| c.uri.to_string()).collect();
    listed.sort();
    let mut want = vec![desk.contact_uri(), mobile.contact_uri()];
    want.sort();
    assert_eq!(listed, want, "the 200 lists every binding of the AOR");
    let mut shown = server.contacts_of("alice").await?;
    shown.sort();
    assert_eq!(shown, want);

    // One REGISTER with two Contact values adds both.
    let extra = [
        format!("<sip:alice@{}>", desk.addr()),
        "<sip:alice@127.0.0.1:5999>".to_string(),
    ];
    assert_eq!(desk.register_with(600, &extra).await?.status, 200);
    assert_eq!(server.contacts_of("alice").await?.len(), 3);
    assert_eq!(server.counts().await?.registrations, 3);

    // Removing one leaves the others.
    assert_eq!(mobile.unregister().await?.status, 200);
    let left = server.contacts_of("alice").await?;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&mobile.contact_uri()));
    Ok(())
}
