//! Registering to a carrier: the client side of REGISTER (RFC 3261 §10.2) for a trunk with
//! `register = true`. Sans-IO: one [`TrunkRegistration`] per trunk builds the REGISTERs and
//! reads their final responses; the server sends them, and starts the machine only on the
//! active node of a pair (the new active registers its own address at a takeover, so that
//! the carrier's calls reach it).
//!
//! - 401/407: answered with the trunk's credentials (digest MD5 or SHA-256, `qop=auth` with
//!   a counted `nc`); a challenge to a REGISTER that carried credentials, unless `stale`,
//!   means they are wrong: failed, retried after the back-off.
//! - 2xx: registered for the expiry the registrar granted (our Contact's `expires`, else
//!   `Expires`, else what we asked); refreshed at half of it (at most 10 minutes early).
//! - 423: asked again with the registrar's `Min-Expires`.
//! - Other failures and timeouts: back-off 30 s doubling to 30 min, or the `Retry-After`.
//! - Stopping (shutdown, stepping down) sends `Expires: 0` when registered.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::{TrunkConfig, TrunkCredentials, TrunkRegister, TrunkTransport};
use crate::dialog::LocalContact;
use crate::net::{Flow, Proto};
use crate::sip::digest::{DigestParams, answer_challenge};
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, new_tag};

/// The first back-off after a failure; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(30);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(1800);

/// Where a registration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    /// Not registering: a stand-by, or stopped.
    Off,
    /// A REGISTER is due at `at` (the first, a refresh, or after a back-off).
    Due {
        /// When.
        at: Instant,
    },
    /// A REGISTER is out.
    Sent {
        /// It carries credentials.
        authed: bool,
        /// The expiry it asks for (0: un-registering).
        expires: u32,
    },
    /// Registered until `until`; the refresh goes at `refresh_at`.
    Registered {
        /// When the carrier forgets us.
        until: Instant,
        /// When we refresh.
        refresh_at: Instant,
    },
}

/// One trunk's outbound registration.
#[derive(Debug)]
pub struct TrunkRegistration {
    trunk: String,
    flow: Flow,
    /// The registrar's `host:port`, or the trunk's host name (Request-URI and AOR domain).
    host: String,
    /// The trunk's host name, when it is named by one (the flow then comes from DNS).
    named: Option<String>,
    creds: TrunkCredentials,
    settings: TrunkRegister,
    call_id: String,
    tag: String,
    cseq: u32,
    /// The nonce we answered last and how often (`nc`).
    nonce: Option<(String, u32)>,
    state: RegState,
    /// The expiry asked for next (raised by a 423).
    want_expires: u32,
    failures: u32,
    last_error: Option<String>,
    registered_count: u64,
}

impl TrunkRegistration {
    /// The registration of `trunk`, if it has `register = true`.
    pub fn new(trunk: &TrunkConfig) -> Option<Self> {
        let settings = trunk.register.clone()?;
        let creds = trunk.credentials.clone()?;
        let dest = trunk.target();
        let flow = match trunk.transport {
            TrunkTransport::Tcp => Flow::tcp(dest),
            TrunkTransport::Tls => Flow::tls(dest),
            TrunkTransport::Udp => Flow::udp(dest),
        };
        Some(Self {
            trunk: trunk.name.clone(),
            flow,
            host: trunk.host.clone().unwrap_or_else(|| dest.to_string()),
            named: trunk.host.clone(),
            want_expires: settings.expires,
            creds,
            settings,
            call_id: format!("treg-{:016x}", crate::entropy::random::<u64>()),
            tag: new_tag(),
            cseq: 0,
            nonce: None,
            state: RegState::Off,
            failures: 0,
            last_error: None,
            registered_count: 0,
        })
    }

    /// The trunk's name.
    pub fn trunk(&self) -> &str {
        &self.trunk
    }

    /// Where the REGISTERs go: the configured address, or for a trunk named by a host the
    /// first of `resolved` (its DNS targets, best first).
    pub fn flow(&self, resolved: &[std::net::SocketAddr]) -> Option<Flow> {
        match (&self.named, resolved.first()) {
            (None, _) => Some(self.flow),
            (Some(_), Some(a)) => Some(Flow {
                remote: *a,
                ..self.flow
            }),
            (Some(_), None) => None,
        }
    }

