//! Entry points for the coverage-guided fuzzers in `fuzz/` (issue "No packet can stop a
//! node"). They live in the library, not in the fuzz crate, so that `cargo test` replays every
//! seed and every crash ever found (`fuzz/seeds/`, `fuzz/regressions/`) through exactly the
//! code the fuzzers run. Not an API: the functions take raw bytes and panic only when an
//! invariant of the code under test breaks (that panic is what the fuzzer reports).
//!
//! | target | what it drives |
//! |---|---|
//! | `message` | [`message`]: parse → serialize → parse, the second serialization identical |
//! | `framing` | [`framing`]: TCP stream framing fed the same bytes in arbitrary chunks |
//! | `server` | [`server`]: the whole sans-IO server on a virtual clock ([`harness`]) |
//! | `bodies` | [`bodies`]: dialog-info, reginfo, the dialog digest, SDP rewriting |
//! | `admin` | [`admin`]: the CLI's rendering of an admin API answer (HTTP itself is hyper's) |

// A broken invariant must panic here: that is how the fuzzer learns of it.
#![allow(clippy::panic)]

pub mod harness;
pub mod seeds;

#[cfg(test)]
mod tests;

use crate::sip::{Message, ParseError, StreamFramer, parse_datagram, validate};

fn serialize(m: &Message) -> Vec<u8> {
    match m {
        Message::Request(r) => r.to_bytes().to_vec(),
        Message::Response(r) => r.to_bytes().to_vec(),
    }
}

/// Parse a datagram; when it parses, what we serialize must parse again to the same
/// message, and validation must not change its verdict.
pub fn message(data: &[u8]) {
    let ours = parse_datagram(data);
    same_as_reference(data, ours.as_ref());
    let Ok(first) = ours else {
        return;
    };
    let verdict = validate(&first).is_ok();
    let bytes = serialize(&first.message);
    let second = match parse_datagram(&bytes) {
        Ok(p) => p,
        Err(e) => panic!("our own serialization does not parse: {e}"),
    };
    assert_eq!(
        serialize(&second.message),
        bytes,
        "serialization is not stable"
    );
    if verdict {
        assert!(
            validate(&second).is_ok(),
            "a valid message became invalid once serialized"
        );
    }
    // The tags read without parsing the address are the parsed address's tags.
    use crate::sip::{HeaderName, NameAddr, SipMessage as _, tag_param};
    let headers = match &first.message {
        Message::Request(r) => r.headers(),
        Message::Response(r) => r.headers(),
    };
    for v in headers.get_all(&HeaderName::Via) {
        let checked = crate::sip::Via::check(v).map(|c| c.transport.to_ascii_uppercase());
        let parsed = crate::sip::Via::parse(v);
        assert_eq!(
            checked,
            parsed.as_ref().map(|p| p.transport.clone()).map_err(|e| *e),
            "check and parse disagree on {v:?}"
        );
        if let Ok(parsed) = parsed {
            assert_eq!(
                crate::sip::Via::branch_of(v),
                parsed.branch(),
                "the branch of {v:?}"
            );
        }
    }
    for name in [HeaderName::From, HeaderName::To] {
        for v in headers.get_all(&name) {
            if let Ok(parsed) = NameAddr::parse(v) {
                assert_eq!(tag_param(v), parsed.tag(), "the tag of {v:?}");
            }
        }
    }
    // Validation checks addresses and URIs without building them: the checks accept exactly
    // what the parsers accept, and read the same parameters.
    for name in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::Contact,
        HeaderName::Route,
        HeaderName::RecordRoute,
    ] {
        for v in headers.get_all(&name) {
            match (NameAddr::check(v), NameAddr::parse(v)) {
                (Ok(checked), Ok(parsed)) => {
                    assert_eq!(checked.tag, parsed.params.get("tag"), "the tag of {v:?}");
                    for p in ["tag", "expires"] {
                        assert_eq!(
                            crate::sip::params::get(checked.params, p),
                            parsed.params.get(p),
                            "the {p} of {v:?}"
                        );
                    }
                }
                (Err(_), Err(_)) => {}
                (c, p) => panic!("check {c:?} and parse {p:?} disagree on {v:?}"),
            }
        }
    }
    if let Message::Request(r) = &first.message {
        match (
            crate::sip::Uri::check(&r.uri),
            crate::sip::Uri::parse(&r.uri),
        ) {
            (Ok(c), Ok(p)) => assert_eq!(c.headers, p.headers.is_some(), "{:?}", r.uri),
            (Err(_), Err(_)) => {}
            (c, p) => panic!(
                "check {:?} and parse {p:?} disagree on {:?}",
                c.map(|c| c.headers),
                r.uri
            ),
        }
    }
}

