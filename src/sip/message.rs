//! The owned, editable SIP message model (RFC 3261 §7) and its serializer.

use std::fmt;

use bytes::Bytes;

use super::addr::NameAddr;
use super::via::Via;

/// A request method. Comparison is case-sensitive (RFC 3261 §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// INFO
    Info,
    /// PRACK
    Prack,
    /// UPDATE
    Update,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// PUBLISH
    Publish,
    /// Anything else, verbatim.
    Other(String),
}

impl Method {
    /// Resolve a method token.
    pub fn from_token(s: &str) -> Self {
        match s {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "REGISTER" => Self::Register,
            "OPTIONS" => Self::Options,
            "INFO" => Self::Info,
            "PRACK" => Self::Prack,
            "UPDATE" => Self::Update,
            "SUBSCRIBE" => Self::Subscribe,
            "NOTIFY" => Self::Notify,
            "REFER" => Self::Refer,
            "MESSAGE" => Self::Message,
            "PUBLISH" => Self::Publish,
            other => Self::Other(other.to_string()),
        }
    }

    /// The method token.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Register => "REGISTER",
            Self::Options => "OPTIONS",
            Self::Info => "INFO",
            Self::Prack => "PRACK",
            Self::Update => "UPDATE",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Publish => "PUBLISH",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! header_names {
    ($( $variant:ident => $canonical:literal $(, $compact:literal)? ;)*) => {
        /// A header field name. Known names are variants; compact forms resolve to them.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( #[doc = $canonical] $variant, )*
            /// Any other header, with its name as received.
            Other(String),
        }

        impl HeaderName {
            /// Resolve a name as received (case-insensitive, compact forms included).
            pub fn from_wire(s: &str) -> Self {
                $(
                    if s.eq_ignore_ascii_case($canonical) $( || s.eq_ignore_ascii_case($compact) )? {
                        return Self::$variant;
                    }
                )*
                Self::Other(s.to_string())
            }

            /// The canonical (long) name.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $canonical, )*
                    Self::Other(s) => s,
                }
            }
        }
    };
}

header_names! {
    Via => "Via", "v";
    From => "From", "f";
    To => "To", "t";
    CallId => "Call-ID", "i";
    CSeq => "CSeq";
    Contact => "Contact", "m";
    MaxForwards => "Max-Forwards";
    ContentLength => "Content-Length", "l";
    ContentType => "Content-Type", "c";
    ContentEncoding => "Content-Encoding", "e";
    Route => "Route";
    RecordRoute => "Record-Route";
    Expires => "Expires";
    MinExpires => "Min-Expires";
    Authorization => "Authorization";
    WwwAuthenticate => "WWW-Authenticate";
    ProxyAuthorization => "Proxy-Authorization";
    ProxyAuthenticate => "Proxy-Authenticate";
    AuthenticationInfo => "Authentication-Info";
    Allow => "Allow";
    Accept => "Accept";
    Supported => "Supported", "k";
    Require => "Require";
    ProxyRequire => "Proxy-Require";
    Unsupported => "Unsupported";
    Event => "Event", "o";
    AllowEvents => "Allow-Events", "u";
    SubscriptionState => "Subscription-State";
    SessionExpires => "Session-Expires", "x";
    MinSe => "Min-SE";
    RetryAfter => "Retry-After";
    UserAgent => "User-Agent";
    Server => "Server";
    Reason => "Reason";
    Date => "Date";
    Subject => "Subject", "s";
    ReferTo => "Refer-To", "r";
    ReferredBy => "Referred-By", "b";
    Replaces => "Replaces";
    Rseq => "RSeq";
    Rack => "RAck";
    Timestamp => "Timestamp";
    Warning => "Warning";
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header field: a name and its (unfolded, trimmed) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name.
    pub name: HeaderName,
    /// The value.
    pub value: String,
}

