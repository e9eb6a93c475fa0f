//! The registrar (RFC 3261 §10.3): REGISTER with digest challenges, bindings with expiry,
//! `423 Interval Too Brief`, wildcard removal, static bindings, and the credential check the
//! B2BUA uses for INVITEs (407). Sans-IO: time is passed in.

mod location;
pub mod reginfo;

#[cfg(test)]
pub(crate) mod tests;

use crate::entropy::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use location::{Binding, Change, Location, Origin};

use crate::net::Flow;
use crate::sip::digest::{AuthError, DigestServer};
use crate::sip::{HeaderName, NameAddr, Request, Response, SipMessage, new_tag, response_to};

/// Registrar settings (from `[registrar]` and `[node]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Digest realm.
    pub realm: String,
    /// Shortest accepted registration (`423` below).
    pub min_expires: u32,
    /// Longest granted registration (longer requests are shortened).
    pub max_expires: u32,
    /// Granted when the REGISTER names none.
    pub default_expires: u32,
    /// Secret for nonce signatures.
    pub nonce_secret: Vec<u8>,
    /// Nonce lifetime in seconds.
    pub nonce_lifetime_s: u64,
    /// Failed credential checks from one source address before it gets only 403s.
    pub max_auth_failures: u32,
    /// Digest algorithms offered in challenges, in order.
    pub algorithms: Vec<crate::sip::digest::Algorithm>,
    /// Bindings one AOR may hold (`limits.contacts_per_aor`); one more replaces the oldest.
    pub max_contacts_per_aor: usize,
}

/// Source addresses whose failed credential checks are remembered. A flood from many
/// (spoofed) addresses cannot grow the table beyond this: the oldest entry makes room.
pub const MAX_FAILURE_SOURCES: usize = 10_000;

/// The result of checking a request's credentials.
#[derive(Debug)]
pub enum AuthOutcome {
    /// Authenticated as this user.
    Authenticated(String),
    /// Answer with this response (401/407 challenge, or 403).
    Reject(Response),
}

/// The registrar.
#[derive(Debug)]
pub struct Registrar {
    settings: Settings,
    location: Location,
    digest: DigestServer,
    users: HashMap<String, String>,
    failures: HashMap<IpAddr, (u32, Instant)>,
    /// Registrations accepted, refused, removed: for metrics.
    pub stats: Stats,
}

/// Registrar counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// REGISTERs answered 200.
    pub accepted: u64,
    /// Challenges sent.
    pub challenged: u64,
    /// 403s sent.
    pub forbidden: u64,
    /// Failure records dropped because [`MAX_FAILURE_SOURCES`] was reached.
    pub failure_sources_evicted: u64,
}

