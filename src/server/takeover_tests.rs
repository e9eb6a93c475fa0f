//! Takeover pacing on a virtual clock: queries wait for a free slot, resets leave in batches.

use crate::entropy::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::registrar::Settings;
use crate::transaction::Timers;

fn config(mode: &str) -> Config {
    let mut text = format!(
        "[node]\nname = \"n\"\nsip_udp = \"127.0.0.1:5060\"\n\
         [pair]\npeer = \"127.0.0.1:5062\"\nsecret = \"pair-secret-1\"\nmode = \"{mode}\"\n\
         [takeover]\nparallel = 2\nquery_timeout_ms = 1000\n"
    );
    for i in 0..5 {
        text.push_str(&format!(
            "[[trunks]]\nname = \"t{i}\"\naddress = \"127.0.0.1:{}\"\nprefixes = [\"{i}\"]\n\
             dialog_query = true\n",
            6001 + i
        ));
    }
    Config::from_toml_str(&text, "test").expect("config")
}

fn parts() -> (Registrar, TransactionLayer, LocalContact) {
    let settings = Settings {
        realm: "pbx.local".into(),
        min_expires: 60,
        max_expires: 3600,
        default_expires: 3600,
        nonce_secret: b"s".to_vec(),
        nonce_lifetime_s: 300,
        max_auth_failures: 3,
        algorithms: vec![crate::sip::digest::Algorithm::Md5],
        max_contacts_per_aor: 10,
    };
    let timers = Timers {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
    };
    let me = LocalContact {
        udp: "127.0.0.1:5060".into(),
        tcp: "127.0.0.1:5060".into(),
        tls: String::new(),
    };
    (
        Registrar::new(settings, std::iter::empty()),
        TransactionLayer::new(timers, true),
        me,
    )
}

#[test]
fn full_query_slots_wait_for_answers_instead_of_spinning() {
    let cfg = config("hot");
    let (registrar, mut tx, me) = parts();
    let now = Instant::now();
    let mut t = Takeover::start(&cfg, &registrar, now, 0, HashMap::default());
    assert_eq!(t.report.endpoints, 5);
    t.tick(now, &mut tx, &me, 0);
    assert_eq!(t.report.queried, 2, "at most `parallel` queries at a time");
    // Three endpoints wait, but no slot is free: the next wake-up is the query deadline.
    assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(1)));
    // A refusal frees a slot: work is due at once.
    let id = *t.txs.keys().next().expect("a query transaction");
    let refused = Response::new(489);
    t.on_result(id, Some(&refused));
    assert!(t.poll_timeout().is_some_and(|d| d <= now));
    t.tick(now, &mut tx, &me, 0);
    assert_eq!(t.report.queried, 3);
}

#[test]
fn resets_leave_in_paced_batches() {
    let cfg = config("cold");
    let (registrar, mut tx, me) = parts();
    let now = Instant::now();
    let mut t = Takeover::start(&cfg, &registrar, now, 0, HashMap::default());
    t.tick(now, &mut tx, &me, 0);
    assert_eq!(t.report.reset, 2);
    assert_eq!(t.poll_timeout(), Some(now + RESET_PACE));
    t.tick(now + RESET_PACE / 2, &mut tx, &me, 0);
    assert_eq!(t.report.reset, 2, "not before the pacing interval");
    t.tick(now + RESET_PACE, &mut tx, &me, 0);
    assert_eq!(t.report.reset, 4);
    t.tick(now + RESET_PACE * 2, &mut tx, &me, 0);
    assert_eq!(t.report.reset, 5);
    // Only the check whether the B2BUA's re-binds are done is left (due since the start).
    assert_eq!(t.poll_timeout(), Some(now));
    assert!(t.finish_check_due(now + RESET_PACE * 2));
    assert_eq!(t.poll_timeout(), Some(now + RESET_PACE * 2 + FINISH_CHECK));
    assert!(!t.finish_check_due(now + RESET_PACE * 2));
}

