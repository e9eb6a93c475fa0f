//! The admin API: an HTTP/1.1 JSON interface on a separate (by default loopback) listener,
//! used by the CLI (`understudy status`, `calls`, `switchover`, `reload`) and by monitoring.
//!
//! [`http`] is the transport: server and client on hyper, with bearer-token checks. The
//! routes (`/status`, `/calls`, `/registrations`, `/metrics`, `POST /switchover`, `POST /reload`) live beside it.

pub mod http;

/// Render an admin API answer for a terminal (`understudy status`, `calls`, ...). Falls back
/// to the raw text when it is not the expected JSON.
pub fn render(path: &str, body: &str) -> String {
    use std::fmt::Write as _;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_string();
    };
    let mut s = String::new();
    match path {
        "/status" => {
            let _ = writeln!(
                s,
                "node {}  home role {}  role {}  epoch {}",
                field(&v, "node").as_str().unwrap_or("?"),
                field(&v, "home_role").as_str().unwrap_or("?"),
                field(&v, "role").as_str().unwrap_or("?"),
                field(&v, "epoch")
            );
            if let Some(p) = v.get("peer").filter(|p| !p.is_null()) {
                let _ = writeln!(
                    s,
                    "peer {}  state {}  last keep-alive {} ms ago  rtt {} ms  config {}",
                    field(p, "name").as_str().unwrap_or("?"),
                    field(p, "state").as_str().unwrap_or("?"),
                    field(p, "last_keepalive_age_ms"),
                    field(p, "rtt_ms"),
                    if field(&v, "config_match").as_bool() == Some(false) {
                        "MISMATCH"
                    } else {
                        "match"
                    }
                );
                if let Some(d) = v.get("config_differs").and_then(|d| d.as_array())
                    && !d.is_empty()
                {
                    let names: Vec<&str> = d.iter().filter_map(|x| x.as_str()).collect();
                    let _ = writeln!(
                        s,
                        "settings that differ from the peer's: {}",
                        names.join(", ")
                    );
                }
            } else {
                let _ = writeln!(s, "no peer (single node)");
            }
            let c = field(&v, "counts");
            let _ = write!(
                s,
                "calls {}  registrations {}  transactions {} client / {} server",
                field(c, "calls"),
                field(c, "registrations"),
                field(c, "client_transactions"),
                field(c, "server_transactions")
            );
        }
        "/calls" => {
            let calls = field(&v, "calls")
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let total = field(&v, "total").as_u64().unwrap_or(calls.len() as u64);
            let _ = writeln!(s, "{total} call(s)");
            if (calls.len() as u64) < total {
                let _ = writeln!(
                    s,
                    "(the first {} listed; /calls?offset= for more)",
                    calls.len()
                );
            }
            for c in calls {
                let _ = writeln!(
                    s,
                    "{}  {:<10} {:>5}s  {} -> {}{}",
                    field(c, "token").as_str().unwrap_or("?"),
                    field(c, "state").as_str().unwrap_or("?"),
                    field(c, "age_s"),
                    field(c, "caller").as_str().unwrap_or("?"),
                    field(c, "callee").as_str().unwrap_or("?"),
                    if field(c, "recovered").as_bool() == Some(true) {
                        "  (recovered)"
                    } else {
                        ""
                    }
                );
            }
        }
        "/registrations" => {
            for r in field(&v, "registrations").as_array().into_iter().flatten() {
                for c in field(r, "contacts").as_array().into_iter().flatten() {
                    let _ = writeln!(
                        s,
                        "{:<12} {}  expires in {}s  ({})",
                        field(r, "aor").as_str().unwrap_or("?"),
                        field(c, "contact").as_str().unwrap_or("?"),
                        field(c, "expires_in_s"),
                        field(c, "origin").as_str().unwrap_or("?")
                    );
                }
            }
        }
        _ => {
            let _ = write!(
                s,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
        }
    }
    s.trim_end().to_string()
}

/// `v[key]` without the indexing: `null` when `v` is not an object or has no such member.
fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    v.get(key).unwrap_or(&NULL)
}
