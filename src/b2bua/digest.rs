//! What the B2BUA tells the stand-by about its calls: the dialog digest entries (leg
//! identifiers, never SDP or state), produced as calls ring, answer and end.

use super::B2bua;
use super::call::{Call, CallState, Side};
use crate::pair::digest::{Entry, LegRecord, RingRecord};
use crate::sip::{HeaderName, SipMessage};

fn leg_record(call: &Call, side: Side) -> Option<LegRecord> {
    let d = call.leg(side)?;
    Some(LegRecord {
        token: call.token,
        is_a: side == Side::A,
        call_id: d.call_id.to_string(),
        local_tag: d.local_tag.to_string(),
        remote_tag: d.remote_tag.to_string(),
        local_uri: d.local_uri.to_string(),
        remote_uri: d.remote_uri.to_string(),
        remote_target: d.remote_target.to_string(),
        proto: d.flow.proto,
        remote: d.flow.remote,
        route_set: d.route_set.to_vec(),
        cseq: d.local_cseq,
        party: match side {
            Side::A => call.caller.to_string(),
            Side::B => call.callee.to_string(),
        },
        start_ms: call.start_ms,
        transfer_of: call.transfer_of.as_deref().map(str::to_string),
    })
}

fn ring_record(call: &Call) -> Option<RingRecord> {
    let (_, a) = call.a_invite.as_deref()?;
    let fork = call
        .forks
        .iter()
        .find(|f| !f.done && f.early_tag.is_some())
        .or_else(|| call.forks.iter().find(|f| !f.done))?;
    let b = &fork.request;
    Some(RingRecord {
        token: call.token,
        a_vias: a
            .headers
            .get_all(&HeaderName::Via)
            .map(str::to_string)
            .collect(),
        a_from: a.headers.get(&HeaderName::From)?.to_string(),
        a_to: a.headers.get(&HeaderName::To)?.to_string(),
        a_call_id: call.a.call_id.to_string(),
        a_cseq: a.cseq().ok()?.seq,
        a_proto: call.a.flow.proto,
        a_remote: call.a.flow.remote,
        b_via: b.headers.get(&HeaderName::Via)?.to_string(),
        b_uri: b.uri.clone(),
        b_from: b.headers.get(&HeaderName::From)?.to_string(),
        b_to: b.headers.get(&HeaderName::To)?.to_string(),
        b_call_id: call.b_call_id.to_string(),
        b_cseq: call.b_invite_cseq,
        b_proto: fork.flow.proto,
        b_remote: fork.flow.remote,
        b_early_tag: fork.early_tag.clone(),
        b_early_target: fork.early_target.clone(),
    })
}

impl B2bua {
    /// Produce digest entries from now on (only a node with a peer needs them).
    pub fn enable_digest(&mut self, on: bool) {
        self.digest_on = on;
        if !on {
            self.digest_out.clear();
        }
    }

    pub(super) fn digest_ringing(&mut self, token: u64) {
        if !self.digest_on {
            return;
        }
        if let Some(r) = self.calls.get(&token).and_then(|c| ring_record(c)) {
            self.digest_out.push(Entry::Ringing(Box::new(r)));
        }
    }

    pub(super) fn digest_legs(&mut self, token: u64) {
        if !self.digest_on {
            return;
        }
        if let Some(call) = self.calls.get(&token) {
            for side in [Side::A, Side::B] {
                if let Some(l) = leg_record(call, side) {
                    self.digest_out.push(Entry::Leg(Box::new(l)));
                }
            }
        }
    }

    pub(super) fn digest_gone(&mut self, token: u64) {
        if self.digest_on {
            self.digest_out.push(Entry::Gone(token));
        }
    }

    /// Digest entries since the last call.
    pub fn take_digest(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.digest_out)
    }

    /// Every current call as digest entries (the full list after a resync).
    pub fn digest_snapshot(&self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.calls.len() * 2);
        for call in self.calls.values() {
            match call.state {
                CallState::Calling | CallState::Ringing => {
                    if let Some(r) = ring_record(call) {
                        out.push(Entry::Ringing(Box::new(r)));
                    }
                }
                CallState::Answered | CallState::Confirmed | CallState::Rebinding => {
                    for side in [Side::A, Side::B] {
                        if let Some(l) = leg_record(call, side) {
                            out.push(Entry::Leg(Box::new(l)));
                        }
                    }
                }
            }
        }
        out
    }
}
