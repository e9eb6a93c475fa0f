//! A small HTTP/1.1 server and client for the admin API, on tokio (RFC 9110, RFC 9112).
//!
//! The server reads a request head (at most 16 KiB) and a `Content-Length` body (at most 1 MiB;
//! chunked uploads are refused with 501), checks the bearer token if one is configured
//! (RFC 6750 §2.1), and hands an [`HttpRequest`] to the [`Handler`]. Connections are persistent
//! by HTTP/1.1 rules (`Connection: close` and HTTP/1.0 without `keep-alive` close them) and
//! pipelined requests are answered in order. Every response carries `Content-Length`.
//!
//! Errors produced by the server itself (400, 401, 408, 413, 431, 500, 501, 505) have a JSON
//! body `{"error": "..."}` and close the connection. A handler that panics yields a 500.
//!
//! [`request`] is the matching client used by the CLI: one request per connection, 5 s overall.

mod client;
mod parse;
mod response;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};

pub use client::{AdminClientError, request};
use parse::{Head, HeadError, MAX_HEAD};
use response::encode_response;

/// A request as handed to the [`Handler`].
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// The path of the request target, still percent-encoded (`/calls`).
    pub path: String,
    /// The query string after `?`, if any, still percent-encoded.
    pub query: Option<String>,
    /// Header fields in arrival order, names as sent (compare them case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body (empty without `Content-Length`).
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

    /// The server's own error responses: `{"error": message}`.
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
    /// Longest wait for a whole request (head and body), and for the next request on an idle
    /// connection.
    read_timeout: Duration,
    /// How long `serve` waits for in-flight requests after shutdown before aborting them.
    shutdown_grace: Duration,
    /// How long a closing connection keeps reading (and discarding) so the client sees the
    /// response rather than a reset.
    linger: Duration,
}

impl Limits {
    const DEFAULT: Self = Self {
        read_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
        linger: Duration::from_secs(2),
    };
}

/// What every connection task shares.
struct Ctx {
    token: Option<String>,
    handler: Handler,
    limits: Limits,
}

/// Serve HTTP on `listener` until `shutdown` becomes `true` (or its sender is dropped).
///
/// Each connection runs on its own task. When `token` is `Some`, every request must carry
/// `Authorization: Bearer <token>` or gets a 401. On shutdown the listener is closed at once,
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
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown_signalled(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(connection(stream, peer, Arc::clone(&ctx), shutdown.clone()));
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
    let drain = async {
        while let Some(done) = conns.join_next().await {
            log_join(done);
        }
    };
    if timeout(limits.shutdown_grace, drain).await.is_err() {
        tracing::warn!(
            ?local,
            open = conns.len(),
            "admin API connections aborted at shutdown"
        );
        conns.shutdown().await;
    }
    tracing::debug!(?local, "admin API stopped");
}

/// Resolves once shutdown is requested, or once nobody can request it any more.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "admin API connection task panicked");
        }
    }
}

/// Whether to keep reading requests from a connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close after this response.
    Close,
}

/// One connection: wait for a request, answer it, repeat while the client keeps the connection.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.is_empty() {
            // Idle: close on shutdown, on timeout, or when the client goes away.
            tokio::select! {
                biased;
                () = shutdown_signalled(&mut shutdown) => return,
                read = timeout(ctx.limits.read_timeout, stream.read_buf(&mut buf)) => match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
            }
        }
        let stopping = *shutdown.borrow();
        match serve_one(&mut stream, &mut buf, &ctx, stopping).await {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => return linger_close(&mut stream, ctx.limits.linger).await,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "admin API connection failed");
                return;
            }
        }
    }
}

