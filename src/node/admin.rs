//! The admin API's routes, answered inside the event loop so every view is consistent.

use std::time::Instant;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::admin::http::{Handler, HttpRequest, HttpResponse};
use crate::metrics::{Exposition, Kind};
use crate::server::Server;
use crate::transport::Transport;

/// Most calls one `GET /calls` lists (`?offset=` pages through the rest; `total` counts all).
const CALLS_PAGE: usize = 5_000;

/// A request from the admin HTTP server to the event loop.
#[derive(Debug)]
pub struct AdminQuery {
    /// The HTTP request.
    pub request: HttpRequest,
    /// Where the answer goes.
    pub reply: oneshot::Sender<HttpResponse>,
}

/// The HTTP handler: forwards every request to the event loop and waits for its answer.
pub(crate) fn handler(tx: mpsc::Sender<AdminQuery>) -> Handler {
    std::sync::Arc::new(move |request: HttpRequest| {
        let tx = tx.clone();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            if tx.send(AdminQuery { request, reply }).await.is_err() {
                return HttpResponse::json(503, &json!({"error": "node is shutting down"}));
            }
            rx.await.unwrap_or_else(|_| {
                HttpResponse::json(503, &json!({"error": "node is shutting down"}))
            })
        })
    })
}

/// The transports' gauges and what they dropped to stay within their bounds.
fn transport_metrics(e: &mut Exposition, transport: &Transport) {
    use crate::transport::Counters;
    let c = transport.counters();
    e.single(
        "understudy_tcp_connections",
        Kind::Gauge,
        "TCP and TLS connections open.",
        transport.tcp_connections(),
    );
    e.single(
        "understudy_udp_send_backlog",
        Kind::Gauge,
        "UDP messages waiting for room in the socket's send buffer.",
        transport.udp_backlog(),
    );
    e.family(
        "understudy_transport_dropped_total",
        Kind::Counter,
        "Messages or connections dropped to stay within the transport's bounds, by reason.",
    );
    for (what, v) in [
        ("udp_backlog_full", Counters::get(&c.udp_backlog_dropped)),
        ("tcp_connection_limit", Counters::get(&c.tcp_refused)),
        ("tcp_write_queue_full", Counters::get(&c.tcp_queue_overflow)),
        ("tcp_idle", Counters::get(&c.tcp_idle_closed)),
    ] {
        e.sample("understudy_transport_dropped_total", &[("reason", what)], v);
    }
}

/// HEP capture counters.
fn capture_metrics(e: &mut Exposition, hep: &super::capture::HepCounters) {
    use std::sync::atomic::Ordering;
    e.single(
        "understudy_hep_sent_total",
        Kind::Counter,
        "SIP messages copied to the HEP capture server.",
        hep.sent.load(Ordering::Relaxed),
    );
    e.single(
        "understudy_hep_dropped_total",
        Kind::Counter,
        "SIP messages not copied to the HEP capture server (queue full, send error).",
        hep.dropped.load(Ordering::Relaxed),
    );
}

/// The CDR forwarder's counters (PostgreSQL).
fn forward_metrics(e: &mut Exposition, f: &crate::cdr::ForwardCounters) {
    use std::sync::atomic::Ordering;
    e.single(
        "understudy_cdr_forwarded_total",
        Kind::Counter,
        "CDRs copied from the local spool to PostgreSQL.",
        f.forwarded.load(Ordering::Relaxed),
    );
    e.single(
        "understudy_cdr_forward_failures_total",
        Kind::Counter,
        "Failed attempts to reach PostgreSQL or insert CDRs there (the rows wait in the spool).",
        f.failures.load(Ordering::Relaxed),
    );
    e.single(
        "understudy_cdr_forward_connected",
        Kind::Gauge,
        "1 when the last attempt reached PostgreSQL.",
        u8::from(f.connected.load(Ordering::Relaxed)),
    );
}

/// Counters kept outside the event loop's state, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outside<'a> {
    /// HEP capture.
    pub hep: Option<&'a super::capture::HepCounters>,
    /// The CDR forwarder to PostgreSQL.
    pub forward: Option<&'a crate::cdr::ForwardCounters>,
}

