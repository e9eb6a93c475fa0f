//! The admin API's HTTP transport: a server and a client on hyper 1 (HTTP/1.1, RFC 9110 and
//! RFC 9112), with bearer-token checks (RFC 6750 §2.1).
//!
//! hyper parses and frames the messages (persistent connections, pipelining, `Expect:
//! 100-continue`, chunked bodies, `HEAD`); this module adds what the admin API needs on top:
//! the token check, a 1 MiB body limit (413), a 10 s limit to read a request head (the
//! connection is closed) and its body (408), `Host` rules for HTTP/1.1 (400), a handler that
//! panics answering 500, and a graceful stop: on shutdown the listener closes at once, idle
//! connections close, and requests in flight get 5 s to finish.
//!
//! Errors produced by this layer (400, 401, 408, 413, 500) have a JSON body
//! `{"error": "..."}` and close the connection; errors hyper answers itself while parsing
//! (malformed heads, 431 for heads over 16 KiB, 505) have none.
//!
//! [`request`] is the matching client used by the CLI: one request per connection, 5 s overall.

mod client;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

pub use client::{AdminClientError, request};

/// Largest request head, in bytes (larger ones get 431 from hyper).
const MAX_HEAD: usize = 16 * 1024;

/// Largest request body, in bytes (larger ones get 413).
const MAX_BODY: usize = 1024 * 1024;

/// Paths a `GET` or `HEAD` reaches without the bearer token: liveness and readiness, for
/// load balancers and orchestrators that carry no credentials (they tell only whether the
/// node can serve).
const OPEN_PATHS: [&str; 2] = ["/health", "/ready"];

/// A request as handed to the [`Handler`].
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// The path of the request target, still percent-encoded (`/calls`).
    pub path: String,
    /// The query string after `?`, if any, still percent-encoded.
    pub query: Option<String>,
    /// Header fields in arrival order, names in lower case (compare them case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body (empty when none was sent).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response produced by the [`Handler`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, 200–599 (anything else is replaced by a 500).
    pub status: u16,
    /// The `Content-Type` header value.
    pub content_type: String,
    /// The body (not sent for `HEAD` requests or 204/304 responses).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A JSON response: `v` serialized, followed by a newline.
    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json".into(),
            body,
        }
    }

    /// A plain UTF-8 text response.
    pub fn text(status: u16, s: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: s.into().into_bytes(),
        }
    }

    /// This layer's own error responses: `{"error": message}`.
    fn error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }
}

/// The application behind the server: called once per request, on its own task.
pub type Handler =
    Arc<dyn Fn(HttpRequest) -> Pin<Box<dyn Future<Output = HttpResponse> + Send>> + Send + Sync>;

/// Timeouts, kept apart so tests can shorten them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Longest wait for a request head, and then for its body.
    read_timeout: Duration,
    /// How long `serve` waits for in-flight requests after shutdown before aborting them.
    shutdown_grace: Duration,
}

impl Limits {
    const DEFAULT: Self = Self {
        read_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
    };
}

/// What every connection shares.
struct Ctx {
    token: Option<String>,
    handler: Handler,
    limits: Limits,
}

/// Serve HTTP on `listener` until `shutdown` becomes `true` (or its sender is dropped).
///
/// Each connection runs on its own task. When `token` is `Some`, every request must carry
/// `Authorization: Bearer <token>` or gets a 401 (but `GET /health` and `GET /ready`). On shutdown the listener is closed at once,
/// idle connections are closed, and requests in flight get up to 5 s to finish.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    handler: Handler,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, token, handler, shutdown, Limits::DEFAULT).await;
}

async fn serve_with(
    listener: TcpListener,
    token: Option<String>,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let local = listener.local_addr().ok();
    let ctx = Arc::new(Ctx {
        token,
        handler,
        limits,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HEAD.max(8192));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown_signalled(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let ctx = Arc::clone(&ctx);
                    let service = service_fn(move |req| {
                        let ctx = Arc::clone(&ctx);
                        async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
                    });
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "admin API connection failed");
                        }
                    });
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(?local, error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done),
        }
    }
    drop(listener);
    if timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?local,
            open = conns.len(),
            "admin API connections aborted at shutdown"
        );
    }
    conns.shutdown().await;
    tracing::debug!(?local, "admin API stopped");
}

/// Resolves once shutdown is requested, or once nobody can request it any more.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "admin API connection task panicked");
    }
}