/// Headers in order. List-valued headers that matter for routing (Via, Route, Record-Route,
/// Contact) hold one value per entry: the parser splits comma-separated lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// No headers, room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// How many header values there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Append a header.
    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.push(Header {
            name,
            value: value.into(),
        });
    }

    /// Insert a header before all others of the same name (or at the end if none).
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<String>) {
        let at = self
            .0
            .iter()
            .position(|h| h.name == name)
            .unwrap_or(self.0.len());
        self.0.insert(
            at,
            Header {
                name,
                value: value.into(),
            },
        );
    }

    /// Replace every header of this name by one value.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        let value = value.into();
        if let Some(h) = self.0.iter_mut().find(|h| h.name == name) {
            h.value = value;
            let mut seen = false;
            self.0.retain(|h| {
                if h.name != name {
                    return true;
                }
                let keep = !seen;
                seen = true;
                keep
            });
        } else {
            self.push(name, value);
        }
    }

    /// The first value of a header.
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// All values of a header, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// How many values of this header there are.
    pub fn count(&self, name: &HeaderName) -> usize {
        self.0.iter().filter(|h| &h.name == name).count()
    }

    /// Remove every header of this name.
    pub fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|h| &h.name != name);
    }

    /// Replace the value of the first header with this name; `false` when there is none.
    pub fn replace_first(&mut self, name: &HeaderName, value: impl Into<String>) -> bool {
        match self.0.iter_mut().find(|h| &h.name == name) {
            Some(h) => {
                h.value = value.into();
                true
            }
            None => false,
        }
    }

    /// Remove the first header of this name, returning its value.
    pub fn remove_first(&mut self, name: &HeaderName) -> Option<String> {
        let i = self.0.iter().position(|h| &h.name == name)?;
        Some(self.0.remove(i).value)
    }

    /// Iterate over all headers.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// Keep only the headers for which `f` is true.
    pub fn retain(&mut self, f: impl FnMut(&Header) -> bool) {
        self.0.retain(f);
    }
}

/// What is wrong with a header a caller asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The header does not parse.
    #[error("malformed {0} header: {1}")]
    Malformed(&'static str, &'static str),
}

/// A `CSeq` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (RFC 3261 §8.1.1.5: less than 2**31).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parse `123 INVITE`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let mut it = s.split_ascii_whitespace();
        let n = it.next().ok_or("empty")?;
        let m = it.next().ok_or("no method")?;
        if it.next().is_some() {
            return Err("extra tokens");
        }
        let seq: u32 = n
            .parse()
            .map_err(|_| "sequence number is not a 32-bit number")?;
        if seq >= 1 << 31 {
            return Err("sequence number must be below 2**31");
        }
        Ok(Self {
            seq,
            method: Method::from_token(m),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request-URI as text (parse with [`super::Uri::parse`]).
    pub uri: String,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Bytes,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Bytes,
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// Typed access shared by requests and responses.
pub trait SipMessage {
    /// The headers.
    fn headers(&self) -> &Headers;
    /// The headers, mutably.
    fn headers_mut(&mut self) -> &mut Headers;

    /// The Call-ID.
    fn call_id(&self) -> Result<&str, HeaderError> {
        self.headers()
            .get(&HeaderName::CallId)
            .filter(|v| !v.is_empty())
            .ok_or(HeaderError::Missing("Call-ID"))
    }

    /// The CSeq.
    fn cseq(&self) -> Result<CSeq, HeaderError> {
        let v = self
            .headers()
            .get(&HeaderName::CSeq)
            .ok_or(HeaderError::Missing("CSeq"))?;
        CSeq::parse(v).map_err(|e| HeaderError::Malformed("CSeq", e))
    }

    /// The From address.
    fn from(&self) -> Result<NameAddr, HeaderError> {
        addr(self.headers(), &HeaderName::From, "From")
    }

    /// The To address.
    fn to(&self) -> Result<NameAddr, HeaderError> {
        addr(self.headers(), &HeaderName::To, "To")
    }

    /// The From tag.
    #[allow(clippy::wrong_self_convention)]
    fn from_tag(&self) -> Option<String> {
        let v = self.headers().get(&HeaderName::From)?;
        super::addr::tag_param(v).map(str::to_string)
    }

    /// The To tag.
    fn to_tag(&self) -> Option<String> {
        let v = self.headers().get(&HeaderName::To)?;
        super::addr::tag_param(v).map(str::to_string)
    }

    /// The branch of the topmost Via, without parsing the rest of it ([`Via::branch_of`]).
    fn top_via_branch(&self) -> Option<&str> {
        Via::branch_of(self.headers().get(&HeaderName::Via)?)
    }

    /// The topmost Via.
    fn top_via(&self) -> Result<Via, HeaderError> {
        let v = self
            .headers()
            .get(&HeaderName::Via)
            .ok_or(HeaderError::Missing("Via"))?;
        Via::parse(v).map_err(|e| HeaderError::Malformed("Via", e))
    }

    /// Every Contact value (a `*` Contact is not an address; check for it first).
    fn contacts(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.headers()
            .get_all(&HeaderName::Contact)
            .map(|v| NameAddr::parse(v).map_err(|e| HeaderError::Malformed("Contact", e)))
            .collect()
    }

    /// The first Contact value, if any.
    fn contact(&self) -> Option<NameAddr> {
        self.headers()
            .get(&HeaderName::Contact)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    /// Record-Route values, top first.
    fn record_route(&self) -> Vec<String> {
        self.headers()
            .get_all(&HeaderName::RecordRoute)
            .map(str::to_string)
            .collect()
    }

    /// An integer header (Expires, Max-Forwards, ...).
    fn header_u32(&self, name: &HeaderName) -> Option<Result<u32, HeaderError>> {
        self.headers().get(name).map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| HeaderError::Malformed("numeric", "not a 32-bit unsigned number"))
        })
    }

    /// Whether a list header (Supported, Require, Allow, ...) contains a token.
    fn has_token(&self, name: &HeaderName, token: &str) -> bool {
        self.headers()
            .get_all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn addr(h: &Headers, name: &HeaderName, label: &'static str) -> Result<NameAddr, HeaderError> {
    let v = h.get(name).ok_or(HeaderError::Missing(label))?;
    NameAddr::parse(v).map_err(|e| HeaderError::Malformed(label, e))
}

impl SipMessage for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

impl SipMessage for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

impl SipMessage for Message {
    fn headers(&self) -> &Headers {
        match self {
            Self::Request(r) => &r.headers,
            Self::Response(r) => &r.headers,
        }
    }
    fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Self::Request(r) => &mut r.headers,
            Self::Response(r) => &mut r.headers,
        }
    }
}

