//! Call transfer done by the B2BUA itself (RFC 3515 REFER, flows of RFC 5589): the
//! transferee never sees a REFER.
//!
//! A phone in a call (the transferor, on leg X) sends `REFER` with `Refer-To` naming another
//! party. We answer 202, report progress to the transferor in `NOTIFY Event: refer`
//! (`message/sipfrag`, RFC 3515 §2.4.5) and place the new call ourselves, RFC 3725 style:
//!
//! 1. an offerless INVITE to the target, from the transferee's identity, with our tag for
//!    leg X (the new leg takes the transferor's place, so the call keeps its token);
//! 2. the target's 2xx carries an offer; a re-INVITE carries it to the transferee (leg Y);
//! 3. the transferee's answer goes to the target in our ACK; the target's dialog replaces
//!    leg X; the transferor gets `NOTIFY 200` and a BYE.
//!
//! Failure at any step leaves the original call as it was (the transferee's media is touched
//! only in step 2, and only when the target answered): the transferor gets the failure in its
//! NOTIFY. If the transferor already hung up, there is no original call to keep, and the
//! transferee's leg ends too. A call is transferred at most [`MAX_TRANSFERS`] times (a REFER
//! loop between phones ends there with 403, not in a storm). Each part of a transferred call
//! has its CDR: the earlier part ends `transferred`, the next names the transferor's leg in
//! `transfer_of`.

use bytes::Bytes;

use super::call::{Call, CallState, Side};
use super::{ALLOW, B2bua, Env, PerLeg, Purpose, media};
use crate::dialog::{Dialog, DialogState};
use crate::net::Flow;
use crate::sip::{
    HeaderName, Method, NameAddr, Replaces, Request, Response, SipMessage, Uri, response_to,
};
use crate::transaction::{ClientTxId, ServerTxId};

/// How many times one call may be transferred.
pub const MAX_TRANSFERS: u8 = 8;

/// Where a transfer is.
#[derive(Debug)]
pub(super) enum Step {
    /// Offerless INVITE sent to the target.
    Calling,
    /// The target answered with `offer` in dialog `target`; a re-INVITE carries the offer to
    /// the transferee (its CSeq `cseq`).
    Joining {
        target: Box<Dialog>,
        offer: Bytes,
        cseq: u32,
    },
    /// An INVITE with Replaces (RFC 3891) takes leg X's place: its offer went to the other
    /// leg in a re-INVITE (CSeq `cseq`); the INVITE waits on server transaction `server`.
    Replacing { server: ServerTxId, cseq: u32 },
}

/// A transfer in progress.
#[derive(Debug)]
pub struct Transfer {
    /// The transferor's leg.
    pub(super) from: Side,
    /// The transferor hung up meanwhile.
    pub(super) from_gone: bool,
    /// The INVITE to the target, where it went, and its transaction.
    pub(super) invite: Request,
    pub(super) flow: Flow,
    pub(super) tx: ClientTxId,
    /// Whether the target sent a provisional (reported to the transferor once).
    pub(super) provisional: bool,
    /// A trunk's challenge to the INVITE answered so far (nonce, count), as for any call.
    pub(super) auth: Option<(String, u32)>,
    /// The party now in the call (for the CDR), and the trunk it is reached by.
    pub(super) party: String,
    pub(super) trunk: Option<String>,
    /// Attended transfer: the consultation call (out of the table while its leg is being
    /// joined) and which of its legs joins; its other leg is the one Replaces named.
    pub(super) joined: Option<(Box<Call>, Side)>,
    pub(super) step: Step,
}

/// The NOTIFY of the REFER's implicit subscription (RFC 3515 §2.4.4) with `status` as a
/// sipfrag; final statuses end the subscription.
fn notify(d: &mut Dialog, env: &Env<'_>, status: u16, reason: &str) -> Request {
    let mut n = d.request(Method::Notify, env.me, None);
    n.headers.push(HeaderName::Event, "refer");
    let state = if status >= 200 {
        "terminated;reason=noresource"
    } else {
        "active;expires=60"
    };
    n.headers.push(HeaderName::SubscriptionState, state);
    n.headers
        .push(HeaderName::Contact, env.me.contact(d.flow.proto));
    n.headers
        .push(HeaderName::ContentType, "message/sipfrag;version=2.0");
    n.body = Bytes::from(format!("SIP/2.0 {status} {reason}\r\n"));
    n
}

