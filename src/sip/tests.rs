//! Facade tests: the RFC 4475 torture corpus (read from the workplace's shared directory at
//! test time, never copied here), our own malformed cases, and round trips.

use super::*;

/// Where the RFC 4475 corpus lives in this workplace (outside the repository).
pub(crate) fn corpus_dir() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/torture/rfc4475");
    p.join("MANIFEST.tsv").exists().then_some(p)
}

/// What our facade does with one message: accepted, or rejected with a status (0 = drop).
fn outcome(bytes: &[u8]) -> Result<(), u16> {
    match parse_datagram(bytes) {
        Err(_) => Err(0),
        Ok(p) => match validate(&p) {
            Ok(()) => Ok(()),
            Err(_) if matches!(p.message, Message::Response(_)) => Err(0),
            Err(r) => Err(r.status),
        },
    }
}

#[test]
fn rfc4475_corpus_parser_verdicts() {
    let Some(dir) = corpus_dir() else {
        eprintln!("skipped: corpus not found");
        return;
    };
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let mut checked = 0;
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, kind) = (cols[0], cols[3]);
        let bytes = std::fs::read(dir.join(kind).join(format!("{name}.sip"))).unwrap();
        let got = outcome(&bytes);
        match kind {
            "valid" => assert_eq!(got, Ok(()), "{name} must be accepted"),
            _ => match got {
                Ok(()) => panic!("{name} must be rejected"),
                Err(code) => assert!(
                    [0, 400, 501, 505].contains(&code),
                    "{name}: unexpected status {code}"
                ),
            },
        }
        checked += 1;
    }
    assert_eq!(checked, 50);
}

#[test]
fn rfc4475_specific_codes() {
    let Some(dir) = corpus_dir() else {
        eprintln!("skipped: corpus not found");
        return;
    };
    let read = |k: &str, n: &str| std::fs::read(dir.join(k).join(format!("{n}.sip"))).unwrap();
    assert_eq!(outcome(&read("invalid", "badvers")), Err(505));
    assert!(matches!(
        outcome(&read("invalid", "mismatch02")),
        Err(501 | 400)
    ));
    // wsinv: folding, compact forms and LWS are all understood.
    let p = parse_datagram(&read("valid", "wsinv")).unwrap();
    let Message::Request(r) = p.message else {
        panic!("request expected")
    };
    assert_eq!(r.headers.count(&HeaderName::Via), 3);
    assert_eq!(r.to_tag().as_deref(), Some("1918181833n"));
    assert_eq!(r.from_tag().as_deref(), Some("98asjd8"));
    assert_eq!(r.contacts().unwrap().len(), 1);
    assert_eq!(r.header_u32(&HeaderName::MaxForwards), Some(Ok(68)));
    // dblreq: the REGISTER is processed, the trailing INVITE ignored.
    let p = parse_datagram(&read("valid", "dblreq")).unwrap();
    assert!(
        matches!(p.message, Message::Request(ref r) if r.method == Method::Register && r.body.is_empty())
    );
    // clerr: Content-Length larger than the datagram; we can still route a 400.
    let clerr = read("invalid", "clerr");
    assert!(parse_datagram(&clerr).is_err());
    assert!(salvage_request(&clerr).is_some());
}

const INVITE: &str = "INVITE sip:bob@pbx.local SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@pbx.local>;tag=a1\r\n\
To: <sip:bob@pbx.local>\r\n\
Call-ID: c1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

#[test]
fn print_parse_round_trip() {
    let p = parse_datagram(INVITE.as_bytes()).unwrap();
    let again = parse_datagram(&p.message.to_bytes()).unwrap();
    assert_eq!(p.message, again.message);
    assert!(validate(&p).is_ok());
}

#[test]
fn own_malformed_cases() {
    // Garbage, truncated head, body shorter than Content-Length, NUL bytes, empty.
    for bad in [
        &b"\x00\x01\x02garbage"[..],
        b"INVITE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n",
        b"",
        b"\r\n\r\n",
        b"SIP/2.0 99999 Huh\r\n\r\n",
    ] {
        assert!(outcome(bad).is_err(), "{bad:?}");
    }
    let long_body = INVITE.replace("Content-Length: 4", "Content-Length: 400");
    assert!(parse_datagram(long_body.as_bytes()).is_err());
    let salvaged = salvage_request(long_body.as_bytes()).unwrap();
    assert_eq!(salvaged.method, "INVITE");
    // Required headers missing or broken give 400 with a reason naming the header.
    for (from, to) in [
        ("Call-ID: c1@127.0.0.1\r\n", ""),
        ("CSeq: 1 INVITE", "CSeq: x INVITE"),
        ("CSeq: 1 INVITE", "CSeq: 1 BYE"),
        (
            "From: \"Alice\" <sip:alice@pbx.local>;tag=a1",
            "From: \"Alice <sip:alice@pbx.local>",
        ),
        ("Max-Forwards: 70", "Max-Forwards: 256"),
        (
            "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1;rport",
            "Via: SIP/2.0/UDP",
        ),
        (
            "To: <sip:bob@pbx.local>",
            "To: <sip:bob@pbx.local>\r\nTo: <sip:x@y>",
        ),
    ] {
        let m = INVITE.replace(from, to);
        let r = outcome(m.as_bytes());
        assert_eq!(r, Err(400), "{to}");
    }
}

#[test]
fn stream_framing_waits_and_fails_cleanly() {
    let mut f = StreamFramer::new();
    let bytes = INVITE.as_bytes();
    let mut got = 0;
    for chunk in bytes.chunks(7) {
        got += f.push(chunk).unwrap().len();
    }
    assert_eq!(got, 1);
    // two messages and a keep-alive in one chunk
    let mut two = bytes.to_vec();
    two.extend_from_slice(b"\r\n\r\n");
    two.extend_from_slice(bytes);
    assert_eq!(f.push(&two).unwrap().len(), 2);
    // a bad Content-Length is an error, not a hang
    let mut g = StreamFramer::new();
    let bad = INVITE.replace("Content-Length: 4", "Content-Length: -4");
    assert!(g.push(bad.as_bytes()).is_err());
    // no Content-Length at all on a stream: error
    let mut h = StreamFramer::new();
    let none = INVITE.replace("Content-Length: 4\r\n", "");
    assert!(h.push(none.as_bytes()).is_err());
}
