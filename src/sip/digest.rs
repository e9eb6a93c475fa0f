//! HTTP digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 8760): MD5 and SHA-256,
//! `qop=auth`, server nonces that expire and cannot be replayed.

use crate::entropy::HashMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::params::split_outside_quotes;

/// Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (RFC 2617).
    Md5,
    /// SHA-256 (RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token used in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Parse an algorithm token (`MD5`, `SHA-256`).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Self::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Self::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Self::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// The parameters of a `Digest` challenge or credentials header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestParams(HashMap<String, String>);

impl DigestParams {
    /// Parse `Digest a="b", c=d`. Returns `None` for other schemes.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(|c: char| c.is_ascii_whitespace())?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut map = HashMap::default();
        for part in split_outside_quotes(rest, ',') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            map.insert(k.trim().to_ascii_lowercase(), v.to_string());
        }
        Some(Self(map))
    }

    /// A parameter.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// The algorithm (MD5 when absent, RFC 2617 §3.2.1); `None` when unsupported.
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self.get("algorithm") {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        }
    }
}

/// Compute a digest `response` (RFC 2617 §3.2.2 with qop=auth, or RFC 2069 without qop).
#[allow(clippy::too_many_arguments)]
pub fn compute_response(
    alg: Algorithm,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = alg.hash(&format!("{user}:{realm}:{password}"));
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => alg.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => alg.hash(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Build the `Authorization`/`Proxy-Authorization` value that answers a challenge (UAC side).
pub fn answer_challenge(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> Option<String> {
    let ch = DigestParams::parse(challenge)?;
    let alg = ch.algorithm()?;
    let realm = ch.get("realm").unwrap_or("");
    let nonce = ch.get("nonce")?;
    let use_qop = ch
        .get("qop")
        .is_some_and(|q| q.split(',').any(|t| t.trim() == "auth"));
    let ncs = format!("{nc:08x}");
    let resp = compute_response(
        alg,
        user,
        realm,
        password,
        method,
        uri,
        nonce,
        use_qop.then_some((ncs.as_str(), cnonce)),
    );
    let mut out = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}",
        alg.as_str()
    );
    if use_qop {
        let _ = write!(out, ", qop=auth, nc={ncs}, cnonce=\"{cnonce}\"");
    }
    if let Some(o) = ch.get("opaque") {
        let _ = write!(out, ", opaque=\"{o}\"");
    }
    Some(out)
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials for our realm: challenge.
    #[error("no credentials")]
    Missing,
    /// The nonce is ours but too old: challenge again with `stale=true`.
    #[error("stale nonce")]
    Stale,
    /// The nonce was not issued by us, or its nonce-count was already used.
    #[error("nonce not issued here or replayed")]
    BadNonce,
    /// The username is unknown.
    #[error("unknown user")]
    UnknownUser,
    /// The response does not match the password.
    #[error("wrong password")]
    WrongPassword,
    /// Malformed or unsupported parameters.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
}

/// Issues nonces and verifies credentials. Nonces are `<issued-at>.<hmac>` so any node with
/// the same secret can verify them; nonce counts are remembered until the nonce expires, so a
/// replayed request (same nonce and nc) is refused.
#[derive(Debug)]
pub struct DigestServer {
    realm: String,
    secret: Vec<u8>,
    lifetime_s: u64,
    algorithms: Vec<Algorithm>,
    counter: u64,
    seen: HashMap<String, (u64, u32)>,
}

impl DigestServer {
    /// A verifier for `realm`, with nonces valid `lifetime_s` seconds.
    pub fn new(realm: &str, secret: &[u8], lifetime_s: u64) -> Self {
        Self {
            realm: realm.to_string(),
            secret: secret.to_vec(),
            lifetime_s,
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            counter: crate::entropy::random::<u32>().into(),
            seen: HashMap::default(),
        }
    }

    /// Offer these algorithms, in this order, in challenges.
    pub fn set_algorithms(&mut self, algorithms: Vec<Algorithm>) {
        if !algorithms.is_empty() {
            self.algorithms = algorithms;
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn sign(&self, issued: u64, serial: u64) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(format!("{issued:x}.{serial:x}").as_bytes());
        let tag = mac.finalize().into_bytes();
        let Some(truncated) = tag.first_chunk::<12>() else {
            return String::new();
        };
        hex::encode(truncated)
    }

    /// A fresh, unique nonce at `now_s` (seconds since the Unix epoch):
    /// `<issued>.<serial>.<signature>`.
    pub fn nonce(&mut self, now_s: u64) -> String {
        self.counter = self.counter.wrapping_add(1);
        format!(
            "{now_s:x}.{:x}.{}",
            self.counter,
            self.sign(now_s, self.counter)
        )
    }

    /// The `WWW-Authenticate`/`Proxy-Authenticate` values, one per configured algorithm in
    /// order of preference (RFC 8760 §2.4), all with the same nonce.
    pub fn challenges(&mut self, now_s: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_s);
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
                    self.realm,
                    a.as_str()
                )
            })
            .collect()
    }

    /// Verify credentials for `method`. `password_of` looks up a user's password.
    pub fn verify<'p>(
        &mut self,
        now_s: u64,
        creds: &str,
        method: &str,
        password_of: impl Fn(&str) -> Option<&'p str>,
    ) -> Result<String, AuthError> {
        let p = DigestParams::parse(creds).ok_or(AuthError::Missing)?;
        if p.get("realm") != Some(self.realm.as_str()) {
            return Err(AuthError::Missing);
        }
        let alg = p.algorithm().ok_or(AuthError::Malformed("algorithm"))?;
        let user = p.get("username").ok_or(AuthError::Malformed("username"))?;
        let nonce = p.get("nonce").ok_or(AuthError::Malformed("nonce"))?;
        let uri = p.get("uri").ok_or(AuthError::Malformed("uri"))?;
        let response = p.get("response").ok_or(AuthError::Malformed("response"))?;
        let mut parts = nonce.splitn(3, '.');
        let (Some(issued_hex), Some(serial_hex), Some(sig)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::BadNonce);
        };
        let issued = u64::from_str_radix(issued_hex, 16).map_err(|_| AuthError::BadNonce)?;
        let serial = u64::from_str_radix(serial_hex, 16).map_err(|_| AuthError::BadNonce)?;
        // Constant-time comparisons: timing must not reveal how much of a guess was right.
        if !bool::from(sig.as_bytes().ct_eq(self.sign(issued, serial).as_bytes()))
            || issued > now_s.saturating_add(5)
        {
            return Err(AuthError::BadNonce);
        }
        let password = password_of(user).ok_or(AuthError::UnknownUser)?;
        let qop = match p.get("qop") {
            Some("auth") => {
                let nc = p.get("nc").ok_or(AuthError::Malformed("nc"))?;
                let cnonce = p.get("cnonce").ok_or(AuthError::Malformed("cnonce"))?;
                Some((nc, cnonce))
            }
            Some(_) => return Err(AuthError::Malformed("qop")),
            None => None,
        };
        let expected = compute_response(alg, user, &self.realm, password, method, uri, nonce, qop);
        let response = response.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(response.as_bytes())) {
            return Err(AuthError::WrongPassword);
        }
        if now_s > issued.saturating_add(self.lifetime_s) {
            return Err(AuthError::Stale);
        }
        // Replay protection: with qop the nonce-count must grow; without it a nonce is single use.
        let nc = match qop {
            Some((nc, _)) => u32::from_str_radix(nc, 16).map_err(|_| AuthError::Malformed("nc"))?,
            None => 1,
        };
        let key = format!("{nonce}/{user}");
        if let Some(&(_, last)) = self.seen.get(&key)
            && nc <= last
        {
            return Err(AuthError::BadNonce);
        }
        self.seen.insert(key, (issued, nc));
        Ok(user.to_string())
    }

    /// Forget nonce counts of expired nonces.
    pub fn expire(&mut self, now_s: u64) {
        let life = self.lifetime_s;
        self.seen
            .retain(|_, (issued, _)| issued.saturating_add(life).saturating_add(5) >= now_s);
    }

    /// How many nonces are tracked for replay protection.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_vector() {
        // RFC 2617 §3.5 (the password is "Circle Of Life").
        let r = compute_response(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    fn pw(u: &str) -> Option<&'static str> {
        (u == "alice").then_some("secret")
    }

    #[test]
    fn round_trip_both_algorithms_and_replay() {
        let mut s = DigestServer::new("pbx.local", b"k", 300);
        for i in 0..2 {
            let ch = s.challenges(1000, false)[i].clone();
            let a = answer_challenge(&ch, "alice", "secret", "REGISTER", "sip:pbx.local", 1, "c1")
                .unwrap();
            assert_eq!(s.verify(1001, &a, "REGISTER", pw), Ok("alice".into()));
            assert_eq!(s.verify(1002, &a, "REGISTER", pw), Err(AuthError::BadNonce));
            let a2 = answer_challenge(&ch, "alice", "secret", "REGISTER", "sip:pbx.local", 2, "c1")
                .unwrap();
            assert!(s.verify(1003, &a2, "REGISTER", pw).is_ok());
        }
    }

    #[test]
    fn wrong_password_stale_and_forged() {
        let mut s = DigestServer::new("pbx.local", b"k", 300);
        let ch = &s.challenges(1000, false)[1];
        let nonce = DigestParams::parse(ch)
            .unwrap()
            .get("nonce")
            .unwrap()
            .to_string();
        let bad = answer_challenge(ch, "alice", "nope", "INVITE", "sip:bob@x", 1, "c").unwrap();
        assert_eq!(
            s.verify(1000, &bad, "INVITE", pw),
            Err(AuthError::WrongPassword)
        );
        let good = answer_challenge(ch, "alice", "secret", "INVITE", "sip:bob@x", 1, "c").unwrap();
        assert_eq!(s.verify(1400, &good, "INVITE", pw), Err(AuthError::Stale));
        let forged = good.replace(&nonce, "3e8.1.000000000000000000000000");
        assert_eq!(
            s.verify(1001, &forged, "INVITE", pw),
            Err(AuthError::BadNonce)
        );
        let mut other = DigestServer::new("pbx.local", b"other-secret", 300);
        let ch2 = &other.challenges(1000, false)[0];
        let a = answer_challenge(ch2, "alice", "secret", "INVITE", "sip:bob@x", 1, "c").unwrap();
        assert_eq!(s.verify(1001, &a, "INVITE", pw), Err(AuthError::BadNonce));
    }
}
