//! The admin API client used by the CLI, on hyper: one request per connection, `Connection: close`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Overall limit for one [`request`]: connect, send and receive.
const TIMEOUT: Duration = Duration::from_secs(5);

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

    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "application/json, text/plain")
        .header(http::header::CONNECTION, "close")
        .header(
            http::header::USER_AGENT,
            concat!("understudy/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(|_| invalid("the method, path or token cannot be put in a request"))?;

    let deadline = Instant::now() + limit;
    let timed_out = |stage| AdminClientError::Timeout {
        addr: addr.to_string(),
        stage,
        after: limit,
    };
    let stream = timeout_at(deadline, TcpStream::connect(authority.as_str()))
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(|source| AdminClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(addr, &e))?;
        let driver = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| failed(addr, &e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| AdminClientError::BadResponse {
                addr: addr.to_string(),
                reason: if e.is::<http_body_util::LengthLimitError>() {
                    "response body larger than 16 MiB".to_string()
                } else {
                    format!("response body cut short: {e}")
                },
            })?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| timed_out("waiting for the response"))?
}

/// A failed exchange: an I/O error when the socket failed, else a response that is not HTTP.
fn failed(addr: &str, e: &hyper::Error) -> AdminClientError {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return AdminClientError::Io {
                addr: addr.to_string(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            };
        }
        source = inner.source();
    }
    let reason = if e.is_incomplete_message() {
        "connection closed before a complete response".to_string()
    } else if e.is_parse() {
        format!("not an HTTP/1.x response ({e})")
    } else {
        e.to_string()
    };
    AdminClientError::BadResponse {
        addr: addr.to_string(),
        reason,
    }
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
