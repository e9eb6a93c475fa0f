//! Registrar tests: REGISTER flows with real digest computations on a virtual clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::digest::answer_challenge;
use crate::sip::{Headers, Method};

fn settings() -> Settings {
    Settings {
        realm: "pbx.local".into(),
        min_expires: 60,
        max_expires: 3600,
        default_expires: 3600,
        nonce_secret: b"test-secret".to_vec(),
        nonce_lifetime_s: 300,
        max_auth_failures: 3,
        algorithms: vec![
            crate::sip::digest::Algorithm::Md5,
            crate::sip::digest::Algorithm::Sha256,
        ],
        max_contacts_per_aor: 10,
    }
}

/// A registrar with user `alice` (for tests of other modules).
pub(crate) fn test_registrar() -> Registrar {
    Registrar::new(settings(), [("alice", "pw")])
}

fn src() -> Flow {
    Flow::udp(SocketAddr::from(([127, 0, 0, 1], 5090)))
}

fn register(user: &str, cseq: u32, contact: &str, expires: Option<u32>) -> Request {
    let mut r = Request::new(Method::Register, "sip:pbx.local");
    let mut h = Headers::new();
    h.push(
        HeaderName::Via,
        format!("SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK{cseq}"),
    );
    h.push(HeaderName::From, format!("<sip:{user}@pbx.local>;tag=ft"));
    h.push(HeaderName::To, format!("<sip:{user}@pbx.local>"));
    h.push(HeaderName::CallId, "reg-1");
    h.push(HeaderName::CSeq, format!("{cseq} REGISTER"));
    h.push(HeaderName::Contact, contact);
    if let Some(e) = expires {
        h.push(HeaderName::Expires, e.to_string());
    }
    r.headers = h;
    r
}

fn with_auth(mut req: Request, challenge: &Response, user: &str, pw: &str, nc: u32) -> Request {
    let ch = challenge.headers.get(&HeaderName::WwwAuthenticate).unwrap();
    let a = answer_challenge(ch, user, pw, "REGISTER", "sip:pbx.local", nc, "cn").unwrap();
    req.headers.push(HeaderName::Authorization, a);
    req
}

fn reg() -> Registrar {
    Registrar::new(settings(), [("alice", "pw-a"), ("bob", "pw-b")])
}

#[test]
fn challenge_then_200_with_bindings() {
    let mut r = reg();
    let t0 = Instant::now();
    let req = register("alice", 1, "<sip:alice@127.0.0.1:5090>", Some(600));
    let ch = r.handle_register(t0, 1000, &req, src());
    assert_eq!(ch.status, 401);
    assert_eq!(ch.headers.count(&HeaderName::WwwAuthenticate), 2);
    let ok = r.handle_register(
        t0,
        1000,
        &with_auth(
            register("alice", 2, "<sip:alice@127.0.0.1:5090>", Some(600)),
            &ch,
            "alice",
            "pw-a",
            1,
        ),
        src(),
    );
    assert_eq!(ok.status, 200);
    let contacts: Vec<_> = ok.headers.get_all(&HeaderName::Contact).collect();
    assert_eq!(contacts, ["<sip:alice@127.0.0.1:5090>;expires=600"]);
    assert_eq!(r.location().lookup("alice", t0).len(), 1);
    // expiry is driven by `now`
    r.expire(t0 + Duration::from_secs(599), 1599);
    assert_eq!(r.location().binding_count(), 1);
    r.expire(t0 + Duration::from_secs(600), 1600);
    assert_eq!(r.location().binding_count(), 0);
}

#[test]
fn wrong_password_is_403_never_200() {
    let mut r = reg();
    let t0 = Instant::now();
    let ch = r.handle_register(
        t0,
        1000,
        &register("alice", 1, "<sip:a@1.2.3.4>", None),
        src(),
    );
    let bad = with_auth(
        register("alice", 2, "<sip:a@1.2.3.4>", None),
        &ch,
        "alice",
        "wrong",
        1,
    );
    assert_eq!(r.handle_register(t0, 1000, &bad, src()).status, 403);
    // Credentials for another user than the To AOR
    let ch = r.handle_register(
        t0,
        1000,
        &register("alice", 3, "<sip:a@1.2.3.4>", None),
        src(),
    );
    let other = with_auth(
        register("alice", 4, "<sip:a@1.2.3.4>", None),
        &ch,
        "bob",
        "pw-b",
        1,
    );
    assert_eq!(r.handle_register(t0, 1000, &other, src()).status, 403);
    assert_eq!(r.location().binding_count(), 0);
}

#[test]
fn repeated_failures_lock_out_the_source() {
    let mut r = reg();
    let t0 = Instant::now();
    for i in 0..3 {
        let ch = r.handle_register(
            t0,
            1000,
            &register("alice", 10 + i * 2, "<sip:a@x>", None),
            src(),
        );
        let bad = with_auth(
            register("alice", 11 + i * 2, "<sip:a@x>", None),
            &ch,
            "alice",
            "bad",
            1,
        );
        assert_eq!(r.handle_register(t0, 1000, &bad, src()).status, 403);
    }
    assert_eq!(
        r.handle_register(t0, 1000, &register("alice", 99, "<sip:a@x>", None), src())
            .status,
        403
    );
    // after a minute it may try again
    let later = t0 + Duration::from_secs(61);
    assert_eq!(
        r.handle_register(
            later,
            1061,
            &register("alice", 100, "<sip:a@x>", None),
            src()
        )
        .status,
        401
    );
}

