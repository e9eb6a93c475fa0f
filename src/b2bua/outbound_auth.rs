//! Answering a trunk's digest challenge to our requests (RFC 3261 §22.2, §22.3 on the UAC
//! side): the INVITE (or a BYE) goes again with the same Call-ID and tags, the next CSeq, a
//! new branch and the credentials; a second challenge that is not `stale` means the
//! credentials are wrong, and the call fails (a BYE is not retried again).

use crate::config::TrunkCredentials;
use crate::dialog::LocalContact;
use crate::sip::digest::{DigestParams, answer_challenge};
use crate::sip::{HeaderName, Request, Response, SipMessage, new_tag};

use super::Env;
use super::call::{Call, Fork, Side};

/// The INVITE that answers `resp` (401/407) to `fork`'s INVITE, or why there is none.
pub(super) fn answer(
    me: &LocalContact,
    fork: &mut Fork,
    resp: &Response,
    creds: &TrunkCredentials,
    cseq: u32,
) -> Result<Request, String> {
    authorize(
        me,
        &fork.request,
        fork.flow.proto,
        &mut fork.auth,
        resp,
        creds,
        cseq,
    )
}

/// `req` again (same Call-ID, tags and method; CSeq `cseq + 1`; a new branch on `proto`)
/// with the credentials that answer `resp`'s challenge. `auth` keeps the nonce answered and
/// its count across retries of one request.
pub(super) fn authorize(
    me: &LocalContact,
    req: &Request,
    proto: crate::net::Proto,
    auth: &mut Option<(String, u32)>,
    resp: &Response,
    creds: &TrunkCredentials,
    cseq: u32,
) -> Result<Request, String> {
    let (challenge_name, answer_name) = if resp.status == 407 {
        (
            HeaderName::ProxyAuthenticate,
            HeaderName::ProxyAuthorization,
        )
    } else {
        (HeaderName::WwwAuthenticate, HeaderName::Authorization)
    };
    let challenge = resp
        .headers
        .get(&challenge_name)
        .ok_or_else(|| format!("{} without a challenge", resp.status))?
        .to_string();
    let params = DigestParams::parse(&challenge).ok_or("a challenge that is not digest")?;
    let nonce = params.get("nonce").unwrap_or_default().to_string();
    let stale = params
        .get("stale")
        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
    let realm = params.get("realm").unwrap_or_default();
    if let Some(want) = &creds.realm
        && want != realm
    {
        return Err(format!("challenged for realm {realm:?}, not {want:?}"));
    }
    // Challenged again after we answered, and not because the nonce went stale: the
    // credentials are wrong (a fresh nonce each time must not make us answer for ever).
    if auth.is_some() && !stale {
        return Err("credentials refused (wrong username or password?)".into());
    }
    let nc = match auth {
        Some((n, count)) if *n == nonce => {
            *count = count.saturating_add(1);
            *count
        }
        _ => {
            *auth = Some((nonce, 1));
            1
        }
    };
    let method = req.method.to_string();
    let value = answer_challenge(
        &challenge,
        &creds.username,
        &creds.password,
        &method,
        &req.uri,
        nc,
        &new_tag(),
    )
    .ok_or("a challenge we cannot answer (algorithm?)")?;
    let mut retry = req.clone();
    let next = cseq.saturating_add(1);
    retry.headers.set(HeaderName::Via, me.via(proto));
    retry
        .headers
        .set(HeaderName::CSeq, format!("{next} {method}"));
    retry.headers.remove(&HeaderName::Authorization);
    retry.headers.remove(&HeaderName::ProxyAuthorization);
    retry.headers.push(answer_name, value);
    debug_assert!(retry.call_id().is_ok());
    Ok(retry)
}

/// Keep a trunk's 401/407 to our in-dialog re-INVITE/UPDATE (re-bind, session refresh) on
/// leg `side` for the next one, when the call's
/// trunk has credentials and the challenge is new (or our answer's nonce went stale).
pub(super) fn take_trunk_challenge(
    env: &Env<'_>,
    call: &mut Call,
    side: Side,
    resp: &Response,
) -> bool {
    if super::trunk_credentials(env.cfg, call.trunk.as_deref()).is_none() {
        return false;
    }
    // Only the trunk's own leg is answered with the trunk's credentials.
    let leg_trunk = call.leg(side).and_then(|d| {
        env.cfg
            .trunk_for_source(d.flow.remote)
            .or_else(|| env.dns.trunk_for_source(env.cfg, d.flow.remote))
    });
    if leg_trunk.map(|t| t.name.as_str()) != call.trunk.as_deref() {
        return false;
    }
    let proxy = resp.status == 407;
    let name = if proxy {
        HeaderName::ProxyAuthenticate
    } else {
        HeaderName::WwwAuthenticate
    };
    let Some(challenge) = resp.headers.get(&name).map(str::to_string) else {
        return false;
    };
    let Some(params) = crate::sip::digest::DigestParams::parse(&challenge) else {
        return false;
    };
    let stale = params
        .get("stale")
        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
    if call
        .trunk_challenge()
        .is_some_and(|c| c.side == side && c.sent && !stale)
    {
        tracing::warn!(
            trunk = call.trunk.as_deref().unwrap_or_default(),
            "the trunk refused our credentials on a re-bind re-INVITE"
        );
        return false;
    }
    call.rare_mut().trunk_challenge = Some(super::call::TrunkChallenge {
        side,
        challenge,
        proxy,
        nc: 0,
        sent: false,
    });
    true
}