/// `takeover.fallback = "cold"` with the digest on: endpoints that do not answer the dialog
/// query but whose calls were re-bound from the digest get no reset (a default-config
/// phone reboots on `check-sync` and would drop the call just saved); an endpoint without a
/// call still gets one.
#[test]
fn fallback_resets_spare_endpoints_with_recovered_calls() {
    use crate::fuzzing::harness::{Event, Harness, Mode};
    use crate::sip::{HeaderName, Message};
    let seed = crate::fuzzing::seeds::all()
        .into_iter()
        .find(|s| s.target == "server" && s.name == "standby-takeover")
        .expect("seed");
    let (_, events) = seed.bytes.split_first().expect("mode byte");
    let mut h = Harness::new(Mode::Standby, false, 0x5eed);
    let mut resets: crate::entropy::HashMap<u8, usize> = crate::entropy::HashMap::default();
    let mut reinvites = 0;
    for e in Event::decode_all(events) {
        for (dest, _, m) in h.apply(&e) {
            if let Message::Request(r) = &m {
                let reset = r.method == crate::sip::Method::Notify
                    && r.headers
                        .get(&HeaderName::Event)
                        .is_some_and(|e| e.starts_with("check-sync"));
                if reset {
                    *resets.entry(dest).or_default() += 1;
                }
                reinvites += usize::from(r.method == crate::sip::Method::Invite);
            }
        }
    }
    assert!(reinvites >= 2, "the digest call was re-bound");
    assert_eq!(resets.get(&0), None, "alice (call recovered) was reset");
    assert_eq!(resets.get(&1), None, "bob (call recovered) was reset");
    assert!(
        resets.get(&7).is_some_and(|n| *n >= 1),
        "dave (no call) is reset (retransmitted while unanswered): {resets:?}"
    );
}

/// `n` confirmed calls as the digest knows them, every one between the same two
/// destinations (127.0.0.1:6001 and :6002).
fn digest_calls(n: u64) -> HashMap<u64, crate::pair::digest::DigestCall> {
    use crate::pair::digest::{DigestCall, LegRecord};
    let leg = |token: u64, is_a: bool, port: u16| LegRecord {
        token,
        is_a,
        call_id: format!("c{token}-{is_a}"),
        local_tag: format!("u{token:016x}{}", if is_a { "a" } else { "b" }),
        remote_tag: "r".into(),
        local_uri: "<sip:a@pbx.local>".into(),
        remote_uri: "<sip:b@pbx.local>".into(),
        remote_target: format!("sip:x@127.0.0.1:{port}"),
        proto: crate::net::Proto::Udp,
        remote: SocketAddr::from(([127, 0, 0, 1], port)),
        route_set: Vec::new(),
        cseq: 1,
        party: "p".into(),
        start_ms: 1,
        transfer_of: None,
    };
    (1..=n)
        .map(|t| {
            let call = DigestCall {
                a: Some(leg(t, true, 6001)),
                b: Some(leg(t, false, 6002)),
                ringing: None,
            };
            (t, call)
        })
        .collect()
}

/// A takeover of many calls to two trunks (their windows full after the first few): each tick
/// looks at no more of the waiting queue than it admits plus one run of refusals, however
/// long the queue, and every call still gets its turn.
#[test]
fn a_tick_costs_what_it_admits_not_the_whole_queue() {
    let cfg = config("hot");
    let (registrar, mut tx, me) = parts();
    let now = Instant::now();
    let n = 20_000u64;
    let digest = digest_calls(n);
    let mut t = Takeover::start(&cfg, &registrar, now, 0, digest);
    let mut adopted = 0;
    for round in 0..3 {
        let steps = t.tick(now, &mut tx, &me, t.in_flight());
        let admitted = steps.iter().filter(|s| matches!(s, Step::Adopt(_))).count();
        adopted += admitted;
        assert!(
            t.looked <= admitted + REFUSED_RUN,
            "round {round}: looked at {} of {} waiting calls to admit {admitted}",
            t.looked,
            t.waiting.len()
        );
    }
    // The windows (4 per destination at first) hold the rest back; nothing is lost.
    assert_eq!(adopted, super::super::pacing::START as usize);
    assert_eq!(t.waiting.len() + adopted, n as usize);
}

/// Re-binds end thousands of times a second in a large takeover: the queue is looked at no
/// more than once per `LOOK_EVERY` for them (a look may pass over a run of refused calls),
/// and on time once that has passed.
#[test]
fn the_queue_is_looked_at_no_more_than_once_a_millisecond() {
    let cfg = config("hot");
    let (registrar, mut tx, me) = parts();
    let now = Instant::now();
    let digest = digest_calls(100);
    let mut t = Takeover::start(&cfg, &registrar, now, 0, digest);
    let _ = t.tick(now, &mut tx, &me, t.in_flight());
    assert!(t.looked > 0);
    // Something changed (a re-bind ended) within the same millisecond: no look yet...
    t.queue_changed = true;
    let _ = t.tick(now, &mut tx, &me, t.in_flight());
    assert_eq!(t.looked, 0);
    // ...and one as soon as the millisecond has passed.
    let _ = t.tick(now + LOOK_EVERY, &mut tx, &me, t.in_flight());
    assert!(t.looked > 0);
}
