//! The takeover inside the server: starting it, applying its steps to the B2BUA (adopt,
//! hang up orphans, fail ringing calls), counting the outcomes, and feeding the dialog digest
//! to the pair link while active.

use std::time::{Duration, Instant};

/// How long the stand-by may stay silent before the dialog digest log is dropped (and sent
/// whole once it is back).
const DIGEST_GRACE: Duration = Duration::from_secs(5);

use super::Server;
use super::takeover::Step;
use crate::net::Flow;
use crate::pair::Role;
use crate::sip::{HeaderName, Method, Request};

impl Server {
    pub(super) fn apply_takeover(&mut self, now: Instant, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Adopt(mut call) => {
                    let reach = [
                        super::nat::reach(&self.registrar, now, &mut call.a),
                        super::nat::reach(&self.registrar, now, &mut call.b),
                    ];
                    if let Some(t) = self.takeover.as_mut() {
                        let parties = [&call.caller, &call.callee];
                        for (r, who) in reach.iter().zip(parties) {
                            let report = &mut t.report;
                            match r {
                                super::nat::Reach::OwnFlow => report.nat_own_flow += 1,
                                super::nat::Reach::NoFlow => {
                                    report.nat_no_flow += 1;
                                    if report.nat_no_flow_parties.len() < super::takeover::NAMED {
                                        report.nat_no_flow_parties.push(who.clone());
                                    }
                                    tracing::warn!(party = %who, token = format!("{:016x}", call.token), "NAT: no flow to this node; re-binding at the recorded address");
                                }
                                super::nat::Reach::Direct => {}
                            }
                        }
                    }
                    let (mut env, b) = self.env_parts(now);
                    b.adopt(&mut env, *call);
                }
                Step::Orphan {
                    mut leg,
                    caller,
                    callee,
                    start_ms,
                } => {
                    super::nat::reach(&self.registrar, now, &mut leg);
                    let (mut env, b) = self.env_parts(now);
                    b.bye_orphan(&mut env, *leg, &caller, &callee, start_ms);
                }
                Step::FailRinging(r) => self.fail_ringing(now, &r),
            }
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
    }

    /// A call that was ringing when the old active died: the caller gets `503` with
    /// `Retry-After` through its recorded Via, the callee a CANCEL of the old INVITE (and a
    /// BYE on its early dialog), so nobody keeps ringing.
    pub(super) fn fail_ringing(&mut self, now: Instant, r: &crate::pair::digest::RingRecord) {
        let a_flow = Flow {
            proto: r.a_proto,
            remote: r.a_remote,
            conn: None,
        };
        let mut resp = crate::sip::Response::new(503);
        resp.reason = "Service Unavailable (Takeover)".into();
        for v in &r.a_vias {
            resp.headers.push(HeaderName::Via, v.clone());
        }
        resp.headers.push(HeaderName::From, r.a_from.clone());
        resp.headers.push(
            HeaderName::To,
            format!(
                "{};tag={}",
                r.a_to,
                crate::b2bua::tag_for(r.token, crate::b2bua::Side::A)
            ),
        );
        resp.headers.push(HeaderName::CallId, r.a_call_id.clone());
        resp.headers
            .push(HeaderName::CSeq, format!("{} INVITE", r.a_cseq));
        resp.headers.push(HeaderName::RetryAfter, "1");
        // Stateless (the INVITE's transaction died with the old active); over UDP sent twice
        // against a single loss, since the caller retransmits its INVITE to the old address.
        let bytes = resp.to_bytes();
        if !a_flow.proto.is_reliable() {
            self.tx.send_stateless(a_flow, bytes.clone());
        }
        self.tx.send_stateless(a_flow, bytes);
        let b_flow = Flow {
            proto: r.b_proto,
            remote: r.b_remote,
            conn: None,
        };
        let mut cancel = Request::new(Method::Cancel, r.b_uri.clone());
        cancel.headers.push(HeaderName::Via, r.b_via.clone());
        cancel.headers.push(HeaderName::MaxForwards, "70");
        cancel.headers.push(HeaderName::From, r.b_from.clone());
        cancel.headers.push(HeaderName::To, r.b_to.clone());
        cancel.headers.push(HeaderName::CallId, r.b_call_id.clone());
        cancel
            .headers
            .push(HeaderName::CSeq, format!("{} CANCEL", r.b_cseq));
        self.tx.send_stateless(b_flow, cancel.to_bytes());
        if let Some(tag) = &r.b_early_tag {
            let from = crate::sip::NameAddr::parse(&r.b_from).ok();
            let mut d = crate::dialog::Dialog {
                call_id: r.b_call_id.clone().into(),
                local_tag: from
                    .as_ref()
                    .and_then(|f| f.tag().map(Box::from))
                    .unwrap_or_default(),
                remote_tag: tag.clone().into(),
                local_uri: from
                    .map(|mut f| {
                        f.params.remove("tag");
                        f.to_string().into()
                    })
                    .unwrap_or_default(),
                remote_uri: r.b_to.clone().into(),
                local_cseq: r.b_cseq.max(self.cseq_epoch() * 65536),
                remote_cseq: None,
                route_set: Box::default(),
                remote_target: r
                    .b_early_target
                    .clone()
                    .unwrap_or_else(|| r.b_uri.clone())
                    .into(),
                flow: b_flow,
                pinned: false,
                state: crate::dialog::DialogState::Early,
            };
            let bye = d.request(Method::Bye, &self.me, None);
            let _ = self.tx.send_request(now, &bye, d.next_hop());
        }
        // No CDR: the call never connected, and the previous owner — alive during a
        // split, or crashed — answered or failed it on its side (one CDR per call at most).
        // The takeover report counts it (`ringing_failed`).
        tracing::info!(
            token = format!("{:016x}", r.token),
            call_id = r.a_call_id,
            "ringing call failed at takeover"
        );
    }

    /// Move the B2BUA's digest entries into the pair's log (active only).
    pub(super) fn pump_digest(&mut self, now: Instant) {
        let entries = self.b2bua.take_digest();
        let Some(p) = self.pair.as_mut() else {
            return;
        };
        if p.machine.role() != Role::Active {
            return;
        }
        let fresh = !entries.is_empty();
        // Only a stand-by reads our digest: a peer last heard as active (the main we just took
        // over from, whose last messages may still be in our queue) gets none, and the log
        // does not fill for it — nor is it rebuilt from a snapshot of every call, again and
        // again, while a takeover of 100,000 calls is under way.
        let listening = p.machine.standby_listening(now, DIGEST_GRACE);
        let calls = self.b2bua.call_count();
        p.digest
            .feed(listening, calls, entries, || self.b2bua.digest_snapshot());
        if !listening {
            return;
        }
        if fresh {
            // No lag: a confirmed call reaches the stand-by now, not at the next keep-alive.
            let calls = self.b2bua.call_count();
            p.send_digest(now, &mut self.tx, &self.me, calls, true);
        }
    }

    /// What the peer passed on while we are active: registrations and calls it handed over
    /// after stepping down (re-bound as in a takeover), and BYEs it received for our calls.
    pub(super) fn take_handoff(&mut self, now: Instant) {
        let Some(p) = self.pair.as_mut() else {
            return;
        };
        let (byes, regs) = p.handoff.take_incoming();
        if p.machine.role() != Role::Active {
            return;
        }
        for info in regs {
            super::regsync::apply_reginfo(&mut self.registrar, now, &info);
        }
        for call_id in byes {
            // A BYE the peer received for one of our calls: end it on the other leg.
            if let Some(token) = self.b2bua.token_of_call_id(&call_id) {
                let side = self.b2bua.side_of_call_id(token, &call_id);
                let (mut env, b) = self.env_parts(now);
                b.finish(&mut env, token, "normal", &[side.other()]);
                tracing::info!(call_id, "a BYE the peer received ended our call");
            }
        }
        self.cdrs.extend(self.b2bua.take_cdrs());
        let Some(p) = self.pair.as_mut() else {
            return;
        };
        let mut calls = p.handoff.calls_in.drain_complete();
        // Calls we own already (re-bound by our own takeover during the split) stay as they
        // are; ringing calls were failed by the peer itself.
        calls.retain(|token, c| c.ringing.is_none() && !self.b2bua.has_call(*token));
        if calls.is_empty() {
            return;
        }
        tracing::warn!(
            calls = calls.len(),
            "pair: the peer handed its calls over; re-binding them"
        );
        let now_ms = self.wall_ms(now);
        match self.takeover.as_mut() {
            Some(t) if t.report.in_progress => t.add_calls(calls),
            _ => self.takeover = Some(super::Takeover::handoff(&self.cfg, now, now_ms, calls)),
        }
    }

    pub(super) fn drive_takeover(&mut self, now: Instant) {
        let Some(t) = self.takeover.as_mut() else {
            return;
        };
        let outcomes = self.b2bua.take_rebind_outcomes();
        for d in t.record(now, &outcomes) {
            self.rebind_times.observe(d.as_secs_f64());
        }
        if !t.report.in_progress {
            return;
        }
        // The pacer counts the re-binds it let start and that have not ended: counting them
        // among all calls on every event would make a takeover quadratic in its calls.
        let in_flight = t.in_flight();
        let steps = t.tick(now, &mut self.tx, &self.me, in_flight);
        self.apply_takeover(now, steps);
        if let Some(t) = self.takeover.as_mut() {
            let outcomes = self.b2bua.take_rebind_outcomes();
            for d in t.record(now, &outcomes) {
                self.rebind_times.observe(d.as_secs_f64());
            }
            if t.idle() && t.finish_check_due(now) && self.b2bua.rebinding() == 0 {
                t.finish(now);
            }
        }
    }

    /// The current (or last) takeover report.
    pub fn takeover_report(&self) -> Option<serde_json::Value> {
        self.takeover
            .as_ref()
            .and_then(|t| serde_json::to_value(&t.report).ok())
    }
}