/// Read, check and answer one request whose first bytes are already in `buf`.
async fn serve_one(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    ctx: &Ctx,
    stopping: bool,
) -> std::io::Result<Next> {
    let deadline = Instant::now() + ctx.limits.read_timeout;
    let head_len = match timeout_at(deadline, read_head(stream, buf)).await {
        Err(_) => return reject(stream, 408, "timed out reading the request").await,
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(Next::Close),
        Ok(Ok(Some(Err(e)))) => return reject(stream, e.status(), &e.to_string()).await,
        Ok(Ok(Some(Ok(n)))) => n,
    };
    // `read_head` measured `head_len` within `buf`, so the `get` always succeeds.
    let head = match buf
        .get(..head_len)
        .ok_or(HeadError::RequestLine)
        .and_then(parse::parse_head)
    {
        Ok(head) => head,
        Err(e) => return reject(stream, e.status(), &e.to_string()).await,
    };
    if let Err(why) = authorize(ctx.token.as_deref(), &head) {
        let resp = HttpResponse::error(401, why);
        let extra = [("WWW-Authenticate", "Bearer")];
        write_response(stream, &resp, false, Next::Close, &extra).await?;
        return Ok(Next::Close);
    }
    let total = head_len + head.content_length;
    if head.expect_continue && buf.len() < total {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    match timeout_at(deadline, read_to(stream, buf, total)).await {
        Err(_) => return reject(stream, 408, "timed out reading the request body").await,
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => return Ok(Next::Close),
        Ok(Ok(true)) => {}
    }
    // `read_to` returned true, so `buf` holds at least `total` bytes.
    let body: Vec<u8> = buf.drain(..total).skip(head_len).collect();

    let next = if head.keep_alive && !stopping {
        Next::KeepAlive
    } else {
        Next::Close
    };
    let head_only = head.method == "HEAD";
    let Head {
        method,
        path,
        query,
        headers,
        ..
    } = head;
    let req = HttpRequest {
        method,
        path,
        query,
        headers,
        body,
    };
    let resp = call_handler(&ctx.handler, req).await;
    write_response(stream, &resp, head_only, next, &[]).await?;
    Ok(next)
}

/// Fill `buf` until it holds a whole head. `Ok(None)`: the client closed the connection.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<usize, HeadError>>> {
    loop {
        let blank = parse::leading_blank(buf);
        buf.drain(..blank);
        if let Some(n) = parse::head_len(buf) {
            return Ok(Some(if n > MAX_HEAD {
                Err(HeadError::HeadTooLarge)
            } else {
                Ok(n)
            }));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(Err(HeadError::HeadTooLarge)));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Fill `buf` until it holds `total` bytes. `Ok(false)`: the client closed the connection first.
async fn read_to(stream: &mut TcpStream, buf: &mut Vec<u8>, total: usize) -> std::io::Result<bool> {
    buf.reserve(total.saturating_sub(buf.len()));
    while buf.len() < total {
        if stream.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Check the bearer token (RFC 6750 §2.1), comparing in constant time.
fn authorize(token: Option<&str>, head: &Head) -> Result<(), &'static str> {
    let Some(expected) = token else {
        return Ok(());
    };
    let mut values = head.values("authorization");
    let value = match (values.next(), values.next()) {
        (None, _) => return Err("missing bearer token"),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err("more than one Authorization header"),
    };
    let credential = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => return Err("missing bearer token"),
    };
    if credential.is_empty() || !constant_time_eq(credential.as_bytes(), expected.as_bytes()) {
        return Err("invalid bearer token");
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// Answer with a server-side error and close the connection.
async fn reject(stream: &mut TcpStream, status: u16, message: &str) -> std::io::Result<Next> {
    write_response(
        stream,
        &HttpResponse::error(status, message),
        false,
        Next::Close,
        &[],
    )
    .await?;
    Ok(Next::Close)
}

async fn write_response(
    stream: &mut TcpStream,
    resp: &HttpResponse,
    head_only: bool,
    next: Next,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let bytes = encode_response(resp, head_only, next, extra);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Close after a response: send FIN, then read and discard what the client still sends for a
/// short while, so unread request bytes do not turn into a reset that destroys the response.
async fn linger_close(stream: &mut TcpStream, linger: Duration) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = timeout(linger, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Fuzzing entry (see `crate::fuzzing`): delimit and parse a request head as the server does.
#[doc(hidden)]
pub fn fuzz_head(buf: &[u8]) {
    let buf = buf.get(parse::leading_blank(buf)..).unwrap_or_default();
    if let Some(len) = parse::head_len(buf)
        && let Some(head) = buf.get(..len.min(MAX_HEAD))
    {
        match parse::parse_head(head) {
            Ok(h) => {
                let _ = h.values("content-length").count();
            }
            Err(e) => {
                let _ = e.status();
            }
        }
    }
}