    /// The trunk's host name, when it has one.
    pub fn host_name(&self) -> Option<&str> {
        self.named.as_deref()
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The state.
    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// Whether the carrier has our contact now.
    pub fn is_registered(&self, now: Instant) -> bool {
        matches!(self.state, RegState::Registered { until, .. } if now < until)
    }

    /// Start registering (this node became active): a REGISTER is due now.
    pub fn start(&mut self, now: Instant) {
        if matches!(self.state, RegState::Off) {
            self.state = RegState::Due { at: now };
            self.failures = 0;
        }
    }

    /// Stop (shutdown, or this node is no longer active): the un-REGISTER to send, if the
    /// carrier has our contact.
    pub fn stop(&mut self, now: Instant, me: &LocalContact) -> Option<Request> {
        let registered = self.is_registered(now);
        self.state = RegState::Off;
        if !registered {
            return None;
        }
        let r = self.request(me, 0, None);
        // Still answering its challenge; Off once the registrar confirms.
        self.state = RegState::Sent {
            authed: false,
            expires: 0,
        };
        Some(r)
    }

    /// When [`Self::poll`] has something to do.
    pub fn next_wake(&self) -> Option<Instant> {
        match self.state {
            RegState::Due { at } => Some(at),
            RegState::Registered { refresh_at, .. } => Some(refresh_at),
            _ => None,
        }
    }

    /// The REGISTER due at `now`, if any.
    pub fn poll(&mut self, now: Instant, me: &LocalContact) -> Option<Request> {
        let due = match self.state {
            RegState::Due { at } => now >= at,
            RegState::Registered { refresh_at, .. } => now >= refresh_at,
            _ => false,
        };
        if !due {
            return None;
        }
        let expires = self.want_expires;
        let r = self.request(me, expires, None);
        self.state = RegState::Sent {
            authed: false,
            expires,
        };
        Some(r)
    }

    /// The final response to our REGISTER; returns the next REGISTER to send at once (the
    /// answer to a challenge, or the retry a 423 asks for).
    pub fn on_response(
        &mut self,
        now: Instant,
        me: &LocalContact,
        resp: &Response,
    ) -> Option<Request> {
        let RegState::Sent { authed, expires } = self.state else {
            return None;
        };
        match resp.status {
            200..=299 if expires == 0 => {
                self.state = RegState::Off;
                None
            }
            200..=299 => {
                let granted = self.granted(resp, me).unwrap_or(expires).max(1);
                let life = Duration::from_secs(u64::from(granted));
                let early = (life / 2).min(Duration::from_secs(600));
                self.state = RegState::Registered {
                    until: now + life,
                    refresh_at: now + life - early,
                };
                self.failures = 0;
                self.last_error = None;
                self.registered_count += 1;
                tracing::info!(trunk = self.trunk, expires = granted, "trunk registered");
                None
            }
            401 | 407 => {
                let name = if resp.status == 401 {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                let challenge = resp.headers.get(&name).unwrap_or_default().to_string();
                let proxy = resp.status == 407;
                match self.answer(&challenge, proxy, authed, expires, me) {
                    Ok(r) => {
                        self.state = RegState::Sent {
                            authed: true,
                            expires,
                        };
                        Some(r)
                    }
                    Err(why) => {
                        self.fail(now, why, None);
                        None
                    }
                }
            }
            423 => {
                let min = resp
                    .header_u32(&HeaderName::MinExpires)
                    .and_then(Result::ok);
                match min {
                    Some(m) if m > expires && m <= 86_400 => {
                        self.want_expires = m;
                        let r = self.request(me, m, None);
                        self.state = RegState::Sent {
                            authed: false,
                            expires: m,
                        };
                        Some(r)
                    }
                    _ => {
                        self.fail(now, "423 without a usable Min-Expires".into(), None);
                        None
                    }
                }
            }
            status => {
                let retry = resp
                    .header_u32(&HeaderName::RetryAfter)
                    .and_then(Result::ok)
                    .map(|s| Duration::from_secs(u64::from(s)));
                self.fail(now, format!("{status} {}", resp.reason), retry);
                None
            }
        }
    }

    /// The REGISTER could not go yet (the trunk's host name is not resolved): again in a
    /// second, not counted as a failure.
    pub fn retry_soon(&mut self, now: Instant) {
        if matches!(self.state, RegState::Sent { .. }) {
            self.state = RegState::Due {
                at: now + Duration::from_secs(1),
            };
        }
    }

    /// Our REGISTER got no final response.
    pub fn on_timeout(&mut self, now: Instant) {
        if matches!(self.state, RegState::Sent { .. }) {
            self.fail(now, "no answer (timeout)".into(), None);
        }
    }

    /// For `/trunks` and `/status`.
    pub fn view(&self, now: Instant) -> Value {
        let (state, expires_in) = match &self.state {
            RegState::Off => ("off", None),
            RegState::Due { .. } if self.failures > 0 => ("failed", None),
            RegState::Due { .. } => ("due", None),
            RegState::Sent { .. } => ("registering", None),
            RegState::Registered { until, .. } => (
                "registered",
                Some(until.saturating_duration_since(now).as_secs()),
            ),
        };
        json!({
            "state": state,
            "expires_in_s": expires_in,
            "failures": self.failures,
            "last_error": self.last_error,
            "registrations": self.registered_count,
        })
    }

    fn fail(&mut self, now: Instant, why: String, retry: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let backoff = retry.unwrap_or_else(|| {
            let exp = self.failures.saturating_sub(1).min(6);
            (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX)
        });
        tracing::warn!(
            trunk = self.trunk,
            error = why,
            retry_s = backoff.as_secs(),
            "trunk registration failed"
        );
        self.last_error = Some(why);
        self.state = RegState::Due { at: now + backoff };
    }

    /// The expiry the registrar granted our contact.
    fn granted(&self, resp: &Response, me: &LocalContact) -> Option<u32> {
        let ours = format!(
            "{}@{}",
            self.settings.contact_user,
            me.hostport(self.flow.proto)
        );
        for c in resp.headers.get_all(&HeaderName::Contact) {
            for one in c.split(',') {
                if one.contains(&ours)
                    && let Some(v) = one
                        .split(';')
                        .map(str::trim)
                        .find_map(|p| p.strip_prefix("expires="))
                {
                    return v.trim().parse().ok();
                }
            }
        }
        resp.header_u32(&HeaderName::Expires).and_then(Result::ok)
    }

    fn answer(
        &mut self,
        challenge: &str,
        proxy: bool,
        authed: bool,
        expires: u32,
        me: &LocalContact,
    ) -> Result<Request, String> {
        let params = DigestParams::parse(challenge)
            .ok_or_else(|| "challenge without digest parameters".to_string())?;
        let nonce = params.get("nonce").unwrap_or_default().to_string();
        let stale = params
            .get("stale")
            .is_some_and(|s| s.eq_ignore_ascii_case("true"));
        let realm = params.get("realm").unwrap_or_default();
        if let Some(want) = &self.creds.realm
            && want != realm
        {
            return Err(format!("challenged for realm {realm:?}, not {want:?}"));
        }
        if authed && !stale {
            return Err("credentials refused (wrong username or password?)".into());
        }
        let nc = match &mut self.nonce {
            Some((n, count)) if *n == nonce => {
                *count = count.saturating_add(1);
                *count
            }
            _ => {
                self.nonce = Some((nonce, 1));
                1
            }
        };
        let uri = format!("sip:{}", self.host);
        let value = answer_challenge(
            challenge,
            &self.creds.username,
            &self.creds.password,
            "REGISTER",
            &uri,
            nc,
            &new_tag(),
        )
        .ok_or_else(|| "a challenge we cannot answer (algorithm?)".to_string())?;
        let header = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        Ok(self.request(me, expires, Some((header, value))))
    }

    fn request(
        &mut self,
        me: &LocalContact,
        expires: u32,
        auth: Option<(HeaderName, String)>,
    ) -> Request {
        self.cseq = self.cseq.wrapping_add(1);
        let proto = self.flow.proto;
        let mut r = Request::new(Method::Register, format!("sip:{}", self.host));
        let aor = format!("<sip:{}@{}>", self.creds.username, self.host);
        let h = &mut r.headers;
        h.push(HeaderName::Via, me.via(proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, format!("{aor};tag={}", self.tag));
        h.push(HeaderName::To, aor);
        h.push(HeaderName::CallId, self.call_id.clone());
        h.push(HeaderName::CSeq, format!("{} REGISTER", self.cseq));
        let transport = match proto {
            Proto::Udp => "",
            Proto::Tcp => ";transport=tcp",
            Proto::Tls => ";transport=tls",
        };
        h.push(
            HeaderName::Contact,
            format!(
                "<sip:{}@{}{transport}>",
                self.settings.contact_user,
                me.hostport(proto)
            ),
        );
        h.push(HeaderName::Expires, expires.to_string());
        if let Some((name, value)) = auth {
            h.push(name, value);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrunkAddress;
    use crate::sip::digest::DigestServer;
    use crate::sip::response_to;

    fn trunk(password: &str) -> TrunkConfig {
        TrunkConfig {
            name: "carrier".into(),
            address: TrunkAddress {
                ip: "192.0.2.9".parse().unwrap(),
                port: Some(5060),
            },
            prefixes: vec!["9".into()],
            strip: 1,
            dialog_query: false,
            priority: 0,
            reset_event: None,
            transport: TrunkTransport::Udp,
            max_cps: None,
            credentials: Some(TrunkCredentials {
                username: "pbx1".into(),
                password: password.into(),
                realm: None,
            }),
            register: Some(TrunkRegister {
                expires: 600,
                contact_user: "pbx".into(),
            }),
            host: None,
        }
    }

    fn me() -> LocalContact {
        LocalContact {
            udp: "198.51.100.7:5060".into(),
            tcp: "198.51.100.7:5060".into(),
            tls: String::new(),
        }
    }

    /// The carrier's registrar: challenges, then checks the credentials (the real digest
    /// server), granting `grant` seconds.
    fn carrier(server: &mut DigestServer, req: &Request, grant: u32) -> Response {
        match req.headers.get(&HeaderName::Authorization) {
            None => {
                let mut r = response_to(req, 401, Some("c"));
                for ch in server.challenges(1000, false) {
                    r.headers.push(HeaderName::WwwAuthenticate, ch);
                }
                r
            }
            Some(creds) => match server.verify(1000, creds, "REGISTER", |_| Some("secret")) {
                Ok(_) => {
                    let mut r = response_to(req, 200, Some("c"));
                    let contact = req.headers.get(&HeaderName::Contact).unwrap_or_default();
                    r.headers
                        .push(HeaderName::Contact, format!("{contact};expires={grant}"));
                    r
                }
                Err(_) => {
                    let mut r = response_to(req, 401, Some("c"));
                    // The same nonce again: the credentials were wrong.
                    let ch = DigestParams::parse(
                        req.headers
                            .get(&HeaderName::Authorization)
                            .unwrap_or_default(),
                    )
                    .and_then(|p| p.get("nonce").map(str::to_string))
                    .unwrap_or_default();
                    r.headers.push(
                        HeaderName::WwwAuthenticate,
                        format!("Digest realm=\"carrier\", nonce=\"{ch}\", qop=\"auth\""),
                    );
                    r
                }
            },
        }
    }

    #[test]
    fn registers_with_digest_refreshes_and_unregisters() {
        let t0 = Instant::now();
        let mut server = DigestServer::new("carrier", b"k", 300);
        let mut reg = TrunkRegistration::new(&trunk("secret")).unwrap();
        assert!(reg.poll(t0, &me()).is_none(), "off until started");
        reg.start(t0);
        let r1 = reg.poll(t0, &me()).unwrap();
        assert_eq!(r1.uri, "sip:192.0.2.9:5060");
        assert_eq!(r1.headers.get(&HeaderName::Expires), Some("600"));
        let contact = r1.headers.get(&HeaderName::Contact).unwrap().to_string();
        assert_eq!(contact, "<sip:pbx@198.51.100.7:5060>");
        let r2 = reg
            .on_response(t0, &me(), &carrier(&mut server, &r1, 300))
            .expect("the challenge is answered");
        assert!(r2.headers.get(&HeaderName::Authorization).is_some());
        assert_eq!(r2.call_id().ok(), r1.call_id().ok(), "one Call-ID");
        assert!(r2.cseq().unwrap().seq > r1.cseq().unwrap().seq);
        assert!(
            reg.on_response(t0, &me(), &carrier(&mut server, &r2, 300))
                .is_none()
        );
        assert!(reg.is_registered(t0));
        // Granted 300 s (not the 600 asked): refreshed at 150 s.
        assert_eq!(reg.next_wake(), Some(t0 + Duration::from_secs(150)));
        assert!(reg.poll(t0 + Duration::from_secs(149), &me()).is_none());
        assert!(reg.poll(t0 + Duration::from_secs(150), &me()).is_some());
        let t1 = t0 + Duration::from_secs(151);
        reg.on_response(t1, &me(), &response_to(&r2, 200, Some("c")));
        let bye = reg.stop(t1, &me()).expect("un-REGISTER");
        assert_eq!(bye.headers.get(&HeaderName::Expires), Some("0"));
        // The registrar challenges the un-REGISTER too: answered, then off.
        let bye2 = reg
            .on_response(t1, &me(), &carrier(&mut server, &bye, 300))
            .expect("the un-REGISTER's challenge is answered");
        assert_eq!(bye2.headers.get(&HeaderName::Expires), Some("0"));
        assert!(bye2.headers.get(&HeaderName::Authorization).is_some());
        reg.on_response(t1, &me(), &response_to(&bye2, 200, Some("c")));
        assert_eq!(reg.state(), &RegState::Off);
        assert!(reg.stop(t1, &me()).is_none(), "nothing to remove twice");
    }

    #[test]
    fn a_wrong_password_fails_and_backs_off_instead_of_looping() {
        let t0 = Instant::now();
        let mut server = DigestServer::new("carrier", b"k", 300);
        let mut reg = TrunkRegistration::new(&trunk("wrong")).unwrap();
        reg.start(t0);
        let r1 = reg.poll(t0, &me()).unwrap();
        let r2 = reg
            .on_response(t0, &me(), &carrier(&mut server, &r1, 300))
            .unwrap();
        let again = reg.on_response(t0, &me(), &carrier(&mut server, &r2, 300));
        assert!(again.is_none(), "the same challenge is not answered twice");
        let v = reg.view(t0);
        assert_eq!(v["state"], "failed");
        assert!(
            v["last_error"]
                .as_str()
                .unwrap()
                .contains("credentials refused")
        );
        assert_eq!(reg.next_wake(), Some(t0 + BACKOFF_MIN));
        // The second failure waits twice as long.
        let r3 = reg.poll(t0 + BACKOFF_MIN, &me()).unwrap();
        let t1 = t0 + BACKOFF_MIN;
        reg.on_response(t1, &me(), &response_to(&r3, 403, None));
        assert_eq!(reg.next_wake(), Some(t1 + BACKOFF_MIN * 2));
    }

    #[test]
    fn retry_after_and_min_expires_are_honoured() {
        let t0 = Instant::now();
        let mut reg = TrunkRegistration::new(&trunk("secret")).unwrap();
        reg.start(t0);
        let r1 = reg.poll(t0, &me()).unwrap();
        let mut busy = response_to(&r1, 503, None);
        busy.headers.push(HeaderName::RetryAfter, "7");
        assert!(reg.on_response(t0, &me(), &busy).is_none());
        assert_eq!(reg.next_wake(), Some(t0 + Duration::from_secs(7)));
        let t1 = t0 + Duration::from_secs(7);
        let r2 = reg.poll(t1, &me()).unwrap();
        let mut brief = response_to(&r2, 423, None);
        brief.headers.push(HeaderName::MinExpires, "1200");
        let r3 = reg.on_response(t1, &me(), &brief).expect("asked again");
        assert_eq!(r3.headers.get(&HeaderName::Expires), Some("1200"));
        reg.on_timeout(t1);
        assert_eq!(reg.view(t1)["last_error"], "no answer (timeout)");
    }
}