/// Put the credentials for a kept trunk challenge into request `r` on leg `side`.
pub(super) fn answer_trunk_challenge(env: &Env<'_>, call: &mut Call, side: Side, r: &mut Request) {
    let Some(creds) = super::trunk_credentials(env.cfg, call.trunk.as_deref()) else {
        return;
    };
    let Some(c) = call.trunk_challenge().filter(|c| c.side == side) else {
        return;
    };
    c.nc = c.nc.saturating_add(1);
    let value = crate::sip::digest::answer_challenge(
        &c.challenge,
        &creds.username,
        &creds.password,
        &r.method.to_string(),
        &r.uri,
        c.nc,
        &crate::sip::new_tag(),
    );
    if let Some(v) = value {
        let name = if c.proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        r.headers.push(name, v);
        c.sent = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Flow;
    use crate::sip::digest::DigestServer;
    use crate::sip::{Method, response_to};
    use crate::transaction::ClientTxId;

    fn fork() -> Fork {
        let mut r = Request::new(Method::Invite, "sip:0123@192.0.2.9:5060".to_string());
        let h = &mut r.headers;
        h.push(
            HeaderName::Via,
            "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1",
        );
        h.push(HeaderName::From, "<sip:alice@pbx.local>;tag=b1");
        h.push(HeaderName::To, "<sip:0123@192.0.2.9:5060>");
        h.push(HeaderName::CallId, "b-leg-1");
        h.push(HeaderName::CSeq, "7 INVITE");
        Fork {
            tx: ClientTxId(1),
            request: r,
            flow: Flow::udp("192.0.2.9:5060".parse().unwrap()),
            provisional: false,
            cancel_wanted: false,
            done: false,
            early_tag: None,
            early_target: None,
            rseq: None,
            prack_cseq: 0,
            auth: None,
        }
    }

    fn me() -> LocalContact {
        LocalContact {
            udp: "198.51.100.7:5060".into(),
            tcp: "198.51.100.7:5060".into(),
            tls: String::new(),
        }
    }

    fn creds(password: &str) -> TrunkCredentials {
        TrunkCredentials {
            username: "pbx1".into(),
            password: password.into(),
            realm: None,
        }
    }

    /// A 407 from the carrier's digest server.
    fn challenge(server: &mut DigestServer, req: &Request, stale: bool) -> Response {
        let mut r = response_to(req, 407, Some("c"));
        for ch in server.challenges(1000, stale) {
            r.headers.push(HeaderName::ProxyAuthenticate, ch);
        }
        r
    }

    #[test]
    fn a_407_is_answered_once_with_credentials_the_carrier_accepts() {
        let mut server = DigestServer::new("carrier", b"k", 300);
        let mut f = fork();
        let first = challenge(&mut server, &f.request, false);
        let retry = answer(&me(), &mut f, &first, &creds("secret"), 7).unwrap();
        assert_eq!(retry.cseq().unwrap().seq, 8);
        assert_eq!(retry.call_id().ok(), Some("b-leg-1"));
        assert_ne!(
            retry.headers.get(&HeaderName::Via),
            f.request.headers.get(&HeaderName::Via),
            "a new branch"
        );
        let pa = retry.headers.get(&HeaderName::ProxyAuthorization).unwrap();
        let user = server.verify(1000, pa, "INVITE", |_| Some("secret"));
        assert_eq!(user.as_deref(), Ok("pbx1"));
        // Challenged again (a fresh nonce, not stale): the credentials are wrong; no loop.
        f.request = retry;
        let again = challenge(&mut server, &f.request, false);
        assert!(answer(&me(), &mut f, &again, &creds("secret"), 8).is_err());
    }

    #[test]
    fn a_stale_nonce_is_answered_again_and_a_foreign_realm_is_not() {
        let mut server = DigestServer::new("carrier", b"k", 300);
        let mut f = fork();
        let first = challenge(&mut server, &f.request, false);
        f.request = answer(&me(), &mut f, &first, &creds("secret"), 7).unwrap();
        let stale = challenge(&mut server, &f.request, true);
        assert!(answer(&me(), &mut f, &stale, &creds("secret"), 8).is_ok());
        let mut g = fork();
        let mut only = creds("secret");
        only.realm = Some("other".into());
        let ch = challenge(&mut server, &g.request, false);
        let e = answer(&me(), &mut g, &ch, &only, 7).unwrap_err();
        assert!(e.contains("realm"), "{e}");
    }
}