/// Answer one admin request.
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer(
    server: &mut Server,
    transport: &Transport,
    relay: &crate::media::Relay,
    outside: Outside<'_>,
    config_path: Option<&std::path::Path>,
    now: Instant,
    q: AdminQuery,
) {
    let r = &q.request;
    let resp = match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/status") => HttpResponse::json(
            200,
            &server.status_json(
                now,
                json!({
                    "tcp_connections": transport.tcp_connections(),
                    "udp_send_backlog": transport.udp_backlog(),
                }),
            ),
        ),
        ("GET", "/calls") => {
            // One page: the event loop builds it, and 100,000 calls at once would hold the
            // loop (and the keep-alives) for seconds.
            let param = |name: &str| {
                r.query.as_deref().and_then(|q| {
                    q.split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| *k == name)
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                })
            };
            let offset = param("offset").unwrap_or(0);
            let limit = param("limit").unwrap_or(CALLS_PAGE).min(CALLS_PAGE);
            let mut v = server.calls_json(now, offset, limit);
            let calls = v.get_mut("calls").and_then(serde_json::Value::as_array_mut);
            for c in calls
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_object_mut)
            {
                let token = c
                    .get("token")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|t| u64::from_str_radix(t, 16).ok());
                if let Some(t) = token
                    && let Some(m) = relay.live(t)
                {
                    let mut m = serde_json::to_value(m).unwrap_or_default();
                    if let (Some(o), Some((a, b))) = (m.as_object_mut(), relay.foreign(t)) {
                        o.insert("a_foreign".into(), a.into());
                        o.insert("b_foreign".into(), b.into());
                    }
                    c.insert("media".into(), m);
                }
            }
            HttpResponse::json(200, &v)
        }
        ("GET", "/registrations") => HttpResponse::json(200, &server.registrations_json(now)),
        ("GET", "/trunks") => HttpResponse::json(200, &server.trunks_json(now)),
        // Liveness: the event loop answers.
        ("GET", "/health") => HttpResponse::json(200, &json!({"status": "ok"})),
        ("GET", "/ready") => {
            let (ready, v) = server.ready_json(now);
            HttpResponse::json(if ready { 200 } else { 503 }, &v)
        }
        ("GET", "/metrics") => {
            let mut e = server.metrics();
            transport_metrics(&mut e, transport);
            if let Some(h) = outside.hep {
                capture_metrics(&mut e, h);
            }
            if let Some(f) = outside.forward {
                forward_metrics(&mut e, f);
            }
            let m = e.finish();
            HttpResponse {
                status: 200,
                content_type: "text/plain; version=0.0.4".into(),
                body: m.into_bytes(),
            }
        }
        ("POST", "/switchover") => match server.switchover(now) {
            Ok(msg) => HttpResponse::json(
                200,
                &json!({"result": msg, "role": server.role(), "epoch": server.epoch()}),
            ),
            Err(e) => HttpResponse::json(409, &json!({"error": e})),
        },
        ("POST", "/reload") => match super::reload(server, config_path, now) {
            Ok(changes) => HttpResponse::json(
                200,
                &json!({"result": if changes.is_empty() { "nothing changed" } else { "reloaded" },
                        "changes": changes,
                        "config_digest": server.config_digest()}),
            ),
            Err(e) => HttpResponse::json(409, &json!({"error": e})),
        },
        ("POST", "/test/partition") => {
            let on = r.query.as_deref() != Some("off");
            match server.set_partition(on) {
                Ok(()) => HttpResponse::json(200, &json!({"partitioned": on})),
                Err(e) => HttpResponse::json(403, &json!({"error": e})),
            }
        }
        (
            _,
            "/status" | "/calls" | "/registrations" | "/trunks" | "/metrics" | "/health" | "/ready"
            | "/switchover" | "/reload",
        ) => HttpResponse::json(405, &json!({"error": "method not allowed"})),
        _ => HttpResponse::json(
            404,
            &json!({"error": format!("no such endpoint: {}", r.path)}),
        ),
    };
    let _ = q.reply.send(resp);
}