/// Our datagram parser reads what the parser crate (which frames TCP) reads: both accept, with
/// the same message, or both refuse. Where they knowingly differ: past the characters a URI
/// may hold, the Request-URI is left to validation and routing; header names the crate spells
/// in its own case are compared without case; a start line continued on the next line is
/// refused.
fn same_as_reference(data: &[u8], ours: Result<&crate::sip::Parsed, &ParseError>) {
    use crate::sip::{SipMessage as _, parse_datagram_reference};
    match (ours, parse_datagram_reference(data)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.version, b.version, "versions");
            let (ha, hb) = match (&a.message, &b.message) {
                (Message::Request(x), Message::Request(y)) => {
                    assert_eq!((&x.method, &x.uri, &x.body), (&y.method, &y.uri, &y.body));
                    (x.headers(), y.headers())
                }
                (Message::Response(x), Message::Response(y)) => {
                    assert_eq!(
                        (x.status, &x.reason, &x.body),
                        (y.status, &y.reason, &y.body)
                    );
                    (x.headers(), y.headers())
                }
                (x, y) => panic!("a request and a response: {x:?} / {y:?}"),
            };
            let ha: Vec<_> = ha.iter().collect();
            let hb: Vec<_> = hb.iter().collect();
            assert_eq!(ha.len(), hb.len(), "header counts: {ha:?} / {hb:?}");
            for (x, y) in ha.iter().zip(&hb) {
                assert!(
                    x.name.as_str().eq_ignore_ascii_case(y.name.as_str()) && x.value == y.value,
                    "headers {x:?} / {y:?}"
                );
            }
        }
        (Err(_), Err(_)) => {}
        (Ok(a), Err(e)) => {
            // The crate reads the Request-URI by its own grammar (tel: subscribers, escapes);
            // ours leaves it to validation and routing.
            assert!(
                matches!(&a.message, Message::Request(_))
                    && (validate(a).is_err() || e.to_string().contains("Request-URI")),
                "we accept what the parser crate refuses ({e}): {a:?}"
            );
        }
        (Err(e), Ok(b)) => {
            let folded_start = data
                .windows(3)
                .position(|w| w == b"\r\n " || w == b"\r\n\t")
                .zip(data.windows(2).position(|w| w == b"\r\n"))
                .is_some_and(|(fold, first)| fold == first);
            assert!(
                folded_start,
                "we refuse ({e}) what the parser crate accepts: {b:?}"
            );
        }
    }
}

/// Frame `data` as a TCP stream twice: in one push, and in the chunks the first bytes
/// choose. Both must yield the same messages (or both lose the framing).
pub fn framing(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest
        .split_at_checked(usize::from(n % 16))
        .unwrap_or((rest, &[]));
    let whole = frame(stream, &[]);
    let chunked = frame(stream, sizes);
    match (whole, chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunking changed the messages"),
        (Err(_), Err(_)) => {}
        (Ok(a), Err(e)) => {
            // The whole-buffer push may stop early at the same error; chunks only see it later.
            panic!(
                "chunked framing failed ({e}) where one push gave {} messages",
                a.len()
            )
        }
        (Err(_), Ok(_)) => {}
    }
}

fn frame(stream: &[u8], sizes: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut f = StreamFramer::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = sizes.next().map_or(rest.len(), |&s| usize::from(s).max(1));
        let (chunk, tail) = rest.split_at_checked(size).unwrap_or((rest, &[]));
        rest = tail;
        for p in f.push(chunk)? {
            out.push(serialize(&p.message));
        }
    }
    Ok(out)
}

/// Feed the body parsers on the network path; the first byte picks which.
pub fn bodies(data: &[u8]) {
    use crate::pair::{dialoginfo, digest, regsync};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    match which % 5 {
        0 => {
            if let Ok(info) = dialoginfo::parse(&text) {
                let again = dialoginfo::parse(&dialoginfo::to_xml(&info));
                assert!(again.is_ok(), "our dialog-info does not parse: {again:?}");
            }
        }
        1 => {
            if let Ok(info) = regsync::parse(&text) {
                let again = regsync::parse(&regsync::to_xml(&info, "pbx.local"));
                assert!(again.is_ok(), "our reginfo does not parse: {again:?}");
            }
        }
        2 => {
            let mut table = digest::DigestTable::default();
            for part in text.split("\n\n") {
                let _ = table.apply(part);
            }
            let _ = digest::summary(&table);
            let _ = table.take();
        }
        3 => {
            let _ = crate::media::sdp::media_addr(body);
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
            if let Some(out) = crate::media::sdp::rewrite(body, ip, 20_000) {
                let addr = crate::media::sdp::media_addr(&out);
                if crate::media::sdp::media_addr(body).is_some() {
                    assert!(addr.is_some(), "a rewritten SDP lost its media address");
                }
            }
        }
        _ => {
            let _ = crate::sip::digest::DigestParams::parse(&text);
            let mut server =
                crate::sip::digest::DigestServer::new("pbx.local", b"fuzz-secret", 300);
            let _ = server.verify(1_700_000_000, &text, "REGISTER", |_| Some("pw"));
        }
    }
}

/// The CLI's rendering of an admin API answer: the first byte picks the route, the rest is the
/// body as the node sent it.
pub fn admin(data: &[u8]) {
    let (route, body) = data.split_first().unwrap_or((&0, &[]));
    let path = ["/status", "/calls", "/registrations", "/metrics"]
        .get(usize::from(route % 4))
        .copied()
        .unwrap_or("/status");
    let _ = crate::admin::render(path, &String::from_utf8_lossy(body));
}

/// The whole server: see [`harness`].
pub fn server(data: &[u8]) {
    harness::run(data);
}