/// The Refer-To URI.
fn refer_target(req: &Request) -> Option<Uri> {
    let v = req.headers.get(&HeaderName::ReferTo)?;
    Some(NameAddr::parse(v).ok()?.uri)
}

impl B2bua {
    /// A REFER on leg `side` of call `token` (the transferor's).
    pub(super) fn on_refer(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        side: Side,
        id: ServerTxId,
        req: &Request,
    ) {
        let reply = |env: &mut Env<'_>, status: u16, phrase: Option<&str>| {
            let mut r = response_to(req, status, None);
            if let Some(p) = phrase {
                r.reason = p.into();
            }
            let _ = env.tx.respond(env.now, id, &r);
        };
        let Some(call) = self.calls.get(&token) else {
            return;
        };
        let Some(uri) = refer_target(req) else {
            return reply(env, 400, Some("Missing or Bad Refer-To"));
        };
        if call.state != CallState::Confirmed
            || call.transfer.is_some()
            || call.reinvite.is_some()
            || call.rebind.is_some()
        {
            let mut r = response_to(req, 491, None);
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = env.tx.respond(env.now, id, &r);
            return;
        }
        if call.transfers >= MAX_TRANSFERS {
            return reply(env, 403, Some("Transfer Limit Reached"));
        }
        // Attended: the dialog Replaces names says who joins (phones put the consultation's
        // remote target there, often our Contact without a user part).
        if let Some(rep) = uri.headers.as_deref().and_then(Replaces::from_uri_headers) {
            return self.refer_with_replaces(env, token, side, id, req, &rep, &uri);
        }
        let Some(user) = uri.user_unescaped() else {
            return reply(env, 400, Some("Refer-To Names No User"));
        };
        let route = match super::resolve(env.cfg, env.registrar, env.dns, &user, env.now) {
            Ok(r) => r,
            Err(why) => return reply(env, why.status(), why.phrase()),
        };
        let Some(target) = route.targets.first().cloned() else {
            return reply(env, 480, None);
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(transferee) = call.leg(side.other()) else {
            return;
        };
        // The target sees the transferee calling (RFC 5589 §6: the new call is the
        // transferee's), from a new Call-ID, with our tag for the transferor's leg.
        let call_id = env.new_call_id();
        let mut inv = Request::new(Method::Invite, target.uri.clone());
        let h = &mut inv.headers;
        h.push(HeaderName::Via, env.me.via(target.flow.proto));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!(
                "{};tag={}",
                transferee.remote_uri,
                super::tag_for(token, side)
            ),
        );
        h.push(HeaderName::To, target.to.clone());
        h.push(HeaderName::CallId, call_id);
        h.push(
            HeaderName::CSeq,
            format!("{} INVITE", env.cseq_base().saturating_add(1)),
        );
        h.push(HeaderName::Contact, env.me.contact(target.flow.proto));
        h.push(HeaderName::Allow, ALLOW);
        h.push(HeaderName::Supported, super::SUPPORTED);
        if let Some(by) = req.headers.get(&HeaderName::ReferredBy) {
            h.push(HeaderName::ReferredBy, by);
        }
        let Ok(tx) = env.tx.send_request(env.now, &inv, target.flow) else {
            return reply(env, 500, None);
        };
        self.client.insert(tx, (token, Purpose::TransferInvite));
        self.accept_refer(
            env,
            token,
            id,
            req,
            Transfer {
                from: side,
                from_gone: false,
                invite: inv,
                flow: target.flow,
                tx,
                provisional: false,
                auth: None,
                // As in any CDR: the callee is the number or user dialled, the caller a URI.
                party: match side {
                    Side::A => uri.to_string(),
                    Side::B => user.clone(),
                },
                trunk: route.trunk,
                joined: None,
                step: Step::Calling,
            },
        );
        tracing::info!(
            token = format!("{token:016x}"),
            transferor = ?side,
            target = user,
            "blind transfer: calling the target"
        );
    }

    /// Attended transfer: a REFER on leg X of call `token` whose Refer-To carries Replaces
    /// naming the transferor's leg of another call (the consultation). The other party of
    /// that call is joined to this call's other party, in leg X's place: an offerless
    /// re-INVITE to it first, its offer then to the transferee.
    #[allow(clippy::too_many_arguments)]
    fn refer_with_replaces(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        side: Side,
        id: ServerTxId,
        req: &Request,
        rep: &Replaces,
        uri: &Uri,
    ) {
        let reply = |env: &mut Env<'_>, status: u16, phrase: &str| {
            let mut r = response_to(req, status, None);
            r.reason = phrase.into();
            let _ = env.tx.respond(env.now, id, &r);
        };
        let found = self.locate(&rep.to_tag, &rep.call_id).filter(|(t2, r)| {
            self.calls
                .get(t2)
                .and_then(|c| c.leg(*r))
                .is_some_and(|d| *d.remote_tag == *rep.from_tag)
        });
        let Some((t2, replaced)) = found else {
            return reply(env, 404, "Replaced Dialog Not Found");
        };
        if t2 == token {
            return reply(env, 403, "Cannot Replace A Leg Of The Same Call");
        }
        let busy = self.calls.get(&t2).is_none_or(|c| {
            c.state != CallState::Confirmed
                || c.transfer.is_some()
                || c.reinvite.is_some()
                || c.rebind.is_some()
        });
        if busy {
            let mut r = response_to(req, 491, None);
            r.headers.push(HeaderName::RetryAfter, "1");
            let _ = env.tx.respond(env.now, id, &r);
            return;
        }
        let Some(mut c2) = self.calls.remove(&t2) else {
            return;
        };
        let y2 = replaced.other();
        let (party, trunk) = match y2 {
            Side::A => (c2.caller.to_string(), None),
            Side::B => (
                c2.callee.to_string(),
                c2.trunk.as_deref().map(str::to_string),
            ),
        };
        let Some(d) = c2.leg_mut(y2) else {
            self.calls.insert(t2, c2);
            return reply(env, 500, "Consultation Call Has No Other Party");
        };
        let mut re = d.request(Method::Invite, env.me, None);
        re.headers
            .push(HeaderName::Contact, env.me.contact(d.flow.proto));
        re.headers.push(HeaderName::Allow, ALLOW);
        re.headers.push(HeaderName::Supported, super::SUPPORTED);
        let flow = d.next_hop();
        let Ok(tx) = env.tx.send_request(env.now, &re, flow) else {
            self.calls.insert(t2, c2);
            return reply(env, 500, "Cannot Reach The Other Party");
        };
        self.client.insert(tx, (token, Purpose::TransferInvite));
        let party = if party.is_empty() {
            uri.to_string()
        } else {
            party
        };
        self.accept_refer(
            env,
            token,
            id,
            req,
            Transfer {
                from: side,
                from_gone: false,
                invite: re,
                flow,
                tx,
                provisional: false,
                auth: None,
                party,
                trunk,
                joined: Some((c2, y2)),
                step: Step::Calling,
            },
        );
        tracing::info!(
            token = format!("{token:016x}"),
            consultation = format!("{t2:016x}"),
            transferor = ?side,
            "attended transfer: joining the consultation call's other party"
        );
    }

    /// An INVITE with Replaces (RFC 3891) from a phone: it takes the place of the leg named,
    /// and the other party of that call is re-INVITEd with its offer. No match: 481; the
    /// call busy with another exchange: 491; `early-only` for a confirmed call: 486.
    pub(super) fn on_invite_replaces(
        &mut self,
        env: &mut Env<'_>,
        id: ServerTxId,
        req: Request,
        source: Flow,
        value: &str,
    ) {
        let refuse = |env: &mut Env<'_>, status: u16, phrase: &str| {
            let mut r = response_to(&req, status, Some(&crate::sip::new_tag()));
            r.reason = phrase.into();
            let _ = env.tx.respond(env.now, id, &r);
        };
        let Some(rep) = Replaces::parse(value) else {
            return refuse(env, 400, "Bad Replaces");
        };
        let found = self.locate(&rep.to_tag, &rep.call_id).filter(|(t, r)| {
            self.calls
                .get(t)
                .and_then(|c| c.leg(*r))
                .is_some_and(|d| *d.remote_tag == *rep.from_tag)
        });
        let Some((token, side)) = found else {
            return refuse(env, 481, "Call/Transaction Does Not Exist");
        };
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        if call.state != CallState::Confirmed {
            return refuse(env, 481, "Call/Transaction Does Not Exist");
        }
        if rep.early_only {
            return refuse(env, 486, "Busy Here");
        }
        if call.transfer.is_some() || call.reinvite.is_some() || call.rebind.is_some() {
            return refuse(env, 491, "Request Pending");
        }
        if req.body.is_empty() {
            return refuse(env, 488, "Offer Required");
        }
        if call.transfers >= MAX_TRANSFERS {
            return refuse(env, 403, "Transfer Limit Reached");
        }
        let party = req.from().map(|f| f.uri.to_string()).unwrap_or_default();
        let offer = media::relay(
            &mut self.media,
            token,
            side,
            Bytes::copy_from_slice(&req.body),
        );
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(y) = call.leg_mut(side.other()) else {
            return refuse(env, 481, "Call/Transaction Does Not Exist");
        };
        let mut re = y.request(Method::Invite, env.me, None);
        let cseq = y.local_cseq;
        re.headers
            .push(HeaderName::Contact, env.me.contact(y.flow.proto));
        re.headers.push(HeaderName::Allow, ALLOW);
        re.headers.push(HeaderName::ContentType, "application/sdp");
        re.body = offer;
        let hop = y.next_hop();
        *call.last_sdp.leg_mut(side.other()) = Some(super::call::kept(&re.body));
        let Ok(tx) = env.tx.send_request(env.now, &re, hop) else {
            return refuse(env, 500, "Cannot Reach The Other Party");
        };
        self.client.insert(tx, (token, Purpose::TransferJoin));
        call.transfer = Some(Box::new(Transfer {
            from: side,
            from_gone: false,
            invite: req,
            flow: source,
            tx,
            provisional: false,
            auth: None,
            party,
            trunk: None,
            joined: None,
            step: Step::Replacing { server: id, cseq },
        }));
        tracing::info!(
            token = format!("{token:016x}"),
            leg = ?side,
            "INVITE with Replaces: re-INVITing the other party with the new offer"
        );
    }

    /// The REFER is accepted (202) and transfer `t` under way: the transferor hears
    /// `100 Trying`.
    fn accept_refer(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ServerTxId,
        req: &Request,
        t: Transfer,
    ) {
        let from = t.from;
        let Some(call) = self.calls.get_mut(&token) else {
            // Gone meanwhile (not possible within one event): give the consultation back.
            if let Some((c2, _)) = t.joined {
                self.put_back(c2);
            }
            return;
        };
        let proto = call.leg(from).map_or(call.a.flow.proto, |d| d.flow.proto);
        let mut accepted = response_to(req, 202, None);
        accepted
            .headers
            .push(HeaderName::Contact, env.me.contact(proto));
        let _ = env.tx.respond(env.now, id, &accepted);
        call.transfer = Some(Box::new(t));
        self.notify_transferor(env, token, from, 100, "Trying");
    }

    /// Tell the transferor on leg `from` how its transfer goes.
    fn notify_transferor(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        from: Side,
        status: u16,
        reason: &str,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        if let Some(d) = call.leg_mut(from) {
            let n = notify(d, env, status, reason);
            if let Ok(tx) = env.tx.send_request(env.now, &n, d.next_hop()) {
                self.client.insert(tx, (token, Purpose::Notify));
            }
        }
    }

    /// The transferor hung up while its transfer goes on: its leg is done, the call is not.
    /// `false` when `side` is not a transferor's.
    pub(super) fn transferor_left(&mut self, token: u64, side: Side) -> bool {
        match self
            .calls
            .get_mut(&token)
            .and_then(|c| c.transfer.as_deref_mut())
        {
            Some(t) if t.from == side && !t.from_gone => {
                t.from_gone = true;
                true
            }
            _ => false,
        }
    }

    /// A response to our INVITE to the transfer target.
    pub(super) fn transfer_invite_response(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ClientTxId,
        resp: Response,
    ) {
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(t) = call.transfer.as_deref_mut().filter(|t| t.tx == id) else {
            // A retransmitted 2xx after the transfer finished (or failed): ACK it again is the
            // target's dialog's business once it is a leg; otherwise nothing to do.
            return;
        };
        let status = resp.status;
        if status < 200 {
            if status > 100 && !t.provisional {
                t.provisional = true;
                let (from, gone) = (t.from, t.from_gone);
                if !gone && (status == 180 || status == 183) {
                    self.notify_transferor(env, token, from, status, &resp.reason);
                }
            }
            return;
        }
        if matches!(status, 401 | 407)
            && t.joined.is_none()
            && let Some(creds) = super::trunk_credentials(env.cfg, t.trunk.as_deref())
        {
            // A carrier's challenge to the transfer's call: answered once per nonce, as for
            // any call to that trunk.
            let cseq = t.invite.cseq().map_or(0, |c| c.seq);
            match super::outbound_auth::authorize(
                env.me,
                &t.invite,
                t.flow.proto,
                &mut t.auth,
                &resp,
                creds,
                cseq,
            ) {
                Ok(retry) => {
                    if let Ok(tx) = env.tx.send_request(env.now, &retry, t.flow) {
                        self.client.remove(&id);
                        self.client.insert(tx, (token, Purpose::TransferInvite));
                        t.tx = tx;
                        t.invite = retry;
                        t.provisional = false;
                        return;
                    }
                }
                Err(why) => tracing::warn!(
                    token = format!("{token:016x}"),
                    error = why,
                    "the trunk's challenge to the transfer's INVITE is not answered"
                ),
            }
        }
        if status >= 300 {
            self.client.remove(&id);
            return self.transfer_failed(env, token, status, &resp.reason);
        }
        let from = t.from;
        if !matches!(t.step, Step::Calling) {
            return;
        }
        let target = match t.joined.as_mut() {
            // Attended: the joined party's dialog, as its 2xx to our re-INVITE left it.
            Some((c2, y2)) => c2.leg_mut(*y2).map(|d| {
                d.refresh_target(resp.contact());
                d.clone()
            }),
            None => Dialog::as_uac(&t.invite, &resp, t.flow),
        };
        let Some(mut target) = target else {
            self.client.remove(&id);
            return self.transfer_failed(env, token, 500, "Bad Answer From Target");
        };
        target.state = DialogState::Confirmed;
        if resp.body.is_empty() {
            // Nothing to offer the transferee: the new leg is given up.
            self.client.remove(&id);
            self.give_up_target(env, token, target, &Bytes::new());
            return self.transfer_failed(env, token, 488, "No Offer From Target");
        }
        let offer = Bytes::copy_from_slice(&resp.body);
        // Step 2: the target's offer to the transferee (through the relay, as leg X's).
        let body = media::relay(&mut self.media, token, from, offer.clone());
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let Some(y) = call.leg_mut(from.other()) else {
            return;
        };
        let mut re = y.request(Method::Invite, env.me, None);
        let cseq = y.local_cseq;
        re.headers
            .push(HeaderName::Contact, env.me.contact(y.flow.proto));
        re.headers.push(HeaderName::Allow, ALLOW);
        re.headers.push(HeaderName::ContentType, "application/sdp");
        re.body = body;
        let hop = y.next_hop();
        *call.last_sdp.leg_mut(from.other()) = Some(super::call::kept(&re.body));
        match env.tx.send_request(env.now, &re, hop) {
            Ok(tx) => {
                self.client.insert(tx, (token, Purpose::TransferJoin));
                if let Some(t) = call.transfer.as_deref_mut() {
                    t.step = Step::Joining {
                        target: Box::new(target),
                        offer,
                        cseq,
                    };
                }
            }
            Err(_) => {
                self.client.remove(&id);
                self.give_up_target(env, token, target, &offer);
                self.transfer_failed(env, token, 500, "Transferee Unreachable");
            }
        }
    }

    /// The transferee's answer to the re-INVITE that joins it to the target (or, for an
    /// INVITE with Replaces, to the new party).
    pub(super) fn transfer_join_response(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        id: ClientTxId,
        resp: Response,
    ) {
        if resp.status < 200 {
            return;
        }
        self.client.remove(&id);
        let Some(t) = self.calls.get_mut(&token).and_then(|c| c.transfer.take()) else {
            return;
        };
        let t = *t;
        self.client.remove(&t.tx);
        let y_side = t.from.other();
        let accepted = (200..300).contains(&resp.status) && !resp.body.is_empty();
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        let cseq = match &t.step {
            Step::Joining { cseq, .. } | Step::Replacing { cseq, .. } => *cseq,
            Step::Calling => return,
        };
        // Every 2xx is ACKed; a refusal leaves the call as it was.
        if let Some(y) = call.leg_mut(y_side)
            && (200..300).contains(&resp.status)
        {
            let ack = y.ack(env.me, cseq, None);
            env.tx.send_stateless(y.next_hop(), ack.to_bytes());
            y.refresh_target(resp.contact());
        }
        if !accepted {
            let status = if resp.status < 300 { 488 } else { resp.status };
            return self.join_refused(env, token, t, status, &resp.reason);
        }
        let answer = Bytes::copy_from_slice(&resp.body);
        let body = media::relay(&mut self.media, token, y_side, answer);
        let Transfer {
            from,
            from_gone,
            invite,
            flow,
            party,
            trunk,
            joined,
            step,
            ..
        } = t;
        let (new_leg, reason) = match step {
            Step::Joining { target, .. } => {
                // Step 3: the transferee's answer to the target, in our ACK.
                let mut target = *target;
                let ack = target.ack(
                    env.me,
                    target.local_cseq,
                    Some((body.clone(), "application/sdp".into())),
                );
                env.tx.send_stateless(target.next_hop(), ack.to_bytes());
                (target, "transferred")
            }
            Step::Replacing { server, .. } => {
                // The new party gets the answer in our 200; its dialog takes the leg's place.
                let tag = super::tag_for(token, from);
                let Some(mut d) = Dialog::as_uas(&invite, &tag, flow) else {
                    return;
                };
                d.state = DialogState::Confirmed;
                d.local_cseq = env.cseq_base();
                let mut ok = response_to(&invite, 200, Some(&tag));
                ok.headers
                    .push(HeaderName::Contact, env.me.contact(flow.proto));
                ok.headers.push(HeaderName::Allow, ALLOW);
                ok.headers.push(HeaderName::ContentType, "application/sdp");
                ok.body = body.clone();
                let _ = env.tx.respond(env.now, server, &ok);
                (d, "replaced")
            }
            Step::Calling => return,
        };
        if let Some((c2, y2)) = joined {
            self.retire_consultation(env, token, *c2, y2, &new_leg);
        }
        let Some(call) = self.calls.get_mut(&token) else {
            return;
        };
        *call.last_sdp.leg_mut(from) = Some(super::call::kept(&body));
        *call.timers.leg_mut(from) = None;
        // The new party takes the leg's place; the part of the call before it gets its CDR
        // now.
        let before = super::cdr_of(call, env, reason);
        let Some(slot) = call.leg_mut(from) else {
            return;
        };
        let mut old = std::mem::replace(slot, new_leg);
        match from {
            Side::A => call.caller = party.into(),
            Side::B => {
                call.callee = party.into();
                call.b_call_id = call
                    .b
                    .as_ref()
                    .map_or_else(Box::default, |b| b.call_id.clone());
                call.trunk = trunk.map(Box::from);
            }
        }
        call.transfers = call.transfers.saturating_add(1);
        call.transfer_of = Some(old.call_id.clone());
        call.start_ms = env.now_ms;
        call.answer_ms = Some(env.now_ms);
        self.cdrs.push(before);
        self.departed.insert(
            (old.call_id.to_string(), old.local_tag.to_string()),
            env.now,
        );
        if !from_gone {
            if reason == "transferred" {
                let n = notify(&mut old, env, 200, "OK");
                if let Ok(tx) = env.tx.send_request(env.now, &n, old.next_hop()) {
                    self.client.insert(tx, (token, Purpose::Notify));
                }
            }
            let bye = old.request(Method::Bye, env.me, None);
            if let Ok(tx) = env.tx.send_request(env.now, &bye, old.next_hop()) {
                self.client.insert(tx, (token, Purpose::Bye));
            }
        }
        self.digest_legs(token);
        tracing::info!(
            token = format!("{token:016x}"),
            leg = ?from,
            reason,
            "the new party took the leg's place"
        );
    }

    /// The transferee refused to be joined: the new party is given up, the call stays.
    fn join_refused(&mut self, env: &mut Env<'_>, token: u64, t: Transfer, status: u16, why: &str) {
        match t.step {
            Step::Joining { target, offer, .. } => {
                if let Some((c2, _)) = t.joined {
                    // Attended: the consultation call goes on as it was.
                    self.restore_consultation(env, *c2, *target, &offer);
                } else {
                    self.give_up_target(env, token, *target, &offer);
                }
                self.transfer_ended(env, token, t.from, t.from_gone, status, why);
            }
            Step::Replacing { server, .. } => {
                let mut r = response_to(&t.invite, status, Some(&crate::sip::new_tag()));
                r.reason = why.to_string();
                let _ = env.tx.respond(env.now, server, &r);
            }
            Step::Calling => {}
        }
    }

    /// The target answered but cannot be joined: ACK its 2xx with an answer refusing every
    /// stream, then BYE.
    fn give_up_target(&mut self, env: &mut Env<'_>, token: u64, mut target: Dialog, offer: &Bytes) {
        let refuse = super::rebind::rejecting_answer(offer);
        let ack = target.ack(
            env.me,
            target.local_cseq,
            Some((refuse, "application/sdp".into())),
        );
        env.tx.send_stateless(target.next_hop(), ack.to_bytes());
        let bye = target.request(Method::Bye, env.me, None);
        if let Ok(tx) = env.tx.send_request(env.now, &bye, target.next_hop()) {
            self.client.insert(tx, (token, Purpose::Bye));
        }
    }

    /// An attended transfer that did not happen: the joined party's 2xx (with `offer`, the
    /// offer it made) is ACKed with the last SDP it had from us, and the consultation call
    /// goes back to the table as it was.
    fn restore_consultation(
        &mut self,
        env: &mut Env<'_>,
        c2: Call,
        mut target: Dialog,
        offer: &Bytes,
    ) {
        let y2 = [Side::A, Side::B]
            .into_iter()
            .find(|&s| c2.leg(s).is_some_and(|d| d.local_tag == target.local_tag));
        let answer = y2
            .and_then(|s| c2.last_sdp.leg(s).as_deref().map(Bytes::copy_from_slice))
            .unwrap_or_else(|| super::rebind::rejecting_answer(offer));
        let ack = target.ack(
            env.me,
            target.local_cseq,
            Some((answer, "application/sdp".into())),
        );
        env.tx.send_stateless(target.next_hop(), ack.to_bytes());
        self.put_back(Box::new(c2));
    }

    /// A consultation call goes back to the table as it was; its session timers (skipped
    /// while it was out) are armed again.
    fn put_back(&mut self, c2: Box<Call>) {
        for t in super::session::deadlines(&c2) {
            self.timers.push(std::cmp::Reverse(t));
        }
        self.calls.insert(c2.token, c2);
    }

    /// An attended transfer completed: the consultation call's joined leg now belongs to
    /// call `token`; its other leg (the transferor's) is hung up, its CDR written, its relay
    /// ports freed, and its tag's token leads to `token` from now on.
    fn retire_consultation(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        mut c2: Call,
        y2: Side,
        joined: &Dialog,
    ) {
        let replaced = y2.other();
        if let Some(d) = c2.leg_mut(replaced) {
            self.departed
                .insert((d.call_id.to_string(), d.local_tag.to_string()), env.now);
            let bye = d.request(Method::Bye, env.me, None);
            if let Ok(tx) = env.tx.send_request(env.now, &bye, d.next_hop()) {
                self.client.insert(tx, (token, Purpose::Bye));
            }
        }
        self.cdrs.push(super::cdr_of(&c2, env, "transferred"));
        if let Some(m) = self.media.as_mut() {
            m.release(c2.token);
        }
        self.server_invites.retain(|_, t| *t != c2.token);
        self.digest_gone(c2.token);
        if self.digest_on {
            self.recently_ended.insert(c2.token, env.now);
        }
        self.stats.ended += 1;
        for t in self.aliases.values_mut().filter(|t| **t == c2.token) {
            *t = token;
        }
        if let Some((t, _)) = super::parse_tag(&joined.local_tag) {
            self.aliases.insert(t, token);
        }
    }

    /// The transfer in progress failed with `status` (see [`Self::transfer_ended`]).
    fn transfer_failed(&mut self, env: &mut Env<'_>, token: u64, status: u16, reason: &str) {
        let Some(t) = self.calls.get_mut(&token).and_then(|c| c.transfer.take()) else {
            return;
        };
        self.client.remove(&t.tx);
        if let Some((c2, _)) = t.joined {
            self.put_back(c2);
        }
        self.transfer_ended(env, token, t.from, t.from_gone, status, reason);
    }

    /// A transfer from leg `from` failed with `status`: the transferor hears it; the call
    /// goes on between the original parties, or ends when the transferor has left.
    fn transfer_ended(
        &mut self,
        env: &mut Env<'_>,
        token: u64,
        from: Side,
        from_gone: bool,
        status: u16,
        reason: &str,
    ) {
        tracing::info!(
            token = format!("{token:016x}"),
            status,
            transferor_left = from_gone,
            "transfer failed"
        );
        if from_gone {
            self.finish(
                env,
                token,
                &format!("transfer_failed:{status}"),
                &[from.other()],
            );
        } else {
            self.notify_transferor(env, token, from, status, reason);
        }
    }

    /// The call ends while a transfer is under way: stop the new leg too (an attended
    /// transfer's consultation call goes back as it was; an INVITE with Replaces gets 481).
    pub(super) fn abort_transfer(&mut self, env: &mut Env<'_>, token: u64, t: Transfer) {
        self.client.remove(&t.tx);
        match (t.step, t.joined) {
            (Step::Calling, Some((c2, _))) => self.put_back(c2),
            (Step::Calling, None) => {
                let c = super::cancel_for(&t.invite);
                if let Ok(tx) = env.tx.send_request(env.now, &c, t.flow) {
                    self.client.insert(tx, (token, Purpose::Cancel));
                }
            }
            (Step::Joining { target, offer, .. }, Some((c2, _))) => {
                self.restore_consultation(env, *c2, *target, &offer);
            }
            (Step::Joining { target, offer, .. }, None) => {
                self.give_up_target(env, token, *target, &offer);
            }
            (Step::Replacing { server, .. }, _) => {
                let r = response_to(&t.invite, 481, Some(&crate::sip::new_tag()));
                let _ = env.tx.respond(env.now, server, &r);
            }
        }
    }
}
