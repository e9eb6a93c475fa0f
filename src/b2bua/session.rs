//! Session timers (RFC 4028) per leg: negotiation on the initial INVITE, refreshes when we
//! are the refresher (UPDATE when the peer allows it, else re-INVITE with the last SDP), and
//! ending the call on both legs when a refresh fails or the peer's refresh never comes.

use std::cmp::Reverse;
use std::time::Duration;

use super::call::{Call, SessionTimer, Side};
use super::{B2bua, Env, PerLeg, Purpose, TimerKind};
use crate::sip::{HeaderName, Method, Request, Response, SipMessage};

/// `Session-Expires: <s>[;refresher=uac|uas]` of a message.
pub(super) fn requested(m: &impl SipMessage) -> Option<(u32, Option<String>)> {
    let v = m.headers().get(&HeaderName::SessionExpires)?;
    let mut parts = v.split(';');
    let s = parts.next()?.trim().parse().ok()?;
    let refresher = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("refresher"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    Some((s, refresher))
}

/// When a leg's timer is due. `interval_s` comes off the wire, but as a u32 of seconds (at
/// most 136 years) it cannot overflow an `Instant`.
fn deadline_for(env: &Env<'_>, interval_s: u32, we_refresh: bool) -> std::time::Instant {
    let i = Duration::from_secs(u64::from(interval_s));
    if we_refresh {
        env.now + i / 2
    } else {
        // RFC 4028 §10: BYE if no refresh by expiry minus min(32, interval/3).
        env.now + i - Duration::from_secs(u64::from((interval_s / 3).min(32)))
    }
}

/// The leg of a `TimerKind::Session` entry.
pub(super) fn side_of(tag: u8) -> Option<Side> {
    match tag {
        0 => Some(Side::A),
        1 => Some(Side::B),
        _ => None,
    }
}

/// The `TimerKind::Session` entry of a leg's timer: the inverse of [`side_of`].
fn kind(side: Side) -> TimerKind {
    TimerKind::Session(match side {
        Side::A => 0,
        Side::B => 1,
    })
}

/// The B leg's timer, from its 2xx (we asked for `refresher=uac`).
pub(super) fn arm_b(call: &mut Call, env: &Env<'_>, resp: &Response) {
    let (interval, refresher) = match requested(resp) {
        Some((s, r)) => (s, r),
        None if env.cfg.calls.session_expires_s > 0 => (env.cfg.calls.session_expires_s, None),
        None => return,
    };
    if interval == 0 {
        return;
    }
    let we_refresh = refresher.as_deref() != Some("uas");
    *call.timers.leg_mut(Side::B) = Some(SessionTimer {
        interval_s: interval,
        we_refresh,
        deadline: deadline_for(env, interval, we_refresh),
    });
}

/// The A leg's timer, decided when we answer; adds the headers to our 2xx.
pub(super) fn arm_a(call: &mut Call, env: &Env<'_>, req: &Request, resp: &mut Response) {
    let supports = req.has_token(&HeaderName::Supported, "timer");
    let (interval, refresher) = match requested(req) {
        Some((s, r)) => {
            let r = r.unwrap_or_else(|| if supports { "uac".into() } else { "uas".into() });
            (s, r)
        }
        None if env.cfg.calls.session_expires_s > 0 => {
            (env.cfg.calls.session_expires_s, "uas".into())
        }
        None => return,
    };
    resp.headers.push(
        HeaderName::SessionExpires,
        format!("{interval};refresher={refresher}"),
    );
    if refresher == "uac" {
        resp.headers.push(HeaderName::Require, "timer");
    }
    let we_refresh = refresher == "uas";
    *call.timers.leg_mut(Side::A) = Some(SessionTimer {
        interval_s: interval,
        we_refresh,
        deadline: deadline_for(env, interval, we_refresh),
    });
}

/// Timer heap entries for the current deadlines.
pub(super) fn deadlines(call: &Call) -> Vec<(std::time::Instant, u64, TimerKind)> {
    [Side::A, Side::B]
        .into_iter()
        .filter_map(|side| {
            call.timers
                .leg(side)
                .map(|t| (t.deadline, call.token, kind(side)))
        })
        .collect()
}

/// A successful re-INVITE/UPDATE through the call refreshes both legs.
pub(super) fn touch(call: &mut Call, env: &Env<'_>) -> Vec<(std::time::Instant, u64, TimerKind)> {
    for t in call.timers.iter_mut().flatten() {
        t.deadline = deadline_for(env, t.interval_s, t.we_refresh);
    }
    deadlines(call)
}

/// The peer refreshed its leg with an UPDATE without body: it is the refresher from now on.
pub(super) fn refreshed_by_peer(
    call: &mut Call,
    env: &Env<'_>,
    side: Side,
    req: &Request,
    resp: &mut Response,
) {
    let interval = requested(req)
        .map(|(s, _)| s)
        .or_else(|| call.timers.leg(side).map(|t| t.interval_s))
        .unwrap_or(env.cfg.calls.session_expires_s);
    if interval == 0 {
        return;
    }
    resp.headers.push(
        HeaderName::SessionExpires,
        format!("{interval};refresher=uac"),
    );
    *call.timers.leg_mut(side) = Some(SessionTimer {
        interval_s: interval,
        we_refresh: false,
        deadline: deadline_for(env, interval, false),
    });
}

/// A session timer fired.
pub(super) fn fire(b: &mut B2bua, env: &mut Env<'_>, token: u64, i: u8, at: std::time::Instant) {
    let Some(side) = side_of(i) else {
        return;
    };
    let Some(call) = b.calls.get_mut(&token) else {
        return;
    };
    let Some(t) = *call.timers.leg(side) else {
        return;
    };
    if t.deadline != at {
        return;
    }
    if !t.we_refresh {
        tracing::info!(
            token = format!("{token:016x}"),
            ?side,
            "no session refresh from the peer; ending call"
        );
        b.finish(env, token, "session_timeout", &[Side::A, Side::B]);
        return;
    }
    if call.reinvite.is_some() {
        // Something is in flight on the call: try again shortly.
        let at = env.now + Duration::from_secs(2);
        if let Some(t) = call.timers.leg_mut(side) {
            t.deadline = at;
        }
        b.timers.push(Reverse((at, token, kind(side))));
        return;
    }
    let use_update = *call.peer_update.leg(side);
    let sdp = call
        .last_sdp
        .leg(side)
        .as_deref()
        .map(bytes::Bytes::copy_from_slice);
    let Some(leg) = call.leg_mut(side) else {
        return;
    };
    let method = if use_update || sdp.is_none() {
        Method::Update
    } else {
        Method::Invite
    };
    let mut r = leg.request(method.clone(), env.me, None);
    let cseq = leg.local_cseq;
    r.headers.push(
        HeaderName::SessionExpires,
        format!("{};refresher=uac", t.interval_s),
    );
    r.headers.push(HeaderName::Supported, super::SUPPORTED);
    if method == Method::Invite
        && let Some(body) = sdp
    {
        r.headers.push(HeaderName::ContentType, "application/sdp");
        r.body = body;
    }
    let hop = leg.next_hop();
    super::outbound_auth::answer_trunk_challenge(env, call, side, &mut r);
    match env.tx.send_request(env.now, &r, hop) {
        Ok(tx) => {
            b.client
                .insert(tx, (token, Purpose::Refresh { side, cseq }));
        }
        Err(_) => b.finish(env, token, "session_timeout", &[Side::A, Side::B]),
    }
}

/// The response to one of our refreshes.
pub(super) fn refresh_response(
    b: &mut B2bua,
    env: &mut Env<'_>,
    token: u64,
    side: Side,
    cseq: u32,
    resp: &Response,
) {
    let Some(call) = b.calls.get_mut(&token) else {
        return;
    };
    let was_invite = resp.cseq().is_ok_and(|c| c.method == Method::Invite);
    match resp.status {
        100..=199 => {}
        200..=299 => {
            if let Some(c) = call.trunk_challenge() {
                c.sent = false;
            }
            if was_invite && let Some(leg) = call.leg_mut(side) {
                let ack = leg.ack(env.me, cseq, None);
                env.tx.send_stateless(leg.next_hop(), ack.to_bytes());
            }
            if let Some(t) = call.timers.leg_mut(side) {
                if let Some((s, r)) = requested(resp) {
                    t.interval_s = s.max(1);
                    t.we_refresh = r.as_deref() != Some("uas");
                }
                t.deadline = deadline_for(env, t.interval_s, t.we_refresh);
                b.timers.push(Reverse((t.deadline, token, kind(side))));
            }
        }
        // The trunk challenged the refresh: again at once, with its credentials.
        401 | 407 if super::outbound_auth::take_trunk_challenge(env, call, side, resp) => {
            if let Some(t) = call.timers.leg_mut(side) {
                t.deadline = env.now;
            }
            b.timers.push(Reverse((env.now, token, kind(side))));
        }
        491 => {
            let at = env.now + Duration::from_secs(2);
            if let Some(t) = call.timers.leg_mut(side) {
                t.deadline = at;
            }
            b.timers.push(Reverse((at, token, kind(side))));
        }
        405 | 501 if !was_invite => {
            *call.peer_update.leg_mut(side) = false;
            if let Some(t) = call.timers.leg_mut(side) {
                t.deadline = env.now;
            }
            b.timers.push(Reverse((env.now, token, kind(side))));
        }
        _ => {
            tracing::info!(
                token = format!("{token:016x}"),
                ?side,
                status = resp.status,
                "session refresh failed; ending call"
            );
            b.finish(env, token, "session_timeout", &[Side::A, Side::B]);
        }
    }
}