impl Registrar {
    /// A registrar for these users (`name`, `password`).
    pub fn new<'a>(
        settings: Settings,
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut digest = DigestServer::new(
            &settings.realm,
            &settings.nonce_secret,
            settings.nonce_lifetime_s,
        );
        digest.set_algorithms(settings.algorithms.clone());
        Self {
            users: users
                .into_iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            location: Location::with_limit(settings.max_contacts_per_aor),
            settings,
            digest,
            failures: HashMap::default(),
            stats: Stats::default(),
        }
    }

    /// Source addresses with failed credential checks on record.
    pub fn failure_sources(&self) -> usize {
        self.failures.len()
    }

    /// Replace the configured users (a reloaded configuration). A user no longer configured
    /// loses every binding, static or registered; the names of those users are returned.
    pub fn set_users<'a>(
        &mut self,
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<String> {
        let new: HashMap<String, String> = users
            .into_iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        let mut gone: Vec<String> = self
            .users
            .keys()
            .filter(|u| !new.contains_key(*u))
            .cloned()
            .collect();
        gone.sort();
        for u in &gone {
            self.location.remove_aor(u);
        }
        self.users = new;
        gone
    }

    /// Whether `name` is a configured user.
    pub fn is_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// The location service.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The location service, mutably (peer-learned bindings are added through it).
    pub fn location_mut(&mut self) -> &mut Location {
        &mut self.location
    }

    /// Add a static binding from configuration.
    pub fn add_static(&mut self, user: &str, contact: &str, now: Instant) -> Result<(), String> {
        let contact = NameAddr::parse(contact).map_err(|e| format!("{contact}: {e}"))?;
        self.location.bind(
            user,
            Binding {
                contact,
                expires_at: Location::far_future(now),
                source: None,
                call_id: String::new(),
                cseq: 0,
                origin: Origin::Static,
                registered_at_s: 0,
            },
        );
        Ok(())
    }

    /// Check credentials (`Authorization` for REGISTER, `Proxy-Authorization` otherwise).
    pub fn authenticate(
        &mut self,
        now: Instant,
        now_s: u64,
        req: &Request,
        source: Flow,
        proxy: bool,
    ) -> AuthOutcome {
        let (cred_header, challenge_header, status) = if proxy {
            (
                HeaderName::ProxyAuthorization,
                HeaderName::ProxyAuthenticate,
                407,
            )
        } else {
            (HeaderName::Authorization, HeaderName::WwwAuthenticate, 401)
        };
        let ip = source.remote.ip();
        if let Some(&(n, since)) = self.failures.get(&ip)
            && n >= self.settings.max_auth_failures
            && now.duration_since(since) < Duration::from_secs(60)
        {
            self.stats.forbidden += 1;
            return AuthOutcome::Reject(self.reply(req, 403, "Too Many Failed Attempts"));
        }
        let mut last = AuthError::Missing;
        let realm = self.settings.realm.clone();
        for creds in req.headers.get_all(&cred_header) {
            let users = &self.users;
            match self.digest.verify(now_s, creds, req.method.as_str(), |u| {
                users.get(u).map(String::as_str)
            }) {
                Ok(user) => {
                    self.failures.remove(&ip);
                    return AuthOutcome::Authenticated(user);
                }
                Err(AuthError::Missing) => {}
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        match last {
            AuthError::Missing | AuthError::Stale | AuthError::BadNonce => {
                let stale = last == AuthError::Stale;
                self.stats.challenged += 1;
                let mut r = self.reply(req, status, "");
                for c in self.digest.challenges(now_s, stale) {
                    r.headers.push(challenge_header.clone(), c);
                }
                tracing::debug!(realm, %ip, reason = %last, "digest challenge");
                AuthOutcome::Reject(r)
            }
            e => {
                if !self.failures.contains_key(&ip) && self.failures.len() >= MAX_FAILURE_SOURCES {
                    let oldest = self
                        .failures
                        .iter()
                        .min_by_key(|(_, (_, since))| *since)
                        .map(|(k, _)| *k);
                    if let Some(k) = oldest {
                        self.failures.remove(&k);
                        self.stats.failure_sources_evicted += 1;
                    }
                }
                let entry = self.failures.entry(ip).or_insert((0, now));
                entry.0 += 1;
                entry.1 = now;
                self.stats.forbidden += 1;
                tracing::info!(%ip, reason = %e, "authentication failed");
                AuthOutcome::Reject(self.reply(req, 403, "Forbidden"))
            }
        }
    }

    fn reply(&self, req: &Request, status: u16, reason: &str) -> Response {
        let tag = new_tag();
        let mut r = response_to(req, status, Some(&tag));
        if !reason.is_empty() {
            r.reason = reason.to_string();
        }
        r
    }

    /// Handle a REGISTER (the transaction layer has already validated it).
    pub fn handle_register(
        &mut self,
        now: Instant,
        now_s: u64,
        req: &Request,
        source: Flow,
    ) -> Response {
        let Ok(to) = req.to() else {
            return self.reply(req, 400, "Bad To");
        };
        let Some(aor) = to.uri.user_unescaped() else {
            return self.reply(req, 404, "Not Found");
        };
        if !self.users.contains_key(&aor) {
            // Same answer as a wrong password: do not reveal which users exist.
            return match self.authenticate(now, now_s, req, source, false) {
                AuthOutcome::Reject(r) => r,
                AuthOutcome::Authenticated(_) => self.reply(req, 403, "Forbidden"),
            };
        }
        let user = match self.authenticate(now, now_s, req, source, false) {
            AuthOutcome::Authenticated(u) => u,
            AuthOutcome::Reject(r) => return r,
        };
        if user != aor {
            self.stats.forbidden += 1;
            return self.reply(req, 403, "Credentials Do Not Match To");
        }
        let header_expires = match req.header_u32(&HeaderName::Expires) {
            Some(Ok(e)) => Some(e),
            Some(Err(_)) => return self.reply(req, 400, "Bad Expires"),
            None => None,
        };
        let call_id = req.call_id().unwrap_or_default().to_string();
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let star = req
            .headers
            .get(&HeaderName::Contact)
            .is_some_and(|c| c.trim() == "*");
        if star {
            if header_expires != Some(0) || req.headers.count(&HeaderName::Contact) != 1 {
                return self.reply(req, 400, "Wildcard Contact Needs Expires 0");
            }
            self.location.unbind_all(&aor);
        } else {
            let contacts = match req.contacts() {
                Ok(c) => c,
                Err(e) => return self.reply(req, 400, &e.to_string()),
            };
            // First pass: 423 if any requested interval is too brief (RFC 3261 §10.3 step 7).
            for c in &contacts {
                let e = c
                    .params
                    .value("expires")
                    .and_then(|v| v.parse::<u32>().ok())
                    .or(header_expires)
                    .unwrap_or(self.settings.default_expires);
                if e != 0 && e < self.settings.min_expires {
                    let mut r = self.reply(req, 423, "Interval Too Brief");
                    r.headers.push(
                        HeaderName::MinExpires,
                        self.settings.min_expires.to_string(),
                    );
                    return r;
                }
            }
            for mut c in contacts {
                let e = c
                    .params
                    .value("expires")
                    .and_then(|v| v.parse::<u32>().ok())
                    .or(header_expires)
                    .unwrap_or(self.settings.default_expires)
                    .min(self.settings.max_expires);
                let uri = c.uri.to_string();
                if e == 0 {
                    self.location.unbind(&aor, &uri);
                    continue;
                }
                c.params.remove("expires");
                self.location.bind(
                    &aor,
                    Binding {
                        contact: c,
                        expires_at: now + Duration::from_secs(u64::from(e)),
                        source: Some(source),
                        call_id: call_id.clone(),
                        cseq,
                        origin: Origin::Local,
                        registered_at_s: now_s,
                    },
                );
            }
        }
        self.stats.accepted += 1;
        let mut r = self.reply(req, 200, "OK");
        for b in self.location.lookup(&aor, now) {
            let mut c = b.contact.clone();
            c.params
                .set("expires", Some(&b.remaining(now).max(1).to_string()));
            r.headers.push(HeaderName::Contact, c.to_string());
        }
        r
    }

    /// Housekeeping: expire bindings, forget old nonces and failure counts.
    pub fn expire(&mut self, now: Instant, now_s: u64) {
        self.location.expire(now);
        self.digest.expire(now_s);
        self.failures
            .retain(|_, (_, since)| now.duration_since(*since) < Duration::from_secs(300));
    }
}
