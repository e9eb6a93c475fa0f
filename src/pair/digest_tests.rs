use super::*;

fn leg(token: u64, is_a: bool) -> Entry {
    Entry::Leg(Box::new(LegRecord {
        token,
        is_a,
        call_id: format!("c{token}\tx"),
        local_tag: format!("u{token:016x}a"),
        remote_tag: "rt".into(),
        local_uri: "<sip:bob@pbx.local>".into(),
        remote_uri: "\"A\\\" b\" <sip:alice@pbx.local>".into(),
        remote_target: "sip:alice@127.0.0.1:5090".into(),
        proto: Proto::Tcp,
        remote: "127.0.0.1:5090".parse().unwrap(),
        route_set: vec!["<sip:p1;lr>".into(), "<sip:p2;lr>".into()],
        cseq: 65537,
        party: "alice".into(),
        start_ms: 1_700_000_000_000,
    }))
}

fn ring(token: u64) -> Entry {
    Entry::Ringing(Box::new(RingRecord {
        token,
        a_vias: vec!["SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKa;rport=5090".into()],
        a_from: "<sip:alice@pbx.local>;tag=at".into(),
        a_to: "<sip:bob@pbx.local>".into(),
        a_call_id: "ca".into(),
        a_cseq: 2,
        a_proto: Proto::Udp,
        a_remote: "127.0.0.1:5090".parse().unwrap(),
        b_via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb;rport".into(),
        b_uri: "sip:bob@127.0.0.1:5091".into(),
        b_from: "<sip:alice@pbx.local>;tag=ub".into(),
        b_to: "<sip:bob@pbx.local>".into(),
        b_call_id: "cb".into(),
        b_cseq: 65537,
        b_proto: Proto::Udp,
        b_remote: "127.0.0.1:5091".parse().unwrap(),
        b_early_tag: Some("bt".into()),
        b_early_target: None,
    }))
}

fn sync(log: &mut DigestLog, table: &mut DigestTable) -> Ack {
    let mut ack = table.current_ack();
    while let Some((body, _)) = log.chunk(1000, 0) {
        ack = table.apply(&body);
        match ack {
            Ack::Upto(g, s) => log.on_ack(g, s),
            Ack::Resync => log.resync(vec![]),
        }
        if log.backlog() == 0 {
            break;
        }
    }
    ack
}

#[test]
fn records_round_trip_with_escapes() {
    for e in [leg(1, true), ring(2), Entry::Gone(3)] {
        let l = line(9, &e);
        assert_eq!(parse_line(l.trim_end_matches('\n')), Some((9, e)));
    }
}

#[test]
fn first_contact_resyncs_then_deltas_apply() {
    let mut log = DigestLog::new();
    let mut t = DigestTable::default();
    log.push(leg(1, true));
    // The stand-by has never seen this generation and the first chunk is no reset: resync.
    let (body, _) = log.chunk(10_000, 0).unwrap();
    assert_eq!(t.apply(&body), Ack::Resync);
    log.resync(vec![leg(1, true), leg(1, false)]);
    let (body, n) = log.chunk(10_000, 0).unwrap();
    assert_eq!(n, 2);
    let ack = t.apply(&body);
    assert!(matches!(ack, Ack::Upto(_, _)));
    if let Ack::Upto(g, s) = ack {
        log.on_ack(g, s);
    }
    assert_eq!(log.backlog(), 0);
    assert_eq!(t.len(), 1);
    log.push(ring(2));
    log.push(Entry::Gone(1));
    sync(&mut log, &mut t);
    assert_eq!(t.len(), 1);
    let calls = t.take();
    assert!(calls[&2].ringing.is_some());
}

