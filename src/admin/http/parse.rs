//! Request-head parsing for the admin server (RFC 9112 §2–§6, the parts a JSON API needs).

/// Largest request head (request line and headers) accepted.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Largest request body accepted.
pub(super) const MAX_BODY: usize = 1024 * 1024;

/// A parsed request line and header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) headers: Vec<(String, String)>,
    /// Body length from `Content-Length` (0 when absent).
    pub(super) content_length: usize,
    /// Whether the client wants the connection kept open after the response.
    pub(super) keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub(super) expect_continue: bool,
}

impl Head {
    /// Values of every header called `name` (case-insensitive), in order.
    pub(super) fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request was refused before reaching the handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum HeadError {
    #[error("malformed request line")]
    RequestLine,
    #[error("unsupported HTTP version")]
    Version,
    #[error("malformed header line")]
    HeaderLine,
    #[error("request head is not valid UTF-8")]
    Encoding,
    #[error("HTTP/1.1 request without exactly one Host header")]
    Host,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncoding,
    #[error("request head larger than 16 KiB")]
    HeadTooLarge,
    #[error("request body larger than 1 MiB")]
    BodyTooLarge,
}

impl HeadError {
    /// The response status for this error: the one place the mapping is made.
    pub(super) fn status(&self) -> u16 {
        match self {
            Self::RequestLine
            | Self::HeaderLine
            | Self::Encoding
            | Self::Host
            | Self::ContentLength => 400,
            Self::BodyTooLarge => 413,
            Self::HeadTooLarge => 431,
            Self::TransferEncoding => 501,
            Self::Version => 505,
        }
    }
}

/// Number of bytes before the request-line: RFC 9112 §2.2 asks servers to ignore empty lines there.
pub(super) fn leading_blank(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

/// Length of the head (through the empty line that ends it), once `buf` holds all of it.
/// Lines may end in CRLF or bare LF. `buf` must not start with blank lines.
pub(super) fn head_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0;
    for line in buf.split_inclusive(|&b| b == b'\n') {
        len += line.len();
        if line == b"\n" || line == b"\r\n" {
            return Some(len);
        }
    }
    None
}

/// Parse a complete head as delimited by [`head_len`].
pub(super) fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Encoding)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::RequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::RequestLine);
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HeadError::RequestLine);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::RequestLine);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.strip_prefix("HTTP/").is_some_and(is_version_number) => {
            return Err(HeadError::Version);
        }
        _ => return Err(HeadError::RequestLine),
    };

    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        // A line starting with whitespace is obsolete line folding (RFC 9112 §5.2): refused.
        let (name, value) = line.split_once(':').ok_or(HeadError::HeaderLine)?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HeadError::HeaderLine);
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(HeadError::HeaderLine);
        }
        headers.push((name.to_string(), value.to_string()));
    }

    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut head = Head {
        method: method.to_string(),
        path,
        query,
        headers,
        content_length: 0,
        keep_alive: http11,
        expect_continue: false,
    };
    if head.values("transfer-encoding").next().is_some() {
        return Err(HeadError::TransferEncoding);
    }
    if http11 && head.values("host").count() != 1 {
        return Err(HeadError::Host);
    }
    head.content_length = content_length(&head)?;
    let has_token = |want: &str| {
        head.values("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    head.keep_alive = !has_token("close") && (http11 || has_token("keep-alive"));
    head.expect_continue = http11
        && head
            .values("expect")
            .any(|v| v.eq_ignore_ascii_case("100-continue"));
    Ok(head)
}

/// The body length: every `Content-Length` must be the same decimal number, at most [`MAX_BODY`].
fn content_length(head: &Head) -> Result<usize, HeadError> {
    let mut found: Option<usize> = None;
    for v in head.values("content-length") {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeadError::ContentLength);
        }
        // All digits: a parse failure can only be overflow, i.e. far too large.
        let n: usize = v.parse().map_err(|_| HeadError::BodyTooLarge)?;
        if found.is_some_and(|f| f != n) {
            return Err(HeadError::ContentLength);
        }
        found = Some(n);
    }
    let n = found.unwrap_or(0);
    if n > MAX_BODY {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(n)
}

/// `DIGIT "." DIGIT` (RFC 9112 §2.3).
fn is_version_number(v: &str) -> bool {
    matches!(v.as_bytes(), [a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}

/// `tchar` from RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
