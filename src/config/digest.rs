//! The shared-configuration digest: SHA-256 over a canonical text of what both nodes of a
//! pair must agree on. The text is one `key=value` line per setting, values in Rust debug
//! form (strings quoted and escaped), so that no two configurations give the same text.

use std::fmt::Debug;

use sha2::{Digest, Sha256};

use super::Config;

/// Raised when the canonical text changes shape, so old and new nodes never compare equal
/// by accident.
const VERSION_LINE: &str = "understudy-shared-config v1\n";

/// Hex SHA-256 of [`canonical`].
pub(super) fn shared_digest(config: &Config) -> String {
    hex::encode(Sha256::digest(canonical(config).as_bytes()))
}

/// The canonical text of the shared settings.
fn canonical(config: &Config) -> String {
    let mut out = String::from(VERSION_LINE);
    let mut put = |key: &str, value: &dyn Debug| {
        out.push_str(key);
        out.push('=');
        out.push_str(&format!("{value:?}"));
        out.push('\n');
    };

    put("node.domain", &config.node.domain);
    match &config.pair {
        Some(pair) => {
            put("pair.mode", &pair.mode.as_str());
            put("pair.secret", &pair.secret);
        }
        None => put("pair", &"none"),
    }

    let r = &config.registrar;
    put("registrar.min_expires", &r.min_expires);
    put("registrar.max_expires", &r.max_expires);
    put("registrar.default_expires", &r.default_expires);
    put("registrar.realm", &config.realm());

    let t = &config.takeover;
    put("takeover.parallel", &t.parallel);
    put("takeover.query_timeout_ms", &t.query_timeout_ms);
    put("takeover.fallback", &t.fallback.as_str());

    let c = &config.calls;
    put("calls.session_expires_s", &c.session_expires_s);
    put("calls.min_se_s", &c.min_se_s);
    put("calls.max_calls", &c.max_calls);

    let t = &config.timers;
    put("timers.t1_ms", &t.t1_ms);
    put("timers.t2_ms", &t.t2_ms);
    put("timers.t4_ms", &t.t4_ms);

    put("media.mode", &config.media.mode.as_str());

    let mut users: Vec<_> = config.users.iter().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    put("users", &users.len());
    for u in users {
        put("user.name", &u.name);
        put("user.password", &u.password);
        put("user.contact", &u.contact);
        put("user.reset_event", &u.reset_event);
        put("user.priority", &u.priority);
    }

    put("trunks", &config.trunks.len());
    for t in &config.trunks {
        put("trunk.name", &t.name);
        put("trunk.address", &t.address.to_string());
        put("trunk.prefixes", &t.prefixes);
        put("trunk.strip", &t.strip);
        put("trunk.dialog_query", &t.dialog_query);
        put("trunk.priority", &t.priority);
        put("trunk.reset_event", &t.reset_event);
        put("trunk.transport", &t.transport.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_is_line_per_setting() {
        let text = canonical(&Config::builtin_default());
        assert!(text.starts_with(VERSION_LINE));
        assert!(text.contains("node.domain=\"pbx.local\"\n"));
        assert!(text.contains("user.name=\"alice\"\n"));
        assert!(!text.contains("understudy\"")); // the node name is not shared
    }
}