fn write_headers(h: &Headers, body: &Bytes, out: &mut Vec<u8>) {
    for hd in h.iter() {
        if hd.name == HeaderName::ContentLength {
            continue;
        }
        out.extend_from_slice(hd.name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(hd.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

impl Request {
    /// A request with no headers.
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Self {
            method,
            uri: uri.into(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Serialize. Content-Length is always written from the body.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.uri.as_bytes());
        out.extend_from_slice(b" SIP/2.0\r\n");
        write_headers(&self.headers, &self.body, out);
    }

    /// Serialize into a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(512 + self.body.len());
        self.write_to(&mut v);
        v.into()
    }
}

impl Response {
    /// A response with no headers and the standard reason phrase.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Serialize.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"SIP/2.0 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_headers(&self.headers, &self.body, out);
    }

    /// Serialize into a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(512 + self.body.len());
        self.write_to(&mut v);
        v.into()
    }

    /// Whether this is a 1xx.
    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }
}

impl Message {
    /// Serialize.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Self::Request(r) => r.to_bytes(),
            Self::Response(r) => r.to_bytes(),
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Self::Request(r) => &r.body,
            Self::Response(r) => &r.body,
        }
    }
}

/// The RFC 3261 §21 reason phrase for a status code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_set_replaces_all() {
        let mut h = Headers::new();
        h.push(HeaderName::Via, "a");
        h.push(HeaderName::Route, "r");
        h.push(HeaderName::Via, "b");
        h.set(HeaderName::Via, "c");
        assert_eq!(h.get_all(&HeaderName::Via).collect::<Vec<_>>(), ["c"]);
        h.push_front(HeaderName::Via, "top");
        assert_eq!(h.get(&HeaderName::Via), Some("top"));
    }

    #[test]
    fn compact_names_resolve() {
        assert_eq!(HeaderName::from_wire("v"), HeaderName::Via);
        assert_eq!(HeaderName::from_wire("CALL-id"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_wire("X-Foo"),
            HeaderName::Other("X-Foo".into())
        );
    }

    #[test]
    fn cseq_bounds() {
        assert_eq!(CSeq::parse("1 INVITE").unwrap().seq, 1);
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
    }

    #[test]
    fn content_length_is_computed() {
        let mut r = Request::new(Method::Options, "sip:x@y");
        r.headers.push(HeaderName::ContentLength, "99");
        r.body = Bytes::from_static(b"abc");
        let s = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(s.contains("Content-Length: 3\r\n\r\nabc"));
        assert!(!s.contains("99"));
    }
}
