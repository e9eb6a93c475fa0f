//! Applying a re-read configuration file (`understudy reload`, `POST /reload`, SIGHUP).
//!
//! Users, trunks (with their prefixes: the dial plan), `[calls]` and `[takeover]` take effect
//! at once; the keep-alives then carry the new configuration hash, so the peer sees whether
//! the two nodes agree again (`pair::config_check`). Anything else — addresses, the pair,
//! timers, limits, registrar, media, admin, state, CDR — is read at start only: a file that
//! changes it is refused whole, naming the section, and nothing changes.

use std::sync::Arc;
use std::time::Instant;

use super::Server;
use crate::config::Config;
use crate::pair::config_check::ConfigCheck;

/// What a reload changed, by section (`users +zed -bob ~alice`, `trunks`, `calls`).
pub type Changes = Vec<String>;

impl Server {
    /// Apply `new`, a re-read configuration; an error names the section that needs a
    /// restart, and then nothing was changed.
    pub fn reload(&mut self, now: Instant, new: Config) -> Result<Changes, String> {
        let old = &self.cfg;
        let fixed = [
            ("node", old.node != new.node),
            ("admin", old.admin != new.admin),
            ("state", old.state != new.state),
            ("pair", old.pair != new.pair),
            ("registrar", old.registrar != new.registrar),
            ("timers", old.timers != new.timers),
            ("limits", old.limits != new.limits),
            ("media", old.media != new.media),
            ("cdr", old.cdr != new.cdr),
        ];
        if let Some((section, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(format!(
                "[{section}] changed: it is read at start only; restart the node to apply it \
                 (nothing was reloaded)"
            ));
        }
        let mut changes = Changes::new();
        let users = user_changes(old, &new);
        if !users.is_empty() {
            changes.push(format!("users {}", users.join(" ")));
        }
        for (section, changed) in [
            ("trunks", old.trunks != new.trunks),
            ("calls", old.calls != new.calls),
            ("takeover", old.takeover != new.takeover),
        ] {
            if changed {
                changes.push(section.to_string());
            }
        }
        if changes.is_empty() {
            return Ok(changes);
        }
        // Static contacts: those that changed or went away are unbound, the new ones bound.
        for u in &old.users {
            let kept = new.user(&u.name).map(|n| &n.contact);
            if let Some(c) = &u.contact
                && kept != Some(&u.contact)
            {
                let uri = crate::sip::NameAddr::parse(c)
                    .map(|n| n.uri.to_string())
                    .unwrap_or_else(|_| c.clone());
                self.registrar.location_mut().unbind(&u.name, &uri);
            }
        }
        self.registrar.set_users(
            new.users
                .iter()
                .map(|u| (u.name.as_str(), u.password.as_str())),
        );
        for u in &new.users {
            if let Some(c) = &u.contact
                && let Err(e) = self.registrar.add_static(&u.name, c, now)
            {
                tracing::warn!(user = u.name, error = e, "static contact ignored");
            }
        }
        self.config_digest = new.shared_digest();
        if let (Some(p), Some(pc)) = (self.pair.as_mut(), new.pair.as_ref()) {
            p.config = ConfigCheck::new(
                self.config_digest.clone(),
                new.setting_digests(pc.secret.as_bytes()),
            );
        }
        self.cfg = Arc::new(new);
        tracing::info!(changes = changes.join("; "), "configuration reloaded");
        Ok(changes)
    }
}

/// `+name` for a user added, `-name` for one removed, `~name` for one changed.
fn user_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for u in &new.users {
        match old.user(&u.name) {
            None => out.push(format!("+{}", u.name)),
            Some(o) if o != u => out.push(format!("~{}", u.name)),
            Some(_) => {}
        }
    }
    for u in &old.users {
        if new.user(&u.name).is_none() {
            out.push(format!("-{}", u.name));
        }
    }
    out
}
