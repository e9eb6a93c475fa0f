//! The admin API's routes, answered inside the event loop so every view is consistent.

use std::time::Instant;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::admin::http::{Handler, HttpRequest, HttpResponse};
use crate::server::Server;
use crate::transport::Transport;

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

/// Answer one admin request.
pub(crate) fn answer(server: &mut Server, transport: &Transport, now: Instant, q: AdminQuery) {
    let r = &q.request;
    let resp = match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/status") => HttpResponse::json(
            200,
            &server.status_json(
                now,
                json!({ "tcp_connections": transport.tcp_connections() }),
            ),
        ),
        ("GET", "/calls") => HttpResponse::json(200, &server.calls_json(now)),
        ("GET", "/registrations") => HttpResponse::json(200, &server.registrations_json(now)),
        ("GET", "/metrics") => {
            let m = server.metrics_text();
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
        ("POST", "/test/partition") => {
            let on = r.query.as_deref() != Some("off");
            match server.set_partition(on) {
                Ok(()) => HttpResponse::json(200, &json!({"partitioned": on})),
                Err(e) => HttpResponse::json(403, &json!({"error": e})),
            }
        }
        (_, "/status" | "/calls" | "/registrations" | "/metrics" | "/switchover") => {
            HttpResponse::json(405, &json!({"error": "method not allowed"}))
        }
        _ => HttpResponse::json(
            404,
            &json!({"error": format!("no such endpoint: {}", r.path)}),
        ),
    };
    let _ = q.reply.send(resp);
}