/// Check one request, read its body, run the handler and turn its answer into a response.
async fn respond(ctx: &Ctx, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if let Err(why) = well_formed(&parts) {
        return closing(to_hyper(HttpResponse::error(400, why), false));
    }
    let open = matches!(parts.method, http::Method::GET | http::Method::HEAD)
        && OPEN_PATHS.contains(&parts.uri.path());
    if !open && let Err(why) = authorize(ctx.token.as_deref(), &parts.headers) {
        let mut resp = to_hyper(HttpResponse::error(401, why), false);
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return closing(resp);
    }
    if hyper::body::Body::size_hint(&body).lower() > MAX_BODY as u64 {
        let resp = HttpResponse::error(413, "request body larger than 1 MiB");
        return closing(to_hyper(resp, false));
    }
    let body = match timeout(
        ctx.limits.read_timeout,
        Limited::new(body, MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => {
            let resp = HttpResponse::error(408, "timed out reading the request body");
            return closing(to_hyper(resp, false));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let resp = HttpResponse::error(413, "request body larger than 1 MiB");
            return closing(to_hyper(resp, false));
        }
        Ok(Err(e)) => {
            let resp = HttpResponse::error(400, &format!("bad request body: {e}"));
            return closing(to_hyper(resp, false));
        }
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
    };
    // HEAD is answered as GET without the body (RFC 9110 §9.3.2): the routes see a GET.
    let head_only = parts.method == http::Method::HEAD;
    let method = if head_only {
        "GET"
    } else {
        parts.method.as_str()
    };
    let request = HttpRequest {
        method: method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), value)
            })
            .collect(),
        body,
    };
    to_hyper(call_handler(&ctx.handler, request).await, head_only)
}

/// What hyper lets through but RFC 9112 refuses: a target that is not a path (§3.2; `*` only
/// for `OPTIONS`), and an HTTP/1.1 request without exactly one `Host` of visible ASCII (§3.2).
fn well_formed(parts: &http::request::Parts) -> Result<(), &'static str> {
    let asterisk = parts.method == http::Method::OPTIONS && parts.uri.path() == "*";
    if !parts.uri.path().starts_with('/') && !asterisk {
        return Err("the request target must be a path");
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if parts.version == http::Version::HTTP_11 => Err("missing Host header"),
        (Some(_), Some(_)) => Err("more than one Host header"),
        (Some(host), None) if host.to_str().is_err() => Err("the Host header is not ASCII"),
        _ => Ok(()),
    }
}

/// Check the bearer token (RFC 6750 §2.1), comparing in constant time.
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(expected) = token else {
        return Ok(());
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err("missing bearer token"),
        (Some(value), None) => value.to_str().map_err(|_| "invalid bearer token")?,
        (Some(_), Some(_)) => return Err("more than one Authorization header"),
    };
    let credential = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => return Err("missing bearer token"),
    };
    if credential.is_empty()
        || !bool::from(subtle::ConstantTimeEq::ct_eq(
            credential.as_bytes(),
            expected.as_bytes(),
        ))
    {
        return Err("invalid bearer token");
    }
    Ok(())
}

/// Run the handler on its own task, so that a panic becomes a 500 rather than a dropped
/// connection; the task is aborted if this connection goes away first.
async fn call_handler(handler: &Handler, req: HttpRequest) -> HttpResponse {
    struct AbortOnDrop(JoinHandle<HttpResponse>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(handler(req)));
    match (&mut task.0).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "admin API handler failed");
            HttpResponse::error(500, "internal error")
        }
    }
}

/// The handler's answer as a hyper response; a status outside 200–599 becomes a 500. For
/// `HEAD` the length of the body that a `GET` would get is announced, and no body sent.
fn to_hyper(resp: HttpResponse, head_only: bool) -> http::Response<Full<Bytes>> {
    let resp = match resp.status {
        200..=599 => resp,
        other => {
            tracing::error!(status = other, "admin API handler gave an invalid status");
            HttpResponse::error(500, "internal error")
        }
    };
    let length = resp.body.len();
    let body = if head_only {
        Bytes::new()
    } else {
        Bytes::from(resp.body)
    };
    let mut out = http::Response::new(Full::new(body));
    *out.status_mut() =
        http::StatusCode::from_u16(resp.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&resp.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if head_only {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    out
}

/// Ask hyper to close the connection after this response.
fn closing(mut resp: http::Response<Full<Bytes>>) -> http::Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
