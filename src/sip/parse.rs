//! Parsing entry points: datagrams through our own parser ([`super::wire`]), streams framed by
//! the parser crate (`sipx-sip`, the one place that calls it) and converted into our owned
//! model. Framing follows RFC 3261 §18.3 (datagrams) and §20.14 (streams).

use bytes::Bytes;
use sipx_sip as px;

use super::message::{HeaderName, Headers, Message, Method, Request, Response};
use super::params::split_outside_quotes;

/// Why bytes did not become a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is malformed; the text says where.
    #[error("{0}")]
    Malformed(String),
    /// A stream lost its framing (bad or missing Content-Length): close the connection.
    #[error("stream framing lost: {0}")]
    Framing(String),
    /// The message is larger than the configured limits.
    #[error("message too large: {0}")]
    TooLarge(String),
}

/// The protocol version a request carried, kept so that a non-2.0 request gets 505.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// SIP/2.0
    Sip20,
    /// Something else.
    Unsupported,
}

/// A parsed message and the facts about it that only the parser sees.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The message.
    pub message: Message,
    /// The protocol version on the start line.
    pub version: Version,
}

fn limits_datagram() -> px::Limits {
    px::Limits::datagram()
}

/// Parse one message from a datagram. Leading CRLFs are ignored (RFC 3261 §7.5); octets after
/// the declared body are ignored (RFC 3261 §18.3).
pub fn parse_datagram(buf: &[u8]) -> Result<Parsed, ParseError> {
    let limits = limits_datagram();
    super::wire::parse(
        skip_crlfs(buf),
        super::wire::Limits {
            message: limits.max_message_bytes,
            body: limits.max_body_bytes,
        },
    )
}

/// [`parse_datagram`] through the parser crate, as the stream framer parses: the reference
/// the `message` fuzz target holds our own parser to.
#[doc(hidden)]
pub fn parse_datagram_reference(buf: &[u8]) -> Result<Parsed, ParseError> {
    let limits = limits_datagram();
    let msg =
        px::parse_datagram(Bytes::copy_from_slice(skip_crlfs(buf)), &limits).map_err(map_error)?;
    convert(msg, limits.max_message_bytes)
}

/// A datagram without the CRLFs before its start line (RFC 3261 §7.5).
fn skip_crlfs(mut buf: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = buf {
        buf = rest;
    }
    buf
}

fn map_error(e: px::error::ParseError) -> ParseError {
    use px::error::ParseError as P;
    match e {
        P::Limit { .. } => ParseError::TooLarge(e.to_string()),
        P::Framing(_) => ParseError::Framing(e.to_string()),
        other => ParseError::Malformed(other.to_string()),
    }
}

fn is_list_header(n: &HeaderName) -> bool {
    matches!(
        n,
        HeaderName::Via | HeaderName::Route | HeaderName::RecordRoute | HeaderName::Contact
    )
}

/// Most header values besides `Content-Length` a message may carry once comma lists are
/// split into one value each: the parser's own limit on header lines (256) less the
/// `Content-Length` line our serialization always writes, so that what we serialize parses
/// again.
const MAX_HEADER_VALUES: usize = 255;

/// The longest header line (name, `": "`, value) a message may carry as we serialize it: the
/// parser's own limit, so that a compact name written in full, a missing space after the
/// colon or unfolded continuation lines cannot make our serialization unparseable.
const MAX_HEADER_LINE: usize = 8 * 1024;

use super::wire::text;

fn too_many() -> ParseError {
    ParseError::TooLarge(format!("more than {MAX_HEADER_VALUES} header values"))
}

/// The bytes the header `name: value` takes in our serialization, CRLF included; an error
/// when the line would pass [`MAX_HEADER_LINE`].
fn line_bytes(name: &HeaderName, value: &str) -> Result<usize, ParseError> {
    let line = name.as_str().len() + 2 + value.len();
    if line > MAX_HEADER_LINE {
        return Err(ParseError::TooLarge(format!(
            "{name} header of {line} bytes once serialized (limit {MAX_HEADER_LINE})"
        )));
    }
    Ok(line + 2)
}

/// The headers, and the bytes they take in our serialization (Content-Length excluded).
fn convert_headers(src: &px::Headers) -> Result<(Headers, usize), ParseError> {
    let mut out = Headers::with_capacity(src.len() + 2);
    let mut bytes = 0usize;
    let mut values = 0usize;
    for h in src.iter() {
        let name = HeaderName::from_wire(&text(h.name().canonical()));
        let value = h.value();
        push_header(&mut out, &mut values, &mut bytes, name, text(&value))?;
    }
    Ok((out, bytes))
}

/// Add a received header: a list header (Via, Route, Record-Route, Contact) as one entry per
/// element. `values` counts the entries and `bytes` what they take in our serialization;
/// Content-Length, written again from the body whatever the message said, counts in neither.
pub(super) fn push_header(
    out: &mut Headers,
    values: &mut usize,
    bytes: &mut usize,
    name: HeaderName,
    value: std::borrow::Cow<'_, str>,
) -> Result<(), ParseError> {
    if is_list_header(&name) && value.contains(',') && value.trim() != "*" {
        for part in split_outside_quotes(&value, ',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(ParseError::Malformed(format!(
                    "empty element in {name} list"
                )));
            }
            *values += 1;
            if *values > MAX_HEADER_VALUES {
                return Err(too_many());
            }
            *bytes += line_bytes(&name, part)?;
            out.push(name.clone(), part);
        }
    } else {
        if name != HeaderName::ContentLength {
            *values += 1;
            if *values > MAX_HEADER_VALUES {
                return Err(too_many());
            }
            *bytes += line_bytes(&name, &value)?;
        }
        out.push(name, value.into_owned());
    }
    Ok(())
}

