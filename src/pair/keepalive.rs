//! Keep-alive OPTIONS between the nodes: the `X-Understudy-*` headers and their HMAC
//! (DESIGN "Keep-alive"). The HMAC covers node|role|epoch|Call-ID|CSeq with `pair.secret`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::role::Announced;
use crate::sip::{HeaderName, Headers, SipMessage};

/// Header names.
pub const NODE: &str = "X-Understudy-Node";
/// Role header.
pub const ROLE: &str = "X-Understudy-Role";
/// Epoch header.
pub const EPOCH: &str = "X-Understudy-Epoch";
/// Calls header.
pub const CALLS: &str = "X-Understudy-Calls";
/// Config digest header.
pub const CONFIG: &str = "X-Understudy-Config";
/// Authentication header.
pub const AUTH: &str = "X-Understudy-Auth";

/// What a keep-alive says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Sender's node name.
    pub node: String,
    /// Sender's role.
    pub role: Announced,
    /// Sender's epoch.
    pub epoch: u64,
    /// Sender's call count.
    pub calls: u64,
    /// Sender's config digest.
    pub config: String,
}

/// Why a keep-alive was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveError {
    /// No `X-Understudy-*` headers at all: not a keep-alive.
    #[error("not a keep-alive")]
    NotKeepalive,
    /// Missing or malformed header.
    #[error("malformed keep-alive header {0}")]
    Malformed(&'static str),
    /// HMAC missing or wrong.
    #[error("keep-alive authentication failed")]
    BadAuth,
}

/// HMAC over `node|role|epoch|Call-ID|CSeq`, and `|sha256(body)` when there is a body (the
/// dialog digest), so a body cannot be swapped under a captured signature. `None` only when
/// the secret cannot key an HMAC (never for SHA-256, which takes any length).
fn keyed(
    secret: &[u8],
    node: &str,
    role: &str,
    epoch: u64,
    call_id: &str,
    cseq: &str,
    body: &[u8],
) -> Option<Hmac<Sha256>> {
    use sha2::Digest as _;
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(format!("{node}|{role}|{epoch}|{call_id}|{cseq}").as_bytes());
    if !body.is_empty() {
        m.update(b"|");
        m.update(hex::encode(Sha256::digest(body)).as_bytes());
    }
    Some(m)
}

/// The hex MAC for a message we send.
fn mac(
    secret: &[u8],
    node: &str,
    role: &str,
    epoch: u64,
    call_id: &str,
    cseq: &str,
    body: &[u8],
) -> String {
    keyed(secret, node, role, epoch, call_id, cseq, body)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

fn other(name: &str) -> HeaderName {
    HeaderName::Other(name.to_string())
}

/// Add the keep-alive headers to a message that already has its Call-ID, CSeq and body.
pub fn stamp(h: &mut Headers, secret: &[u8], info: &Info, body: &[u8]) {
    let call_id = h.get(&HeaderName::CallId).unwrap_or("").to_string();
    let cseq = h.get(&HeaderName::CSeq).unwrap_or("").trim().to_string();
    let role = info.role.as_str();
    h.push(other(NODE), info.node.clone());
    h.push(other(ROLE), role);
    h.push(other(EPOCH), info.epoch.to_string());
    h.push(other(CALLS), info.calls.to_string());
    h.push(other(CONFIG), info.config.clone());
    h.push(
        other(AUTH),
        mac(secret, &info.node, role, info.epoch, &call_id, &cseq, body),
    );
}

/// Replace the `X-Understudy-Auth` of a message with the MAC its other keep-alive headers
/// call for. The fuzzer and the simulator use it so that mutated keep-alives still reach the
/// role machine; a node never re-signs what it received.
pub fn resign(h: &mut Headers, secret: &[u8], body: &[u8]) {
    let value = |name: &str| {
        h.iter()
            .find(|x| matches!(&x.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(name)))
            .map(|x| x.value.trim().to_string())
            .unwrap_or_default()
    };
    let (node, role, epoch) = (value(NODE), value(ROLE), value(EPOCH));
    let (Some(role), Ok(epoch)) = (Announced::parse(&role), epoch.parse::<u64>()) else {
        return;
    };
    let role = role.as_str();
    let call_id = h.get(&HeaderName::CallId).unwrap_or("").to_string();
    let cseq = h.get(&HeaderName::CSeq).unwrap_or("").trim().to_string();
    let auth = mac(secret, &node, role, epoch, &call_id, &cseq, body);
    h.retain(|x| !matches!(&x.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(AUTH)));
    h.push(other(AUTH), auth);
}

/// Whether a message carries keep-alive headers at all.
pub fn is_keepalive(m: &impl SipMessage) -> bool {
    m.headers()
        .iter()
        .any(|h| matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(NODE)))
}

