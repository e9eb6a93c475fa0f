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
        transfer_of: None,
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

fn log_in(format: Format) -> DigestLog {
    let mut log = DigestLog::new();
    log.set_format(format);
    log
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

fn first_contact_resyncs_then_deltas_apply_in(format: Format) {
    let mut log = log_in(format);
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
fn first_contact_resyncs_then_deltas_apply() {
    first_contact_resyncs_then_deltas_apply_in(Format::Lines);
    first_contact_resyncs_then_deltas_apply_in(Format::Json);
}

fn chunks_are_bounded_and_the_rest_follows_in(format: Format) {
    let mut log = log_in(format);
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
fn chunks_are_bounded_and_the_rest_follows() {
    chunks_are_bounded_and_the_rest_follows_in(Format::Lines);
    chunks_are_bounded_and_the_rest_follows_in(Format::Json);
}

fn a_lost_chunk_is_resent_and_duplicates_are_harmless_in(format: Format) {
    let mut log = log_in(format);
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
fn a_lost_chunk_is_resent_and_duplicates_are_harmless() {
    a_lost_chunk_is_resent_and_duplicates_are_harmless_in(Format::Lines);
    a_lost_chunk_is_resent_and_duplicates_are_harmless_in(Format::Json);
}

fn a_gap_asks_for_the_full_list_in(format: Format) {
    let mut log = log_in(format);
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
fn a_gap_asks_for_the_full_list() {
    a_gap_asks_for_the_full_list_in(Format::Lines);
    a_gap_asks_for_the_full_list_in(Format::Json);
}

fn a_call_that_ends_before_its_entries_are_sent_needs_no_resync_in(format: Format) {
    let mut log = log_in(format);
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
fn a_call_that_ends_before_its_entries_are_sent_needs_no_resync() {
    a_call_that_ends_before_its_entries_are_sent_needs_no_resync_in(Format::Lines);
    a_call_that_ends_before_its_entries_are_sent_needs_no_resync_in(Format::Json);
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
fn the_table_is_bounded_in(format: Format) {
    let mut log = log_in(format);
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

#[test]
fn the_table_is_bounded() {
    the_table_is_bounded_in(Format::Lines);
    the_table_is_bounded_in(Format::Json);
}

/// Version 2 carries every field by name, the transfer link included, and reads back equal.
#[test]
fn json_records_round_trip() {
    let mut with_transfer = leg(1, false);
    if let Entry::Leg(l) = &mut with_transfer {
        l.transfer_of = Some("transferor-leg@host".into());
    }
    for e in [leg(1, true), with_transfer, ring(2), Entry::Gone(3)] {
        let v: serde_json::Value = serde_json::from_str(&json_entry(9, &e)).unwrap();
        assert_eq!(parse_json_entry(v), Ok((9, Some(e))));
    }
    let mut log = log_in(Format::Json);
    log.resync(vec![leg(4, true)]);
    let (body, _) = log.chunk(10_000, 0).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(v["version"], 2);
    assert_eq!(v["reset"], true);
    assert_eq!(v["entries"][0]["kind"], "leg");
    assert_eq!(v["entries"][0]["call_id"], "c4\tx");
    assert_eq!(v["entries"][0]["proto"], "tcp");
    assert_eq!(v["entries"][0]["remote"], "127.0.0.1:5090");
}

/// A later version's body: fields and entry kinds this build does not know are skipped, the
/// sequence still holds, and fields it left out get their defaults.
#[test]
fn a_later_version_is_read_for_what_it_shares() {
    let mut t = DigestTable::default();
    let body = r#"{"version":3,"generation":77,"first":1,"reset":true,"compression":"none",
        "entries":[
        {"seq":1,"kind":"leg","token":5,"is_a":true,"call_id":"c5","local_tag":"u1","remote_tag":"r1",
         "local_uri":"<sip:a@x>","remote_uri":"<sip:b@x>","remote_target":"sip:b@127.0.0.1:5090",
         "proto":"udp","remote":"127.0.0.1:5090","video":{"ssrc":1}},
        {"seq":2,"kind":"conference","token":5,"members":3},
        {"seq":3,"kind":"leg","token":5,"is_a":false,"call_id":"c5b","local_tag":"u2","remote_tag":"r2",
         "local_uri":"<sip:b@x>","remote_uri":"<sip:a@x>","remote_target":"sip:a@127.0.0.1:5091",
         "proto":"tcp","remote":"127.0.0.1:5091","cseq":7,"party":"bob","start_ms":1,
         "transfer_of":"old@x"}
        ]}"#;
    assert_eq!(t.apply(body), Ack::Upto(77, 3));
    let calls = t.take();
    let call = &calls[&5];
    let a = call.a.as_ref().expect("leg a");
    assert_eq!((a.cseq, a.party.as_str(), a.route_set.len()), (0, "", 0));
    assert_eq!(a.transfer_of, None);
    let b = call.b.as_ref().expect("leg b");
    assert_eq!((b.cseq, b.transfer_of.as_deref()), (7, Some("old@x")));

    // Broken: a leg without its Call-ID, or no sequence number, asks for the full list.
    let mut t = DigestTable::default();
    let broken = r#"{"version":2,"generation":1,"first":1,"reset":true,"entries":[{"seq":1,"kind":"leg","token":5}]}"#;
    assert_eq!(t.apply(broken), Ack::Resync);
    assert_eq!(t.apply("{not json"), Ack::Resync);
}

/// A rolling upgrade: the stand-by reads both versions, and a log that switches version in
/// the middle of a generation (the peer announced version 2) goes on without a resync.
#[test]
fn a_peer_switching_version_mid_stream_needs_no_resync() {
    let mut log = log_in(Format::Lines);
    let mut t = DigestTable::default();
    log.resync(vec![leg(1, true), leg(1, false)]);
    sync(&mut log, &mut t);
    log.set_format(Format::Json);
    log.push(leg(2, true));
    log.push(leg(2, false));
    let (body, _) = log.chunk(10_000, 0).unwrap();
    assert!(body.starts_with('{'));
    let ack = t.apply(&body);
    assert!(matches!(ack, Ack::Upto(_, 4)), "{ack:?}");
    assert_eq!(t.len(), 2);
    assert_eq!(Format::for_peer(None), Format::Lines);
    assert_eq!(Format::for_peer(Some(1)), Format::Lines);
    assert_eq!(Format::for_peer(Some(2)), Format::Json);
    assert_eq!(Format::for_peer(Some(9)), Format::Json);
}