/// Refuse a message whose serialization (start line, headers, Content-Length, body) would be
/// larger than `max` bytes, the limit it was parsed under.
pub(super) fn check_size(
    start: usize,
    headers: usize,
    body: usize,
    max: usize,
) -> Result<(), ParseError> {
    // "Content-Length: " + digits + CRLF CRLF
    let content_length = 16 + body.to_string().len() + 4;
    let total = start + 2 + headers + content_length + body;
    if total > max {
        return Err(ParseError::TooLarge(format!(
            "{total} bytes once serialized (limit {max})"
        )));
    }
    Ok(())
}

fn convert(msg: px::Message, max_message: usize) -> Result<Parsed, ParseError> {
    match msg {
        px::Message::Request(r) => {
            let version = if r.version.is_supported() {
                Version::Sip20
            } else {
                Version::Unsupported
            };
            let method = Method::from_token(&text(r.method.as_bytes()));
            let uri = text(&r.uri.to_bytes()).into_owned();
            let (headers, head) = convert_headers(&r.headers)?;
            // "METHOD uri SIP/2.0"
            let start = method.as_str().len() + 1 + uri.len() + 8;
            check_size(start, head, r.body().len(), max_message)?;
            Ok(Parsed {
                message: Message::Request(Request {
                    method,
                    uri,
                    headers,
                    body: r.body().clone(),
                }),
                version,
            })
        }
        px::Message::Response(r) => {
            let version = if r.version.is_supported() {
                Version::Sip20
            } else {
                Version::Unsupported
            };
            let (headers, head) = convert_headers(&r.headers)?;
            let status = r.status.code();
            let reason = text(&r.reason).into_owned();
            // "SIP/2.0 NNN reason"
            let start = 8 + status.to_string().len() + 1 + reason.len();
            check_size(start, head, r.body().len(), max_message)?;
            Ok(Parsed {
                message: Message::Response(Response {
                    status,
                    reason,
                    headers,
                    body: r.body().clone(),
                }),
                version,
            })
        }
    }
}

/// Frames SIP messages out of a TCP byte stream by Content-Length (RFC 3261 §18.3).
///
/// A partial message waits for more bytes; a missing or malformed Content-Length is an error
/// after which the stream cannot be resynchronised and must be closed.
#[derive(Debug)]
pub struct StreamFramer {
    inner: px::StreamParser,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamFramer {
    /// A framer with stream limits (1 MiB messages).
    pub fn new() -> Self {
        Self {
            inner: px::StreamParser::new(px::Limits::stream()),
        }
    }

    /// Feed bytes; returns every message they completed, in order. Each element is either
    /// a parsed message or the error for a message that framed but did not parse.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Parsed>, ParseError> {
        let msgs = self.inner.push(chunk).map_err(|e| match map_error(e) {
            ParseError::Malformed(s) => ParseError::Framing(s),
            other => other,
        })?;
        let max = px::Limits::stream().max_message_bytes;
        msgs.into_iter().map(|m| convert(m, max)).collect()
    }

    /// How many CRLF keep-alive pairs were seen since the last call (RFC 5626 §4.4.1).
    pub fn take_keepalives(&mut self) -> usize {
        self.inner.take_keepalives()
    }

    /// Bytes buffered for an incomplete message.
    pub fn pending(&self) -> usize {
        self.inner.pending()
    }
}

/// What a server needs to answer a message that did not parse: enough headers to route a
/// 400 back (RFC 3261 §8.2, §18.2.2). Found by a tolerant line scan of the raw bytes.
#[derive(Debug, Clone)]
pub struct Salvaged {
    /// The method on the request line.
    pub method: String,
    /// The headers a response copies: Via, From, To, Call-ID, CSeq.
    pub headers: Headers,
}

/// Try to recover a request's routing headers from bytes that did not parse. Returns `None`
/// for responses, and for requests without a Via, From, To, Call-ID and CSeq.
pub fn salvage_request(buf: &[u8]) -> Option<Salvaged> {
    let text = String::from_utf8_lossy(buf);
    let text = text.trim_start_matches(['\r', '\n']);
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let start = lines.next()?;
    let method = start.split(' ').next()?.to_string();
    if method.is_empty()
        || method.starts_with("SIP/")
        || !method.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    let mut headers = Headers::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        let name = HeaderName::from_wire(n.trim());
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            let v = v.trim();
            if name == HeaderName::Via {
                for part in split_outside_quotes(v, ',') {
                    headers.push(HeaderName::Via, part.trim());
                }
            } else {
                headers.push(name, v);
            }
        }
    }
    let need = [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ];
    if need.iter().all(|n| headers.get(n).is_some()) {
        Some(Salvaged { method, headers })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header text is taken as it is when it is UTF-8, and with replacement characters when
    /// it is not (the message still parses; nothing above sees invalid text).
    #[test]
    fn header_text_is_utf8_or_replaced() {
        let msg = |subject: &[u8]| {
            let mut m =
                b"OPTIONS sip:pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n\
                Max-Forwards: 70\r\nFrom: <sip:a@pbx.local>;tag=1\r\nTo: <sip:pbx.local>\r\n\
                Call-ID: t\r\nCSeq: 1 OPTIONS\r\nSubject: "
                    .to_vec();
            m.extend_from_slice(subject);
            m.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
            m
        };
        let subject = |buf: &[u8]| match parse_datagram(buf).map(|p| p.message) {
            Ok(Message::Request(r)) => r.headers.get(&HeaderName::Subject).map(str::to_string),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            subject(&msg("caf\u{e9}".as_bytes())).as_deref(),
            Some("caf\u{e9}")
        );
        assert_eq!(subject(&msg(b"caf\xe9")).as_deref(), Some("caf\u{fffd}"));
    }
}