fn get<'a>(m: &'a impl SipMessage, name: &'static str) -> Result<&'a str, KeepaliveError> {
    m.headers()
        .iter()
        .find(|h| matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case(name)))
        .map(|h| h.value.as_str())
        .ok_or(KeepaliveError::Malformed(name))
}

/// Read the keep-alive headers without checking any MAC (the caller authenticated the
/// message as a whole, `pair::auth`).
pub fn read(m: &impl SipMessage) -> Result<Info, KeepaliveError> {
    if !is_keepalive(m) {
        return Err(KeepaliveError::NotKeepalive);
    }
    let role = Announced::parse(get(m, ROLE)?).ok_or(KeepaliveError::Malformed(ROLE))?;
    Ok(Info {
        node: get(m, NODE)?.to_string(),
        role,
        epoch: get(m, EPOCH)?
            .trim()
            .parse()
            .map_err(|_| KeepaliveError::Malformed(EPOCH))?,
        calls: get(m, CALLS)?
            .trim()
            .parse()
            .map_err(|_| KeepaliveError::Malformed(CALLS))?,
        config: get(m, CONFIG)?.to_string(),
    })
}

/// Read and authenticate the keep-alive headers with the version 1 MAC (and the body, when
/// there is one).
pub fn verify(m: &impl SipMessage, body: &[u8], secret: &[u8]) -> Result<Info, KeepaliveError> {
    if !is_keepalive(m) {
        return Err(KeepaliveError::NotKeepalive);
    }
    let node = get(m, NODE)?.to_string();
    let role_s = get(m, ROLE)?;
    let role = Announced::parse(role_s).ok_or(KeepaliveError::Malformed(ROLE))?;
    let epoch = get(m, EPOCH)?
        .trim()
        .parse()
        .map_err(|_| KeepaliveError::Malformed(EPOCH))?;
    let calls = get(m, CALLS)?
        .trim()
        .parse()
        .map_err(|_| KeepaliveError::Malformed(CALLS))?;
    let config = get(m, CONFIG)?.to_string();
    let auth = get(m, AUTH).map_err(|_| KeepaliveError::BadAuth)?;
    let call_id = m
        .call_id()
        .map_err(|_| KeepaliveError::Malformed("Call-ID"))?;
    let cseq = m
        .headers()
        .get(&HeaderName::CSeq)
        .ok_or(KeepaliveError::Malformed("CSeq"))?
        .trim();
    // Compared in constant time by the MAC itself.
    let given = hex::decode(auth.trim()).map_err(|_| KeepaliveError::BadAuth)?;
    keyed(secret, &node, role.as_str(), epoch, call_id, cseq, body)
        .ok_or(KeepaliveError::BadAuth)?
        .verify_slice(&given)
        .map_err(|_| KeepaliveError::BadAuth)?;
    Ok(Info {
        node,
        role,
        epoch,
        calls,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Method, Request};

    fn req() -> Request {
        let mut r = Request::new(Method::Options, "sip:127.0.0.1:5062");
        r.headers.push(HeaderName::CallId, "ka-1");
        r.headers.push(HeaderName::CSeq, "5 OPTIONS");
        r
    }

    fn info() -> Info {
        Info {
            node: "main-1".into(),
            role: Announced::Active,
            epoch: 3,
            calls: 10,
            config: "abc".into(),
        }
    }

    #[test]
    fn stamped_keepalive_verifies() {
        let mut r = req();
        stamp(&mut r.headers, b"secret-1", &info(), b"");
        assert_eq!(verify(&r, b"", b"secret-1"), Ok(info()));
        let mut r = req();
        stamp(&mut r.headers, b"secret-1", &info(), b"digest");
        assert_eq!(verify(&r, b"digest", b"secret-1"), Ok(info()));
        assert_eq!(
            verify(&r, b"digesT", b"secret-1"),
            Err(KeepaliveError::BadAuth),
            "swapped body"
        );
    }

    #[test]
    fn wrong_secret_or_tampering_fails() {
        let mut r = req();
        stamp(&mut r.headers, b"secret-1", &info(), b"");
        assert_eq!(verify(&r, b"", b"secret-2"), Err(KeepaliveError::BadAuth));
        let mut t = r.clone();
        t.headers.set(HeaderName::Other(EPOCH.into()), "99");
        assert_eq!(verify(&t, b"", b"secret-1"), Err(KeepaliveError::BadAuth));
        let mut t = r.clone();
        t.headers.set(HeaderName::CSeq, "6 OPTIONS");
        assert_eq!(
            verify(&t, b"", b"secret-1"),
            Err(KeepaliveError::BadAuth),
            "replay under another CSeq"
        );
        let mut t = r;
        t.headers
            .retain(|h| !matches!(&h.name, HeaderName::Other(n) if n == AUTH));
        assert_eq!(verify(&t, b"", b"secret-1"), Err(KeepaliveError::BadAuth));
        assert_eq!(
            verify(&req(), b"", b"secret-1"),
            Err(KeepaliveError::NotKeepalive)
        );
    }
}
