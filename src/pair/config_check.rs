//! Which shared settings differ between the two nodes of a pair.
//!
//! Every keep-alive carries a hash of the shared configuration (`X-Understudy-Config`); when
//! the peer's differs from ours, each node sends the other, on the state channel, its list of
//! settings with a keyed hash of each value ([`crate::config::Config::setting_digests`]), and
//! reports exactly which settings differ (`/status` `pair.config_differs`, one log line).
//! Values never travel: a hash keyed with the pair secret cannot be reversed to a password.
//!
//! Body of the exchange (on a signed pair `OPTIONS`, and in its answer):
//!
//! ```text
//! K\tv1
//! calls.max_calls\t3f1c0d9a2b7e4c55
//! user[alice].password\t9d0e7c1f4a2b3c8d
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The first line of a settings list.
const HEADER: &str = "K\tv1\n";

/// How long to wait for the peer's list before sending ours again (a peer of an older
/// version never answers with one).
const RESEND: Duration = Duration::from_secs(10);

/// At most this many setting names in the log line (all of them are in `/status`).
const LOGGED_NAMES: usize = 20;

/// The comparison of our shared settings with the peer's.
#[derive(Debug)]
pub struct ConfigCheck {
    /// Hash of our shared configuration (what keep-alives carry).
    digest: String,
    /// Our settings and the keyed hash of each value.
    settings: BTreeMap<String, String>,
    /// The peer configuration hash we last warned about.
    logged: Option<String>,
    /// We owe the peer our list (a new difference), not before this instant.
    send_at: Option<Instant>,
    /// Settings that differ, once the peer's list arrived.
    differs: Vec<String>,
}

impl ConfigCheck {
    /// A check of `settings` (with `digest`, their overall hash) against the peer's.
    pub fn new(digest: String, settings: BTreeMap<String, String>) -> Self {
        Self {
            digest,
            settings,
            logged: None,
            send_at: None,
            differs: Vec::new(),
        }
    }

    /// Our configuration hash.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether `theirs` (a peer's configuration hash) is ours.
    pub fn matches(&self, theirs: &str) -> bool {
        theirs == self.digest
    }

    /// The peer `node` announced configuration hash `theirs`.
    pub fn observe(&mut self, now: Instant, node: &str, theirs: &str) {
        if self.matches(theirs) {
            if self.logged.take().is_some() {
                tracing::info!(peer = node, "pair: configuration matches the peer's again");
            }
            self.differs.clear();
            self.send_at = None;
            return;
        }
        if self.logged.as_deref() != Some(theirs) {
            tracing::warn!(
                peer = node,
                ours = self.digest,
                theirs,
                "pair: configuration differs from the peer's; comparing setting by setting"
            );
            self.logged = Some(theirs.to_string());
            self.differs.clear();
            self.send_at = Some(now);
        }
    }

    /// Our list, when it is due for the peer; the next one waits [`RESEND`] unless the
    /// peer's list arrives first.
    pub fn poll_send(&mut self, now: Instant) -> Option<String> {
        if self.send_at.is_some_and(|t| t <= now) {
            self.send_at = Some(now + RESEND);
            return Some(self.body());
        }
        None
    }

    /// Our settings list, as sent.
    pub fn body(&self) -> String {
        let mut out = String::from(HEADER);
        for (k, v) in &self.settings {
            if k.contains(['\t', '\n']) {
                continue;
            }
            out.push_str(k);
            out.push('\t');
            out.push_str(v);
            out.push('\n');
        }
        out
    }

    /// Whether `text` is a settings list.
    pub fn is_list(text: &str) -> bool {
        text.starts_with(HEADER)
    }

    /// The peer's list arrived: work out which settings differ, and say so once.
    pub fn on_list(&mut self, text: &str) {
        let Some(rest) = text.strip_prefix(HEADER) else {
            return;
        };
        let theirs: BTreeMap<&str, &str> = rest
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let mut differs: Vec<String> = Vec::new();
        for (k, v) in &self.settings {
            match theirs.get(k.as_str()) {
                Some(t) if *t == v => {}
                Some(_) => differs.push(k.clone()),
                None => differs.push(format!("{k} (not on the peer)")),
            }
        }
        for k in theirs.keys() {
            if !self.settings.contains_key(*k) {
                differs.push(format!("{k} (only on the peer)"));
            }
        }
        self.send_at = None;
        if differs != self.differs {
            let shown: Vec<&str> = differs
                .iter()
                .take(LOGGED_NAMES)
                .map(String::as_str)
                .collect();
            tracing::warn!(
                count = differs.len(),
                settings = shown.join(", "),
                "pair: these settings differ from the peer's"
            );
        }
        self.differs = differs;
    }

    /// Settings that differ (empty while the configurations match or the peer's list has
    /// not arrived).
    pub fn differs(&self) -> &[String] {
        &self.differs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_difference_is_named_setting_by_setting() {
        let t0 = Instant::now();
        let mut a = ConfigCheck::new(
            "A".into(),
            settings(&[("calls.max_calls", "1"), ("user[alice].password", "2")]),
        );
        let mut b = ConfigCheck::new(
            "B".into(),
            settings(&[
                ("calls.max_calls", "1"),
                ("user[alice].password", "3"),
                ("user[bob].password", "4"),
            ]),
        );
        assert_eq!(a.poll_send(t0), None);
        a.observe(t0, "b", "B");
        let body = a.poll_send(t0).expect("our list is due");
        assert_eq!(a.poll_send(t0 + Duration::from_secs(1)), None);
        b.on_list(&body);
        assert_eq!(
            b.differs(),
            [
                "user[alice].password",
                "user[bob].password (not on the peer)"
            ]
        );
        a.on_list(&b.body());
        assert_eq!(
            a.differs(),
            [
                "user[alice].password",
                "user[bob].password (only on the peer)"
            ]
        );
        // The peer's list arrived: nothing more to send; matching again clears the report.
        assert_eq!(a.poll_send(t0 + RESEND), None);
        a.observe(t0 + RESEND, "b", "A");
        assert!(a.differs().is_empty());
    }

    #[test]
    fn a_silent_peer_gets_our_list_again_later() {
        let t0 = Instant::now();
        let mut a = ConfigCheck::new("A".into(), settings(&[("x", "1")]));
        a.observe(t0, "b", "B");
        assert!(a.poll_send(t0).is_some());
        assert!(
            a.poll_send(t0 + RESEND - Duration::from_millis(1))
                .is_none()
        );
        assert!(a.poll_send(t0 + RESEND).is_some());
        assert!(!ConfigCheck::is_list("D\t1"));
        // A garbled list names nothing it cannot read, and panics on nothing.
        a.on_list("K\tv1\nno-tab-here\n\t\n");
        assert_eq!(a.differs(), ["x (not on the peer)"]);
    }
}
