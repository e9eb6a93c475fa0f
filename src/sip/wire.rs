//! RFC 3261 §7 message syntax, read straight into our model: the start line, header fields
//! (folded lines joined, RFC 3261 §7.3.1), and the body that `Content-Length` frames (§18.3,
//! §20.14). One pass over the head, one allocation per header value; no intermediate message.
//!
//! The rules a hostile sender tests: CRLF only (a bare CR or LF is refused, so that no two
//! elements disagree on where a line ends); a request line of exactly three parts separated
//! by one SP (RFC 4475 §3.1.2.9, §3.1.2.10); `Content-Length` digits only and at most once
//! (§3.1.2.3); every count and length bounded before anything is kept.

use std::borrow::Cow;

use bytes::Bytes;

use super::message::{HeaderName, Headers, Message, Method, Request, Response};
use super::params::is_token_byte;
use super::parse::{ParseError, Parsed, Version, push_header};

/// What a message may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The whole message, head and body.
    pub(super) message: usize,
    /// The body.
    pub(super) body: usize,
}

/// Header lines a message may carry.
const MAX_LINES: usize = 256;
/// Bytes of one header line, its folds included.
const MAX_LINE: usize = 8 * 1024;
/// Continuation lines of one header.
const MAX_FOLDS: usize = 16;

/// Compact forms of headers we keep under their name only (RFC 3841, RFC 4474): written in
/// full so that they read the same whatever form the sender chose.
const OTHER_COMPACT: [(u8, &str); 5] = [
    (b'a', "Accept-Contact"),
    (b'd', "Request-Disposition"),
    (b'j', "Reject-Contact"),
    (b'n', "Identity-Info"),
    (b'y', "Identity"),
];

/// Parse one message from `buf` (leading CRLFs already skipped). Octets after the body are not
/// part of it (RFC 3261 §18.3).
pub(super) fn parse(buf: &[u8], limits: Limits) -> Result<Parsed, ParseError> {
    if buf.len() > limits.message {
        return Err(ParseError::TooLarge(format!(
            "{} bytes (limit {})",
            buf.len(),
            limits.message
        )));
    }
    let end = memchr::memmem::find(buf, b"\r\n\r\n")
        .ok_or_else(|| ParseError::Framing("no empty line ends the header section".into()))?;
    let (head, rest) = buf.split_at_checked(end).unwrap_or((buf, &[]));
    let rest = rest.get(4..).unwrap_or_default();
    let mut lines = Lines { head, at: 0, n: 0 };
    let start = lines
        .next()?
        .ok_or_else(|| ParseError::Malformed("empty start line".into()))?;
    if start.folded {
        return Err(ParseError::Malformed(
            "the start line continues on the next line".into(),
        ));
    }
    let start = StartLine::parse(start.bytes)?;
    let mut headers = Headers::with_capacity(16);
    let mut bytes = 0usize;
    let mut values = 0usize;
    let mut declared: Option<usize> = None;
    while let Some(line) = lines.next()? {
        if lines.n > MAX_LINES + 1 {
            return Err(ParseError::TooLarge(format!(
                "more than {MAX_LINES} header lines"
            )));
        }
        let (name, value) = header(line, lines.n)?;
        if name == HeaderName::ContentLength {
            if declared.is_some() {
                return Err(ParseError::Framing("Content-Length repeated".into()));
            }
            declared = Some(content_length(&value)?);
        }
        push_header(&mut headers, &mut values, &mut bytes, name, value)?;
    }
    let body = match declared {
        Some(n) if n > limits.body => {
            return Err(ParseError::TooLarge(format!(
                "Content-Length {n} (limit {})",
                limits.body
            )));
        }
        Some(n) => rest.get(..n).ok_or_else(|| {
            ParseError::Framing(format!(
                "Content-Length {n} but {} bytes of body",
                rest.len()
            ))
        })?,
        // RFC 3261 §20.14: a datagram without Content-Length has the rest as its body.
        None if rest.len() > limits.body => {
            return Err(ParseError::TooLarge(format!(
                "a body of {} bytes (limit {})",
                rest.len(),
                limits.body
            )));
        }
        None => rest,
    };
    let body = Bytes::copy_from_slice(body);
    let body_len = body.len();
    let (message, version, start_bytes) = match start {
        StartLine::Request {
            method,
            uri,
            version,
        } => {
            let method = Method::from_token(&text(method));
            let uri = text(uri).into_owned();
            // "METHOD uri SIP/2.0"
            let start = method.as_str().len() + 1 + uri.len() + 8;
            let r = Request {
                method,
                uri,
                headers,
                body,
            };
            (Message::Request(r), version, start)
        }
        StartLine::Response {
            version,
            status,
            reason,
        } => {
            let reason = text(reason).into_owned();
            // "SIP/2.0 NNN reason"
            let start = 12 + reason.len();
            let r = Response {
                status,
                reason,
                headers,
                body,
            };
            (Message::Response(r), version, start)
        }
    };
    super::parse::check_size(start_bytes, bytes, body_len, limits.message)?;
    Ok(Parsed { message, version })
}