fn authed(
    r: &mut Registrar,
    t: Instant,
    cseq: u32,
    contact: &str,
    expires: Option<u32>,
) -> Response {
    let ch = r.handle_register(t, 1000, &register("alice", cseq, contact, expires), src());
    let req = with_auth(
        register("alice", cseq + 1, contact, expires),
        &ch,
        "alice",
        "pw-a",
        1,
    );
    r.handle_register(t, 1000, &req, src())
}

#[test]
fn interval_too_brief_and_clamping() {
    let mut r = reg();
    let t0 = Instant::now();
    let resp = authed(&mut r, t0, 1, "<sip:alice@h>", Some(30));
    assert_eq!(resp.status, 423);
    assert_eq!(resp.headers.get(&HeaderName::MinExpires), Some("60"));
    let resp = authed(&mut r, t0, 3, "<sip:alice@h>;expires=99999", None);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.get(&HeaderName::Contact),
        Some("<sip:alice@h>;expires=3600")
    );
}

#[test]
fn several_contacts_removal_and_wildcard() {
    let mut r = reg();
    let t0 = Instant::now();
    assert_eq!(
        authed(&mut r, t0, 1, "<sip:alice@h1>", Some(300)).status,
        200
    );
    let resp = authed(&mut r, t0, 3, "<sip:alice@h2>", Some(300));
    assert_eq!(resp.headers.count(&HeaderName::Contact), 2);
    let resp = authed(&mut r, t0, 5, "<sip:alice@h1>", Some(0));
    assert_eq!(resp.headers.count(&HeaderName::Contact), 1);
    assert_eq!(
        authed(&mut r, t0, 7, "<sip:alice@h3>", Some(300))
            .headers
            .count(&HeaderName::Contact),
        2
    );
    let resp = authed(&mut r, t0, 9, "*", Some(0));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers.count(&HeaderName::Contact), 0);
    assert_eq!(r.location().binding_count(), 0);
    assert_eq!(authed(&mut r, t0, 11, "*", Some(60)).status, 400);
}

#[test]
fn static_bindings_never_expire() {
    let mut r = reg();
    let t0 = Instant::now();
    r.add_static("bob", "<sip:bob@127.0.0.1:5099>", t0).unwrap();
    r.expire(t0 + Duration::from_secs(10 * 365 * 24 * 3600), 0);
    assert_eq!(r.location().lookup("bob", t0).len(), 1);
}

#[test]
fn unknown_user_looks_like_a_wrong_password() {
    let mut r = reg();
    let t0 = Instant::now();
    let ch = r.handle_register(t0, 1000, &register("mallory", 1, "<sip:m@x>", None), src());
    assert_eq!(ch.status, 401);
    let req = with_auth(
        register("mallory", 2, "<sip:m@x>", None),
        &ch,
        "mallory",
        "x",
        1,
    );
    assert_eq!(r.handle_register(t0, 1000, &req, src()).status, 403);
}

/// `limits.contacts_per_aor`: one more contact than the limit replaces the oldest binding;
/// a hundred REGISTERs with new ports never hold more than the limit.
#[test]
fn contacts_per_aor_is_bounded_by_replacing_the_oldest() {
    let mut s = settings();
    s.max_contacts_per_aor = 3;
    let mut r = Registrar::new(s, [("alice", "pw-a")]);
    let t0 = Instant::now();
    for i in 0..100u32 {
        let contact = format!("<sip:alice@127.0.0.1:{}>", 6000 + i);
        let req = register("alice", 2 * i + 1, &contact, Some(600));
        let ch = r.handle_register(t0, 1000 + u64::from(i), &req, src());
        assert_eq!(ch.status, 401);
        let req = with_auth(
            register("alice", 2 * i + 2, &contact, Some(600)),
            &ch,
            "alice",
            "pw-a",
            1,
        );
        let ok = r.handle_register(t0, 1000 + u64::from(i), &req, src());
        assert_eq!(ok.status, 200);
        assert!(r.location().lookup("alice", t0).len() <= 3);
    }
    let left: Vec<String> = r
        .location()
        .lookup("alice", t0)
        .iter()
        .map(|b| b.uri().to_string())
        .collect();
    assert_eq!(left.len(), 3);
    assert!(
        left.iter().any(|u| u.ends_with(":6099")),
        "the newest stays: {left:?}"
    );
    assert_eq!(r.location().evicted(), 97);
}

/// The failure table is bounded: wrong passwords from 20,000 addresses keep at most
/// `MAX_FAILURE_SOURCES` records, the oldest making room.
#[test]
fn failure_table_is_bounded() {
    let mut r = reg();
    let t0 = Instant::now();
    let req = register("alice", 1, "<sip:alice@127.0.0.1:5090>", Some(600));
    let ch = r.handle_register(t0, 1000, &req, src());
    for i in 0..20_000u32 {
        let [a, b, c, d] = (0x0a00_0000 + i).to_be_bytes();
        let from = Flow::udp(SocketAddr::from(([a, b, c, d], 5060)));
        let bad = with_auth(
            register("alice", 2, "<sip:alice@127.0.0.1:5090>", Some(600)),
            &ch,
            "alice",
            "wrong",
            i + 1,
        );
        let resp = r.handle_register(t0, 1000, &bad, from);
        assert_eq!(resp.status, 403);
    }
    assert_eq!(r.failure_sources(), MAX_FAILURE_SOURCES);
    assert_eq!(r.stats.failure_sources_evicted, 10_000);
}
