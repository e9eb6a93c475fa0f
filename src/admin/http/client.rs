//! The admin API client used by the CLI: one request per connection, `Connection: close`.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Overall limit for one [`request`]: connect, send and receive.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response head the client accepts.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Largest response body the client accepts.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// Why an admin API call failed. Every variant names the address it was made to.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The address could not be understood.
    #[error("invalid admin API address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The method, path or token cannot be put in a request.
    #[error("invalid request to admin API at {addr}: {reason}")]
    InvalidRequest {
        /// The address as given.
        addr: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The TCP connection could not be made (refused, unreachable, name not resolved...).
    #[error("cannot connect to admin API at {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The exchange did not finish within the client's 5 s limit.
    #[error("admin API at {addr} timed out after {}s while {stage}", after.as_secs_f32())]
    Timeout {
        /// The address as given.
        addr: String,
        /// What was under way: `connecting`, `sending the request` or `waiting for the response`.
        stage: &'static str,
        /// The limit that ran out.
        after: Duration,
    },
    /// The connection failed after it was made.
    #[error("I/O error talking to admin API at {addr}: {source}")]
    Io {
        /// The address as given.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server answered something that is not a usable HTTP/1.x response.
    #[error("bad response from admin API at {addr}: {reason}")]
    BadResponse {
        /// The address as given.
        addr: String,
        /// What is wrong with the response.
        reason: String,
    },
}

/// Send one request to the admin API at `addr` (`"http://127.0.0.1:8060"` or `"127.0.0.1:8060"`;
/// port 80 if none) and return the status and the body (invalid UTF-8 replaced). With `token`, an
/// `Authorization: Bearer` header is sent; a `body` is sent as `application/json`. The whole
/// exchange is limited to 5 s.
///
/// # Errors
///
/// An [`AdminClientError`] naming `addr` when the address or request is unusable, the connection
/// fails or times out, or the answer is not an HTTP/1.x response. Any HTTP status, 4xx and 5xx
/// included, is a successful call.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(u16, String), AdminClientError> {
    request_within(addr, method, path, token, body, TIMEOUT).await
}

pub(super) async fn request_within(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    limit: Duration,
) -> Result<(u16, String), AdminClientError> {
    let authority = authority(addr)?;
    let invalid = |reason| AdminClientError::InvalidRequest {
        addr: addr.to_string(),
        reason,
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(invalid("the method must be letters only"));
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(invalid(
            "the path must start with / and contain no spaces or controls",
        ));
    }
    if token.is_some_and(|t| t.bytes().any(|b| b < b' ' || b == 0x7f)) {
        return Err(invalid("the token contains control characters"));
    }

    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json, text/plain\r\n\
         Connection: close\r\nUser-Agent: understudy/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = token {
        let _ = write!(head, "Authorization: Bearer {t}\r\n");
    }
    match body {
        Some(b) => {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        }
        None if !matches!(method, "GET" | "HEAD") => head += "Content-Length: 0\r\n",
        None => {}
    }
    head += "\r\n";
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());

    let deadline = Instant::now() + limit;
    let timed_out = |stage| AdminClientError::Timeout {
        addr: addr.to_string(),
        stage,
        after: limit,
    };
    let io = |source| AdminClientError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = timeout_at(deadline, TcpStream::connect(authority.as_str()))
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(|source| AdminClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    timeout_at(deadline, stream.write_all(&bytes))
        .await
        .map_err(|_| timed_out("sending the request"))?
        .map_err(io)?;
    let (status, body) = timeout_at(deadline, read_response(&mut stream, method == "HEAD"))
        .await
        .map_err(|_| timed_out("waiting for the response"))?
        .map_err(|e| match e {
            ReadError::Io(source) => io(source),
            ReadError::Bad(reason) => AdminClientError::BadResponse {
                addr: addr.to_string(),
                reason,
            },
        })?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `host:port` to connect to and send as `Host`, from `addr` with or without `http://`.
pub(super) fn authority(addr: &str) -> Result<String, AdminClientError> {
    let invalid = |reason| AdminClientError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    };
    let rest = match addr.split_once("://") {
        None => addr,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(invalid("only http:// is supported")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) || authority.bytes().any(|b| b <= b' ') {
        return Err(invalid("expected host:port with no path"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid(
            "IPv6 addresses must be in brackets, e.g. [::1]:8060",
        ));
    }
    match port {
        None => Ok(format!("{host}:80")),
        Some(p) if p.parse::<u16>().is_ok() => Ok(authority.to_string()),
        Some(_) => Err(invalid("the port is not a number from 0 to 65535")),
    }
}

enum ReadError {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Read one final response: status and body (by `Content-Length`, else until the server closes).
async fn read_response(
    stream: &mut TcpStream,
    head_only: bool,
) -> Result<(u16, Vec<u8>), ReadError> {
    let bad = |s: &str| ReadError::Bad(s.to_string());
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_len = loop {
            if let Some(n) = super::parse::head_len(&buf) {
                break n;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(bad("response head larger than 64 KiB"));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(bad(if buf.is_empty() {
                    "connection closed before a response"
                } else {
                    "connection closed in the middle of the response head"
                }));
            }
        };
        let text = buf
            .get(..head_len)
            .and_then(|head| std::str::from_utf8(head).ok())
            .ok_or_else(|| bad("response head is not UTF-8"))?;
        let mut lines = text.lines();
        let status = lines.next().and_then(parse_status_line).ok_or_else(|| {
            ReadError::Bad(format!("malformed status line {:?}", first_line(text)))
        })?;
        let mut content_length = None;
        for line in lines.take_while(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad("malformed header line"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value.parse().map_err(|_| bad("invalid Content-Length"))?;
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked responses are not supported"));
            }
        }
        buf.drain(..head_len);
        if (100..200).contains(&status) {
            continue; // interim response (e.g. 100 Continue): the final one follows
        }
        if head_only || matches!(status, 204 | 304) {
            return Ok((status, Vec::new()));
        }
        let limit = content_length.unwrap_or(MAX_RESPONSE_BODY);
        if limit > MAX_RESPONSE_BODY {
            return Err(bad("response body larger than 16 MiB"));
        }
        while buf.len() < limit {
            if stream.read_buf(&mut buf).await? == 0 {
                if content_length.is_some() {
                    return Err(ReadError::Bad(format!(
                        "connection closed after {} of {limit} body bytes",
                        buf.len()
                    )));
                }
                return Ok((status, buf));
            }
        }
        if content_length.is_none() {
            return Err(bad("response body larger than 16 MiB"));
        }
        buf.truncate(limit);
        return Ok((status, buf));
    }
}

/// `HTTP/1.x NNN reason` → `NNN`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