/// Bytes as text: borrowed when they are UTF-8 (nearly every SIP header is ASCII), with
/// replacement characters otherwise.
pub(super) fn text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// One logical line: its bytes (folds included) and whether it had continuation lines.
struct Line<'a> {
    bytes: &'a [u8],
    folded: bool,
}

/// The logical lines of a head (which has no final CRLF).
struct Lines<'a> {
    head: &'a [u8],
    at: usize,
    /// Lines returned so far (the start line is line 1).
    n: usize,
}

impl<'a> Lines<'a> {
    /// The next logical line; an error for a bare CR or LF, a head that opens with a fold,
    /// or too many continuation lines.
    fn next(&mut self) -> Result<Option<Line<'a>>, ParseError> {
        let Some(rest) = self.head.get(self.at..).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        if self.n == 0 && matches!(rest.first(), Some(b' ' | b'\t')) {
            return Err(ParseError::Malformed(
                "the message opens with whitespace".into(),
            ));
        }
        self.n += 1;
        let mut folds = 0usize;
        let mut from = 0usize;
        loop {
            let Some(i) = rest
                .get(from..)
                .and_then(|r| memchr::memchr2(b'\r', b'\n', r))
            else {
                // The last line of the head.
                self.at = self.head.len();
                return Ok(Some(Line {
                    bytes: rest,
                    folded: folds > 0,
                }));
            };
            let i = from + i;
            if rest.get(i..i + 2) != Some(b"\r\n") {
                return Err(ParseError::Malformed(format!(
                    "a bare CR or LF on line {}",
                    self.n + folds
                )));
            }
            if matches!(rest.get(i + 2), Some(b' ' | b'\t')) {
                folds += 1;
                if folds > MAX_FOLDS {
                    return Err(ParseError::TooLarge(format!(
                        "more than {MAX_FOLDS} continuation lines on line {}",
                        self.n
                    )));
                }
                from = i + 2;
                continue;
            }
            self.at += i + 2;
            return Ok(Some(Line {
                bytes: rest.get(..i).unwrap_or_default(),
                folded: folds > 0,
            }));
        }
    }
}

/// The first line.
enum StartLine<'a> {
    Request {
        method: &'a [u8],
        uri: &'a [u8],
        version: Version,
    },
    Response {
        version: Version,
        status: u16,
        reason: &'a [u8],
    },
}

fn version(b: &[u8]) -> Version {
    // RFC 3261 §7.1: the SIP-Version string is case-insensitive.
    if b.eq_ignore_ascii_case(b"SIP/2.0") {
        Version::Sip20
    } else {
        Version::Unsupported
    }
}

impl<'a> StartLine<'a> {
    fn parse(line: &'a [u8]) -> Result<Self, ParseError> {
        let bad = |what: &str| ParseError::Malformed(what.to_string());
        // No method token holds a `/`: a line that opens with the version is a status line.
        if line
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
        {
            let (v, after) = split_sp(line).ok_or_else(|| bad("no status code"))?;
            // The reason phrase may hold spaces, or be missing with its space.
            let (code, reason) = split_sp(after).unwrap_or((after, &[]));
            let status = match code {
                [a, b, c] if code.iter().all(u8::is_ascii_digit) => {
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
                }
                _ => return Err(bad("the status code is not three digits")),
            };
            if !(100..=699).contains(&status) {
                return Err(bad("status code out of range"));
            }
            return Ok(Self::Response {
                version: version(v),
                status,
                reason,
            });
        }
        // Exactly three parts, one SP between each: two spaces in a row, or one at the end,
        // leave an empty part.
        let mut parts = line.split(|&b| b == b' ');
        let (Some(method), Some(uri), Some(v), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "the request line is not method, URI and version with one space between",
            ));
        };
        if method.is_empty() || uri.is_empty() || v.is_empty() {
            return Err(bad(
                "the request line is not method, URI and version with one space between",
            ));
        }
        if !method.iter().all(|&b| is_token_byte(b)) {
            return Err(bad("the method is not a token"));
        }
        // A URI is printable US-ASCII (RFC 3261 §25.1, RFC 3986 §2): whitespace inside it
        // (RFC 4475 §3.1.2.8), brackets and quotes belong to the header grammar.
        if uri
            .iter()
            .any(|&b| !b.is_ascii_graphic() || matches!(b, b'<' | b'>' | b'"'))
        {
            return Err(bad("a character no URI holds in the Request-URI"));
        }
        Ok(Self::Request {
            method,
            uri,
            version: version(v),
        })
    }
}

