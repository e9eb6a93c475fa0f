//! The admin API: an HTTP/1.1 JSON interface on a separate (by default loopback) listener,
//! used by the CLI (`understudy status`, `calls`, `switchover`) and by monitoring.
//!
//! [`http`] is the transport: a small server and client on tokio with bearer-token checks. The
//! routes (`/status`, `/calls`, `/registrations`, `/metrics`, `POST /switchover`) live beside it.

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
                v["node"].as_str().unwrap_or("?"),
                v["home_role"].as_str().unwrap_or("?"),
                v["role"].as_str().unwrap_or("?"),
                v["epoch"]
            );
            if let Some(p) = v.get("peer").filter(|p| !p.is_null()) {
                let _ = writeln!(
                    s,
                    "peer {}  state {}  last keep-alive {} ms ago  rtt {} ms  config {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?"),
                    p["last_keepalive_age_ms"],
                    p["rtt_ms"],
                    if v["config_match"].as_bool() == Some(false) {
                        "MISMATCH"
                    } else {
                        "match"
                    }
                );
            } else {
                let _ = writeln!(s, "no peer (single node)");
            }
            let c = &v["counts"];
            let _ = write!(
                s,
                "calls {}  registrations {}  transactions {} client / {} server",
                c["calls"], c["registrations"], c["client_transactions"], c["server_transactions"]
            );
        }
        "/calls" => {
            let calls = v["calls"].as_array().cloned().unwrap_or_default();
            let _ = writeln!(s, "{} call(s)", calls.len());
            for c in calls {
                let _ = writeln!(
                    s,
                    "{}  {:<10} {:>5}s  {} -> {}{}",
                    c["token"].as_str().unwrap_or("?"),
                    c["state"].as_str().unwrap_or("?"),
                    c["age_s"],
                    c["caller"].as_str().unwrap_or("?"),
                    c["callee"].as_str().unwrap_or("?"),
                    if c["recovered"].as_bool() == Some(true) {
                        "  (recovered)"
                    } else {
                        ""
                    }
                );
            }
        }
        "/registrations" => {
            for r in v["registrations"].as_array().cloned().unwrap_or_default() {
                for c in r["contacts"].as_array().cloned().unwrap_or_default() {
                    let _ = writeln!(
                        s,
                        "{:<12} {}  expires in {}s  ({})",
                        r["aor"].as_str().unwrap_or("?"),
                        c["contact"].as_str().unwrap_or("?"),
                        c["expires_in_s"],
                        c["origin"].as_str().unwrap_or("?")
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