#[test]
fn chunks_are_bounded_and_the_rest_follows() {
    let mut log = DigestLog::new();
    let mut t = DigestTable::default();
    log.resync(vec![]);
    sync(&mut log, &mut t);
    for i in 10..110 {
        log.push(leg(i, true));
        log.push(leg(i, false));
    }
    let mut rounds = 0;
    while log.backlog() > 0 {
        let (body, _) = log.chunk(2_000, 0).unwrap();
        assert!(body.len() <= 2_000 + 400, "{}", body.len());
        if let Ack::Upto(g, s) = t.apply(&body) {
            log.on_ack(g, s);
        }
        rounds += 1;
        assert!(rounds < 200);
    }
    assert!(rounds > 5);
    assert_eq!(t.len(), 100);
}

#[test]
fn a_lost_chunk_is_resent_and_duplicates_are_harmless() {
    let mut log = DigestLog::new();
    let mut t = DigestTable::default();
    log.resync(vec![]);
    sync(&mut log, &mut t);
    log.push(leg(5, true));
    let (lost, _) = log.chunk(10_000, 0).unwrap(); // never arrives
    let _ = lost;
    log.push(leg(5, false));
    // Unacknowledged entries ride again on the next keep-alive.
    let (body, n) = log.chunk(10_000, 0).unwrap();
    assert_eq!(n, 2);
    let ack = t.apply(&body);
    assert_eq!(t.apply(&body), ack, "applying twice changes nothing");
    assert_eq!(t.len(), 1);
}

#[test]
fn a_gap_asks_for_the_full_list() {
    let mut log = DigestLog::new();
    let mut t = DigestTable::default();
    log.resync(vec![]);
    sync(&mut log, &mut t);
    log.push(leg(7, true));
    let (_, _) = log.chunk(10_000, 0).unwrap();
    // pretend the stand-by acked it without applying (it restarted): the table is empty
    let (body, _) = log.chunk(10_000, 0).unwrap();
    if let Ack::Upto(g, s) = t.apply(&body) {
        log.on_ack(g, s);
    }
    let mut fresh = DigestTable::default();
    log.push(leg(7, false));
    let (body, _) = log.chunk(10_000, 0).unwrap();
    assert_eq!(fresh.apply(&body), Ack::Resync);
    log.resync(vec![leg(7, true), leg(7, false)]);
    sync(&mut log, &mut fresh);
    assert_eq!(fresh.len(), 1);
}

#[test]
fn a_call_that_ends_before_its_entries_are_sent_needs_no_resync() {
    let mut log = DigestLog::new();
    let mut t = DigestTable::default();
    log.resync(vec![]);
    sync(&mut log, &mut t);
    log.push(leg(3, true));
    sync(&mut log, &mut t);
    // A call rejected at once: its ringing entry and its end go out in the same chunk.
    log.push(ring(4));
    log.push(Entry::Gone(4));
    log.push(Entry::Gone(3));
    let (body, _) = log.chunk(10_000, 0).unwrap();
    let ack = t.apply(&body);
    assert!(matches!(ack, Ack::Upto(_, _)), "{ack:?}");
    if let Ack::Upto(g, s) = ack {
        log.on_ack(g, s);
    }
    assert_eq!(log.backlog(), 0);
    assert_eq!(t.len(), 0);
}

#[test]
fn ack_header_round_trip() {
    assert_eq!(
        Ack::parse(&Ack::Upto(5, 9).to_header()),
        Some(Ack::Upto(5, 9))
    );
    assert_eq!(Ack::parse("resync"), Some(Ack::Resync));
    assert_eq!(Ack::parse("x"), None);
}

/// A flood of digest entries (an active with more calls than the stand-by will keep, or a
/// peer gone wrong) fills the table to its limit and no further; the rest is counted.
#[test]
fn the_table_is_bounded() {
    let mut log = DigestLog::new();
    let mut t = DigestTable::with_limit(1_000);
    log.resync((1..=3_000u64).map(|token| leg(token, true)).collect());
    let mut skip = 0;
    while let Some((body, n)) = log.chunk(64 * 1024, skip) {
        skip += n;
        t.apply(&body);
    }
    assert_eq!(t.len(), 1_000);
    assert_eq!(t.dropped, 2_000);
}
