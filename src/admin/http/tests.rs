//! Server and client tests over real loopback sockets (real time: no paused clock with sockets).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{authority, request_within};
use super::*;

/// Short limits so timeout paths run quickly.
const TEST_LIMITS: Limits = Limits {
    read_timeout: Duration::from_millis(500),
    shutdown_grace: Duration::from_secs(2),
};

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(token: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve_with(
            listener,
            token.map(str::to_string),
            echo_handler(),
            shutdown,
            TEST_LIMITS,
        ));
        Self { addr, stop, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        request(&self.url(), "GET", path, None, None)
            .await
            .expect("request")
    }
}

/// Echoes the request as JSON; `/panic` panics, `/text` answers text, `/bogus` a bad status.
fn echo_handler() -> Handler {
    Arc::new(|req: HttpRequest| {
        Box::pin(async move {
            match req.path.as_str() {
                "/panic" => panic!("handler panic (expected by the test)"),
                "/text" => HttpResponse::text(200, "plain"),
                "/bogus" => HttpResponse::text(42, "nope"),
                _ => HttpResponse::json(
                    200,
                    &json!({
                        "method": req.method,
                        "path": req.path,
                        "query": req.query,
                        "body": String::from_utf8_lossy(&req.body),
                        "body_len": req.body.len(),
                        "host": req.header("HOST"),
                    }),
                ),
            }
        })
    })
}

/// Send raw bytes, read until the server closes, return what came back.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server closes")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test]
async fn get_returns_handler_json() {
    let server = Server::start(None).await;
    let (status, body) = server.get("/status?verbose=1&x=%20").await;
    assert_eq!(status, 200);
    let v = json_body(&body);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/status");
    assert_eq!(v["query"], "verbose=1&x=%20");
    assert_eq!(v["host"], server.addr.to_string());

    // Without the scheme too, and a text response.
    let (status, body) = request(&server.addr.to_string(), "GET", "/text", None, None)
        .await
        .expect("request");
    assert_eq!((status, body.as_str()), (200, "plain"));
}

#[tokio::test]
async fn token_is_required_accepted_and_rejected() {
    let server = Server::start(Some("s3cret")).await;
    let url = server.url();

    let (status, body) = request(&url, "GET", "/status", None, None)
        .await
        .expect("req");
    assert_eq!(status, 401);
    assert_eq!(json_body(&body)["error"], "missing bearer token");

    let (status, body) = request(&url, "GET", "/status", Some("wrong"), None)
        .await
        .expect("req");
    assert_eq!(status, 401);
    assert_eq!(json_body(&body)["error"], "invalid bearer token");

    let (status, body) = request(&url, "GET", "/status", Some("s3cret"), None)
        .await
        .expect("req");
    assert_eq!(status, 200);
    assert_eq!(json_body(&body)["path"], "/status");

    // Liveness and readiness answer without it (GET and HEAD only).
    for path in ["/health", "/ready"] {
        let (status, _) = request(&url, "GET", path, None, None).await.expect("req");
        assert_eq!(status, 200, "{path}");
        let (status, _) = request(&url, "POST", path, None, None).await.expect("req");
        assert_eq!(status, 401, "POST {path}");
    }
    let (status, _) = request(&url, "GET", "/health/x", None, None)
        .await
        .expect("req");
    assert_eq!(status, 401);

    // Scheme is case-insensitive; other schemes and prefixes of the token are refused.
    let ok =
        "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: bearer s3cret\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw(server.addr, ok.as_bytes()).await), 200);
    for auth in [
        "Basic czNjcmV0",
        "Bearer s3cre",
        "Bearer s3cret2",
        "Bearer",
        "Bearer ",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
        let resp = raw(server.addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), 401, "{auth}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("www-authenticate: bearer\r\n"),
            "{resp}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_server_keeps_serving() {
    let server = Server::start(None).await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    // (case, bytes, status, answered by this layer with a JSON error rather than by hyper)
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("garbage", b"GARBAGE\r\n\r\n".to_vec(), 400, false),
        (
            "no colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n".to_vec(),
            400,
            false,
        ),
        ("no host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400, true),
        (
            "two hosts",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(),
            400,
            true,
        ),
        (
            "target",
            b"GET x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            true,
        ),
        (
            "extra sp",
            b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "space in name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "cl text",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "cl sign",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "cl mismatch",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            false,
        ),
        (
            "host not ascii",
            b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".to_vec(),
            400,
            true,
        ),
        (
            "version",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "version text",
            b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "body too large",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n".to_vec(),
            413,
            true,
        ),
        (
            "chunked body too large",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                MAX_BODY + 1,
                "a".repeat(MAX_BODY + 1)
            )
            .into_bytes(),
            413,
            true,
        ),
        (
            "cl overflow",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
                .to_vec(),
            400,
            false,
        ),
        ("head too large", big_header.into_bytes(), 431, false),
    ];
    for (name, bytes, want, ours) in cases {
        let resp = raw(server.addr, &bytes).await;
        assert_eq!(status_of(&resp), want, "{name}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close\r\n"),
            "{name}: {resp}"
        );
        if ours {
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
            assert!(json_body(body)["error"].is_string(), "{name}: {resp}");
        }
        assert_eq!(server.get("/still-up").await.0, 200, "after {name}");
    }
}

