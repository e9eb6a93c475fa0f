//! The shared-configuration digest: SHA-256 over a canonical text of what both nodes of a
//! pair must agree on. The text is one `key=value` line per setting, values in Rust debug
//! form (strings quoted and escaped), so that no two configurations give the same text.

use std::collections::BTreeMap;
use std::fmt::Debug;

use hmac::{Hmac, Mac};
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
    walk(config, &mut |key, _item, value| {
        out.push_str(key);
        out.push('=');
        out.push_str(&format!("{value:?}"));
        out.push('\n');
    });
    out
}

/// Every shared setting under a key that names its item (`user[alice].password`,
/// `trunk[carrier].address`, `calls.max_calls`), with a keyed hash of its value (HMAC-SHA-256
/// with the pair secret, 16 hex digits): two nodes can tell exactly which settings differ
/// without showing each other (or the path) a password.
pub(super) fn setting_digests(config: &Config, secret: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |key: &str, item: Option<&str>, value: &dyn Debug| {
        let name = match (item, key.split_once('.')) {
            (Some(item), Some((kind, field))) => format!("{kind}[{item}].{field}"),
            _ => key.to_string(),
        };
        let text = format!("{value:?}");
        let hash = Hmac::<Sha256>::new_from_slice(secret)
            .map(|mut m| {
                m.update(text.as_bytes());
                hex::encode(m.finalize().into_bytes())
            })
            .unwrap_or_default();
        out.insert(name, hash.chars().take(16).collect());
    };
    walk(config, &mut put);
    let order: Vec<&str> = config.trunks.iter().map(|t| t.name.as_str()).collect();
    put("trunks.order", None, &order);
    out
}

/// Receives one setting: its canonical key, the user or trunk it belongs to, its value.
type Put<'a> = dyn FnMut(&str, Option<&str>, &dyn Debug) + 'a;

/// Call `put(key, item, value)` for every shared setting, in canonical order.
fn walk(config: &Config, put: &mut Put<'_>) {
    put("node.domain", None, &config.node.domain);
    match &config.pair {
        Some(pair) => {
            put("pair.mode", None, &pair.mode.as_str());
            put("pair.secret", None, &pair.secret);
        }
        None => put("pair", None, &"none"),
    }

    let r = &config.registrar;
    put("registrar.min_expires", None, &r.min_expires);
    put("registrar.max_expires", None, &r.max_expires);
    put("registrar.default_expires", None, &r.default_expires);
    put("registrar.realm", None, &config.realm());

    let t = &config.takeover;
    put("takeover.parallel", None, &t.parallel);
    put("takeover.query_timeout_ms", None, &t.query_timeout_ms);
    put("takeover.fallback", None, &t.fallback.as_str());

    let c = &config.calls;
    put("calls.session_expires_s", None, &c.session_expires_s);
    put("calls.min_se_s", None, &c.min_se_s);
    put("calls.max_calls", None, &c.max_calls);

    let t = &config.timers;
    put("timers.t1_ms", None, &t.t1_ms);
    put("timers.t2_ms", None, &t.t2_ms);
    put("timers.t4_ms", None, &t.t4_ms);

    put("media.mode", None, &config.media.mode.as_str());

    let mut users: Vec<_> = config.users.iter().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    put("users", None, &users.len());
    for u in users {
        let me = Some(u.name.as_str());
        put("user.name", me, &u.name);
        put("user.password", me, &u.password);
        put("user.contact", me, &u.contact);
        put("user.reset_event", me, &u.reset_event);
        put("user.priority", me, &u.priority);
    }

    put("trunks", None, &config.trunks.len());
    for t in &config.trunks {
        let me = Some(t.name.as_str());
        put("trunk.name", me, &t.name);
        put("trunk.address", me, &t.address_text());
        put("trunk.prefixes", me, &t.prefixes);
        put("trunk.strip", me, &t.strip);
        put("trunk.dialog_query", me, &t.dialog_query);
        put("trunk.priority", me, &t.priority);
        put("trunk.reset_event", me, &t.reset_event);
        put("trunk.transport", me, &t.transport.as_str());
    }
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

    #[test]
    fn setting_digests_name_the_item_and_hide_the_value() {
        let mut cfg = Config::builtin_default();
        let a = setting_digests(&cfg, b"k");
        assert!(a.contains_key("user[alice].password"));
        assert!(a.contains_key("calls.max_calls"));
        let pw = cfg
            .users
            .first()
            .map(|u| u.password.clone())
            .unwrap_or_default();
        assert!(!a.values().any(|h| h.contains(&pw)));
        if let Some(u) = cfg.users.first_mut() {
            u.password.push('x');
        }
        let b = setting_digests(&cfg, b"k");
        let differ: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
        let name = cfg
            .users
            .first()
            .map(|u| u.name.clone())
            .unwrap_or_default();
        assert_eq!(differ, vec![&format!("user[{name}].password")]);
        // The canonical text is what it was before the walker (wave-1 peers compare it).
        assert!(canonical(&cfg).contains("\nuser.password="));
    }
}