fn split_sp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(b' ', b)?;
    Some((b.get(..i)?, b.get(i + 1..)?))
}

/// `name HCOLON value` (whitespace allowed before the colon), the value unfolded (a CRLF and
/// the whitespace after it become one SP) and trimmed.
fn header(line: Line<'_>, n: usize) -> Result<(HeaderName, Cow<'_, str>), ParseError> {
    if line.bytes.len() > MAX_LINE {
        return Err(ParseError::TooLarge(format!(
            "line {n} has {} bytes (limit {MAX_LINE})",
            line.bytes.len()
        )));
    }
    let colon = memchr::memchr(b':', line.bytes)
        .ok_or_else(|| ParseError::Malformed(format!("no colon on line {n}")))?;
    let (name, value) = line.bytes.split_at_checked(colon).unwrap_or_default();
    let value = value.get(1..).unwrap_or_default();
    let name = trim(name);
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(ParseError::Malformed(format!(
            "the header name on line {n} is not a token"
        )));
    }
    // A token is ASCII.
    let name = std::str::from_utf8(name).unwrap_or_default();
    let name = match (name.as_bytes(), HeaderName::from_wire(name)) {
        ([c], HeaderName::Other(_)) => OTHER_COMPACT
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(c))
            .map_or_else(
                || HeaderName::Other(name.to_string()),
                |(_, full)| HeaderName::Other((*full).to_string()),
            ),
        (_, known) => known,
    };
    let value = if line.folded {
        Cow::Owned(unfold(value))
    } else {
        text(trim(value))
    };
    Ok((name, value))
}