#[tokio::test]
async fn post_body_is_delivered() {
    let server = Server::start(None).await;
    let body = serde_json::to_vec(&json!({ "target": "standby", "pad": "x".repeat(100_000) }))
        .expect("json");
    let (status, resp) = request(&server.url(), "POST", "/switchover", None, Some(&body))
        .await
        .expect("request");
    assert_eq!(status, 200);
    let v = json_body(&resp);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body"], String::from_utf8_lossy(&body).as_ref());

    // A chunked body (RFC 9112 §7.1) is delivered whole.
    let resp = raw(
        server.addr,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(r#""body":"hello world""#), "{resp}");

    // POST without a body.
    let (status, resp) = request(&server.url(), "POST", "/switchover", None, None)
        .await
        .expect("request");
    assert_eq!(
        (status, json_body(&resp)["body_len"].as_u64()),
        (200, Some(0))
    );
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let server = Server::start(None).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .expect("write head");
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).await.expect("interim");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.expect("write body");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert_eq!(status_of(&out), 200);
    assert!(out.contains(r#""body":"hello""#), "{out}");
}

#[tokio::test]
async fn keep_alive_pipelining_and_http10() {
    let server = Server::start(None).await;
    let resp = raw(
        server.addr,
        b"\r\nGET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\nHost: x\nContent-Length: 3\n\nabcGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{resp}");
    let one = resp.find(r#""path":"/one""#).expect("one");
    let two = resp.find(r#""body":"abc""#).expect("two");
    let three = resp.find(r#""path":"/three""#).expect("three");
    assert!(one < two && two < three, "in order: {resp}");
    // The connection stayed open for the second and third request; the third closed it.
    assert_eq!(
        resp.to_ascii_lowercase()
            .matches("connection: close\r\n")
            .count(),
        1
    );

    // HTTP/1.0 without keep-alive: one response, then close (raw() waits for the close).
    let resp = raw(server.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&resp), 200);
}

#[tokio::test]
async fn head_request_gets_headers_only() {
    let server = Server::start(None).await;
    let resp = raw(
        server.addr,
        b"HEAD /text HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.to_ascii_lowercase().contains("content-length: 5\r\n"),
        "{resp}"
    );
    assert!(resp.ends_with("\r\n\r\n"), "no body: {resp:?}");

    // The routes see a HEAD as the GET it mirrors (the echo names the method it got, so the
    // announced length is the GET's only if the handler saw "GET").
    let get = raw(
        server.addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = raw(
        server.addr,
        b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let length = |r: &str| {
        r.to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length: ").map(str::to_string))
    };
    assert!(length(&get).is_some());
    assert_eq!(length(&head), length(&get), "{head}");
}

#[tokio::test]
async fn handler_panic_and_bad_status_become_500() {
    let server = Server::start(None).await;
    let (status, body) = server.get("/panic").await;
    assert_eq!(
        (status, json_body(&body)["error"].as_str()),
        (500, Some("internal error"))
    );
    assert_eq!(server.get("/bogus").await.0, 500);
    assert_eq!(server.get("/after").await.0, 200);
}

#[tokio::test]
async fn slow_requests_are_cut_off() {
    let server = Server::start(None).await;
    // A head that never ends: closed when the read limit runs out.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed")
        .expect("read");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));

    // A body that never ends: 408.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    let mut out = String::new();
    timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answered")
        .expect("read");
    assert_eq!(status_of(&out), 408, "{out}");

    // An idle connection is simply closed.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), idle.read_to_end(&mut out))
        .await
        .expect("closed")
        .expect("read");
    assert!(out.is_empty());
}

#[tokio::test]
async fn shutdown_stops_the_server_and_closes_idle_connections() {
    let server = Server::start(None).await;
    assert_eq!(server.get("/").await.0, 200);

    // A keep-alive connection sitting idle must not hold up shutdown.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 15];
    idle.read_exact(&mut first).await.expect("response");
    assert_eq!(&first, b"HTTP/1.1 200 OK");

    server.stop.send(true).expect("server listening");
    timeout(Duration::from_secs(1), server.task)
        .await
        .expect("serve returns promptly")
        .expect("no panic");
    let err = request(&format!("http://{}", server.addr), "GET", "/", None, None)
        .await
        .expect_err("no longer listening");
    assert!(matches!(err, AdminClientError::Connect { .. }), "{err}");
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest)
        .await
        .expect("idle connection closed");
}

#[tokio::test]
async fn already_set_shutdown_returns_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (_stop, shutdown) = watch::channel(true);
    timeout(
        Duration::from_secs(1),
        serve(listener, None, echo_handler(), shutdown),
    )
    .await
    .expect("returns");
}

#[tokio::test]
async fn client_error_on_a_closed_port_names_the_address() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("http://{addr}");
    let err = request(&url, "GET", "/status", None, None)
        .await
        .expect_err("closed port");
    assert!(matches!(err, AdminClientError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
}

#[tokio::test]
async fn client_times_out_and_rejects_bad_responses() {
    // Accepts, then says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let holder = tokio::spawn(async move {
        let (s, _) = silent.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let err = request_within(&addr, "GET", "/", None, None, Duration::from_millis(300))
        .await
        .expect_err("timeout");
    assert!(matches!(err, AdminClientError::Timeout { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&addr) && msg.contains("waiting for the response"),
        "{msg}"
    );
    holder.abort();

    // Answers garbage, or closes mid-body.
    for (reply, want) in [
        (&b"garbage\r\n\r\n"[..], "not an HTTP/1.x response"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            "response body cut short",
        ),
        (b"", "connection closed before a complete response"),
    ] {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let fake = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            s.write_all(reply).await.expect("write");
        });
        let err = request(&addr, "GET", "/", None, None)
            .await
            .expect_err("bad");
        let msg = err.to_string();
        assert!(matches!(err, AdminClientError::BadResponse { .. }), "{msg}");
        assert!(msg.contains(&addr) && msg.contains(want), "{msg}");
        fake.await.expect("fake server");
    }

    // A response without Content-Length is read until close.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let fake = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).await;
        s.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\nlater")
            .await
            .expect("write");
    });
    let got = request(&addr, "GET", "/", None, None)
        .await
        .expect("response");
    assert_eq!(got, (503, "later".to_string()));
    fake.await.expect("fake server");
}

#[tokio::test]
async fn client_refuses_unusable_requests() {
    for (method, path, token) in [
        ("GET", "status", None),
        ("GET", "/a b", None),
        ("GET", "/a\r\nX: y", None),
        ("G T", "/", None),
        ("GET", "/", Some("a\r\nX: y")),
    ] {
        let err = request("127.0.0.1:1", method, path, token, None)
            .await
            .expect_err("invalid");
        assert!(
            matches!(err, AdminClientError::InvalidRequest { .. }),
            "{err}"
        );
    }
}

#[test]
fn client_address_forms() {
    for (addr, want) in [
        ("http://127.0.0.1:8060", "127.0.0.1:8060"),
        ("HTTP://127.0.0.1:8060/", "127.0.0.1:8060"),
        ("127.0.0.1:8060", "127.0.0.1:8060"),
        ("localhost:8060", "localhost:8060"),
        ("http://[::1]:8060", "[::1]:8060"),
        ("[::1]", "[::1]:80"),
        ("example.net", "example.net:80"),
    ] {
        assert_eq!(authority(addr).expect(addr), want, "{addr}");
    }
    for bad in [
        "",
        "http://",
        "https://x:1",
        "x:port",
        "x:99999",
        "::1",
        "x:1/status",
        ":80",
    ] {
        let err = authority(bad).expect_err(bad);
        assert!(
            matches!(err, AdminClientError::InvalidAddress { .. }),
            "{bad}: {err}"
        );
    }
}