fn unfold(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\r', rest) {
        out.extend_from_slice(rest.get(..i).unwrap_or_default());
        // Only CRLF followed by whitespace is left inside a logical line.
        let after = rest.get(i + 2..).unwrap_or_default();
        let ws = after
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(after.len());
        out.push(b' ');
        rest = after.get(ws..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    text(trim(&out)).into_owned()
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// `Content-Length`: digits only (a sign is no length, RFC 4475 §3.1.2.3).
fn content_length(v: &str) -> Result<usize, ParseError> {
    let bad = || ParseError::Framing(format!("malformed Content-Length {v:?}"));
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    v.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::super::{HeaderName, Message, ParseError, parse_datagram};

    const VIA: &str = "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKw\r\n";

    fn parse(text: &str) -> Result<Message, ParseError> {
        parse_datagram(text.as_bytes()).map(|p| p.message)
    }

    fn header(m: &Message, name: &HeaderName) -> Option<String> {
        let h = match m {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        };
        h.get(name).map(str::to_string)
    }

    #[test]
    fn folded_values_are_joined_with_one_space_and_trimmed() {
        let m = parse(&format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{VIA}Subject :  one\r\n \t two\r\n\tthree  \r\n\r\n"
        ))
        .expect("parses");
        assert_eq!(
            header(&m, &HeaderName::Subject).as_deref(),
            Some("one two three")
        );
    }

    #[test]
    fn compact_forms_read_as_the_full_names() {
        let m = parse(&format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{VIA}i: x\r\nk: 100rel\r\na: *;audio\r\nl: 0\r\n\r\n"
        ))
        .expect("parses");
        assert_eq!(header(&m, &HeaderName::CallId).as_deref(), Some("x"));
        assert_eq!(
            header(&m, &HeaderName::Supported).as_deref(),
            Some("100rel")
        );
        let other = HeaderName::Other("Accept-Contact".into());
        assert_eq!(header(&m, &other).as_deref(), Some("*;audio"));
    }

    #[test]
    fn line_endings_other_than_crlf_are_refused() {
        for head in [
            "OPTIONS sip:a@b SIP/2.0\nVia: x\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nVia: x\ry\r\n\r\n",
            " OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\n foo\r\nVia: x\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n",
        ] {
            assert!(parse(head).is_err(), "{head:?}");
        }
    }

    #[test]
    fn the_request_line_is_three_parts_with_one_space_between() {
        for line in [
            "OPTIONS  sip:a@b SIP/2.0",
            "OPTIONS sip:a@b SIP/2.0 ",
            "OPTIONS sip:a@b",
            "OPT<IONS sip:a@b SIP/2.0",
            "OPTIONS sip:a@b\tc SIP/2.0",
            "OPTIONS <sip:a@b> SIP/2.0",
        ] {
            assert!(parse(&format!("{line}\r\n{VIA}\r\n")).is_err(), "{line:?}");
        }
        let m = parse(&format!("OPTIONS sip:a@b sip/2.0\r\n{VIA}\r\n")).expect("parses");
        assert!(matches!(m, Message::Request(r) if r.uri == "sip:a@b"));
    }

    #[test]
    fn status_lines() {
        let m = parse(&format!("SIP/2.0 180 Ringing here\r\n{VIA}\r\n")).expect("parses");
        assert!(matches!(m, Message::Response(r) if r.status == 180 && r.reason == "Ringing here"));
        let m = parse(&format!("SIP/2.0 200\r\n{VIA}\r\n")).expect("parses");
        assert!(matches!(m, Message::Response(r) if r.status == 200 && r.reason.is_empty()));
        for line in ["SIP/2.0 20 OK", "SIP/2.0 099 X", "SIP/2.0 700 X", "SIP/2.0"] {
            assert!(parse(&format!("{line}\r\n{VIA}\r\n")).is_err(), "{line:?}");
        }
    }

    #[test]
    fn content_length_frames_the_body() {
        let msg = |cl: &str, body: &str| {
            parse(&format!("MESSAGE sip:a@b SIP/2.0\r\n{VIA}{cl}\r\n{body}"))
        };
        let body = |m: Message| match m {
            Message::Request(r) => r.body,
            Message::Response(r) => r.body,
        };
        assert_eq!(
            body(msg("Content-Length: 3\r\n", "abcdef").expect("parses")),
            "abc"
        );
        assert_eq!(body(msg("", "abcdef").expect("parses")), "abcdef");
        assert!(matches!(
            msg("Content-Length: 9\r\n", "abc"),
            Err(ParseError::Framing(_))
        ));
        for cl in ["-1", "+3", "3 3", "x", "99999999999999999999999"] {
            let r = msg(&format!("Content-Length: {cl}\r\n"), "abc");
            assert!(r.is_err(), "{cl:?}: {r:?}");
        }
        assert!(msg("Content-Length: 3\r\nl: 3\r\n", "abc").is_err());
        assert!(matches!(
            msg("Content-Length: 70000\r\n", "abc"),
            Err(ParseError::TooLarge(_))
        ));
    }

    /// A message exactly at the size limit, as we would serialize it, parses; one byte more
    /// does not.
    #[test]
    fn the_size_limit_counts_the_serialization_exactly() {
        let msg = |total: usize| {
            let head = |n: usize| format!("SIP/2.0 200 OK\r\n{VIA}Content-Length: {n}\r\n\r\n");
            let n = total - head(10_000).len();
            let mut m = head(n).into_bytes();
            m.resize(total, b'x');
            parse_datagram(&m)
        };
        assert!(msg(64 * 1024).is_ok());
        assert!(matches!(msg(64 * 1024 + 1), Err(ParseError::TooLarge(_))));
    }

    #[test]
    fn header_counts_and_lengths_are_bounded() {
        let many: String = (0..257).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let r = parse(&format!("OPTIONS sip:a@b SIP/2.0\r\n{many}\r\n"));
        assert!(matches!(r, Err(ParseError::TooLarge(_))), "{r:?}");
        let long = "a".repeat(8 * 1024);
        let r = parse(&format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{VIA}Subject: {long}\r\n\r\n"
        ));
        assert!(matches!(r, Err(ParseError::TooLarge(_))), "{r:?}");
        let folds = "\r\n x".repeat(17);
        let r = parse(&format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{VIA}Subject: a{folds}\r\n\r\n"
        ));
        assert!(matches!(r, Err(ParseError::TooLarge(_))), "{r:?}");
        for name in ["", "Sub ject", "Sub\u{e9}"] {
            let r = parse(&format!(
                "OPTIONS sip:a@b SIP/2.0\r\n{VIA}{name}: x\r\n\r\n"
            ));
            assert!(
                matches!(r, Err(ParseError::Malformed(_))),
                "{name:?}: {r:?}"
            );
        }
    }
}
