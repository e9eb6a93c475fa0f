//! Read-only views of the server for the admin API: `/status`, `/calls`, `/registrations`
//! (JSON) and `/metrics` (Prometheus text). Field names are a public interface (DESIGN).

use std::time::Instant;

use serde_json::{Value, json};

use super::Server;
use crate::b2bua::Side;
use crate::metrics::{Exposition, Kind};

fn pinger_count(p: &super::pinger::Pinger) -> usize {
    p.unreachable_count()
}

impl Server {
    /// `/status`. `extra` fields (from the node) are merged in.
    pub fn status_json(&self, now: Instant, extra: Value) -> Value {
        let role = self.role();
        let mut v = json!({
            "node": self.cfg.node.name,
            "home_role": self.cfg.node.home_role.as_str(),
            "role": role,
            "accepts_calls": self.accepts_calls(),
            "epoch": self.epoch(),
            "config_digest": self.config_digest,
            "uptime_s": now.saturating_duration_since(self.base.0).as_secs(),
            "counts": {
                "calls": self.b2bua.call_count(),
                "registrations": self.registrar.location().binding_count(),
                "client_transactions": self.tx.client_count(),
                "server_transactions": self.tx.server_count(),
                "dialog_subscriptions": self.blf.len(),
                "endpoints_unreachable": self.pinger.as_ref().map(pinger_count),
            },
            "trunk_registrations": self.trunk_regs.view(now),
        });
        if let (Value::Object(m), Some(Value::Object(p))) =
            (&mut v, self.pair.as_ref().map(|p| p.status(now)))
        {
            m.extend(p);
        } else if let Value::Object(m) = &mut v {
            m.insert("peer".into(), Value::Null);
        }
        if let Value::Object(m) = &mut v {
            m.insert(
                "takeover".into(),
                self.takeover_report().unwrap_or(Value::Null),
            );
        }
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        v
    }

    /// `/calls`.
    pub fn calls_json(&self, now: Instant, offset: usize, limit: usize) -> Value {
        // Pages in token order, so that consecutive pages neither skip nor repeat a call
        // that stays up (the table itself has no order).
        let mut page: Vec<&crate::b2bua::Call> = self.b2bua.calls().collect();
        page.sort_unstable_by_key(|c| c.token);
        let calls: Vec<Value> = page
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|c| {
                let leg = |side: Side| {
                    c.leg(side).map(|d| {
                        json!({
                            "call_id": d.call_id,
                            "local_tag": d.local_tag,
                            "remote_tag": d.remote_tag,
                            "remote_target": d.remote_target,
                            "transport": d.flow.proto,
                            "remote": d.flow.remote.to_string(),
                        })
                    })
                };
                json!({
                    "token": format!("{:016x}", c.token),
                    "state": c.state,
                    "age_s": now.saturating_duration_since(c.created).as_secs(),
                    "caller": c.caller,
                    "callee": c.callee,
                    "trunk": c.trunk,
                    "recovered": c.recovered,
                    "a": leg(Side::A),
                    "b": leg(Side::B),
                    "a_call_id": c.a.call_id,
                    "b_call_id": c.b_call_id,
                })
            })
            .collect();
        json!({ "calls": calls, "total": self.b2bua.call_count() })
    }

    /// `/ready`: whether a load balancer or orchestrator should count on this node — active
    /// and taking calls, or a stand-by in sync with its active (ready to take over).
    pub fn ready_json(&self, now: Instant) -> (bool, Value) {
        let role = self.role();
        let verdict = match &self.pair {
            None => Ok("active"),
            Some(_) if self.accepts_calls() => Ok("active"),
            Some(p) if p.machine.role() == crate::pair::Role::Standby => {
                p.standby_in_sync(now).map(|()| "standby in sync")
            }
            Some(_) => Err("taking over: the new epoch is being written"),
        };
        match verdict {
            Ok(why) => (true, json!({"ready": true, "role": role, "reason": why})),
            Err(why) => (false, json!({"ready": false, "role": role, "reason": why})),
        }
    }

    /// `/trunks`: each trunk, and its registration when it has `register = true`.
    pub fn trunks_json(&self, now: Instant) -> Value {
        let regs = self.trunk_regs.view(now);
        let trunks: Vec<Value> = self
            .cfg
            .trunks
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "address": t.address_text(),
                    "dns": t.host.as_deref().map(|h| self.dns.view(h)),
                    "transport": t.transport.as_str(),
                    "prefixes": t.prefixes,
                    "auth": t.credentials.is_some(),
                    "registration": regs.get(&t.name),
                })
            })
            .collect();
        json!({ "trunks": trunks })
    }

    /// `/registrations`.
    pub fn registrations_json(&self, now: Instant) -> Value {
        let mut aors: Vec<Value> = self
            .registrar
            .location()
            .iter()
            .map(|(aor, list)| {
                let contacts: Vec<Value> = list
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .map(|b| {
                        json!({
                            "contact": b.contact.uri.to_string(),
                            "expires_in_s": b.remaining(now),
                            "origin": b.origin,
                            // A flow the phone opened to this node (behind NAT, the one
                            // its router lets this node use).
                            "own_flow": b.origin == crate::registrar::Origin::Local,
                            "reachable": self.pinger.as_ref().map(|p| !p.unreachable(&b.contact.uri.to_string())),
                            "source": b.source.map(|f| f.to_string()),
                        })
                    })
                    .collect();
                json!({ "aor": aor, "contacts": contacts })
            })
            .collect();
        aors.sort_by(|a, b| a["aor"].as_str().cmp(&b["aor"].as_str()));
        json!({ "registrations": aors })
    }

    /// `/metrics` families for the SIP layers (the node adds its own).
    pub fn metrics(&self) -> Exposition {
        let mut e = Exposition::new();
        let c = &self.counters;
        e.family(
            "understudy_requests_received_total",
            Kind::Counter,
            "SIP requests received, by method.",
        );
        for (m, n) in &c.requests {
            e.sample("understudy_requests_received_total", &[("method", m)], n);
        }
        e.family(
            "understudy_responses_received_total",
            Kind::Counter,
            "SIP responses received, by status class.",
        );
        for (class, n) in c.responses.iter().enumerate().skip(1) {
            let class = format!("{class}xx");
            e.sample(
                "understudy_responses_received_total",
                &[("class", &class)],
                n,
            );
        }
        e.family(
            "understudy_malformed_total",
            Kind::Counter,
            "Messages that did not parse: answered 400, or dropped when no answer could be routed.",
        );
        e.sample(
            "understudy_malformed_total",
            &[("action", "answered")],
            c.malformed_answered,
        );
        e.sample(
            "understudy_malformed_total",
            &[("action", "dropped")],
            c.malformed_dropped,
        );
        e.single(
            "understudy_internal_errors_total",
            Kind::Counter,
            "Events whose handling failed inside the node and was contained (the call it touched ended).",
            c.internal_errors,
        );
        let ts = self.tx.stats();
        e.family(
            "understudy_transactions",
            Kind::Gauge,
            "SIP transactions in progress.",
        );
        e.sample(
            "understudy_transactions",
            &[("kind", "client")],
            self.tx.client_count(),
        );
        e.sample(
            "understudy_transactions",
            &[("kind", "server")],
            self.tx.server_count(),
        );
        e.family(
            "understudy_transactions_created_total",
            Kind::Counter,
            "SIP transactions created.",
        );
        e.sample(
            "understudy_transactions_created_total",
            &[("kind", "client")],
            ts.client_created,
        );
        e.sample(
            "understudy_transactions_created_total",
            &[("kind", "server")],
            ts.server_created,
        );
        e.single(
            "understudy_transaction_timeouts_total",
            Kind::Counter,
            "Client transactions that timed out (Timer B/F).",
            ts.timeouts,
        );
        e.single(
            "understudy_overload_refused_total",
            Kind::Counter,
            "Requests refused with 503 because the transaction table was full.",
            ts.overload_refused,
        );
        e.single(
            "understudy_retransmissions_absorbed_total",
            Kind::Counter,
            "Retransmitted requests and responses absorbed by their transaction.",
            ts.retransmissions_absorbed,
        );
        e.single(
            "understudy_registrations",
            Kind::Gauge,
            "Contact bindings in the location service.",
            self.registrar.location().binding_count(),
        );
        let gauges = self.trunk_regs.gauges();
        if !gauges.is_empty() {
            e.family(
                "understudy_trunk_registered",
                Kind::Gauge,
                "Whether the node is registered with the trunk (1) or not (0).",
            );
            for (t, registered, _) in &gauges {
                e.sample(
                    "understudy_trunk_registered",
                    &[("trunk", t)],
                    u8::from(*registered),
                );
            }
            e.family(
                "understudy_trunk_register_failures",
                Kind::Gauge,
                "Registration attempts with the trunk that failed since the last success.",
            );
            for (t, _, failures) in &gauges {
                e.sample(
                    "understudy_trunk_register_failures",
                    &[("trunk", t)],
                    failures,
                );
            }
        }
        e.single(
            "understudy_nat_keepalives_sent_total",
            Kind::Counter,
            "Keep-alives sent to phones behind NAT to hold their router's mapping open.",
            self.nat_keepalive.as_ref().map_or(0, |k| k.sent),
        );
        let rs = self.registrar.stats;
        e.family(
            "understudy_register_total",
            Kind::Counter,
            "REGISTER requests, by result.",
        );
        e.sample(
            "understudy_register_total",
            &[("result", "accepted")],
            rs.accepted,
        );
        e.sample(
            "understudy_register_total",
            &[("result", "challenged")],
            rs.challenged,
        );
        e.sample(
            "understudy_register_total",
            &[("result", "forbidden")],
            rs.forbidden,
        );
        e.single(
            "understudy_dialog_subscriptions",
            Kind::Gauge,
            "Dialog-event (BLF) subscriptions held.",
            self.blf.len(),
        );
        e.family(
            "understudy_limit_dropped_total",
            Kind::Counter,
            "Entries refused or evicted because a bounded table was full, by table.",
        );
        let digest_dropped = self.pair.as_ref().map_or(0, |p| p.digest.table.dropped);
        for (table, n) in [
            ("contacts_per_aor", self.registrar.location().evicted()),
            ("auth_failures", rs.failure_sources_evicted),
            ("subscriptions", self.blf.refused),
            ("digest", digest_dropped),
        ] {
            e.sample("understudy_limit_dropped_total", &[("table", table)], n);
        }
        let bs = self.b2bua.stats;
        e.single(
            "understudy_calls",
            Kind::Gauge,
            "Calls in progress.",
            self.b2bua.call_count(),
        );
        e.family("understudy_calls_total", Kind::Counter, "Calls, by event.");
        for (event, n) in [
            ("created", bs.created),
            ("answered", bs.answered),
            ("ended", bs.ended),
            ("refused", bs.refused),
        ] {
            e.sample("understudy_calls_total", &[("event", event)], n);
        }
        e.histogram(
            "understudy_call_answer_seconds",
            "Time from a caller's INVITE to the callee's answer (2xx).",
            &self.b2bua.answer_latency,
        );
        let role = self.role();
        e.family(
            "understudy_role",
            Kind::Gauge,
            "This node's role in the pair (1 for the current one).",
        );
        for (name, r) in [
            ("active", crate::pair::Role::Active),
            ("standby", crate::pair::Role::Standby),
            ("taking_over", crate::pair::Role::TakingOver),
        ] {
            e.sample("understudy_role", &[("role", name)], u8::from(role == r));
        }
        e.single(
            "understudy_epoch",
            Kind::Gauge,
            "The pair epoch this node is at (raised by every takeover).",
            self.epoch(),
        );
        e.histogram(
            "understudy_takeover_rebind_seconds",
            "Time to re-bind one call at a takeover, from its first re-INVITE to its last answer.",
            &self.rebind_times,
        );
        if let Some(p) = &self.pair {
            let st = p.stats;
            e.family(
                "understudy_keepalives_total",
                Kind::Counter,
                "Pair keep-alives, by direction (rejected: failed authentication).",
            );
            for (dir, n) in [
                ("sent", st.keepalives_sent),
                ("received", st.keepalives_received),
                ("rejected", st.keepalives_rejected),
            ] {
                e.sample("understudy_keepalives_total", &[("dir", dir)], n);
            }
            e.single(
                "understudy_keepalives_missed_total",
                Kind::Counter,
                "Keep-alives the peer did not answer in time.",
                p.machine.missed_total,
            );
            e.histogram(
                "understudy_keepalive_rtt_seconds",
                "Round-trip time of answered pair keep-alives.",
                &p.rtt,
            );
            e.single(
                "understudy_takeovers_total",
                Kind::Counter,
                "Takeovers by this node.",
                p.machine.takeovers,
            );
            e.single(
                "understudy_config_mismatch",
                Kind::Gauge,
                "1 when the peer's shared configuration differs from ours.",
                u8::from(!p.config_match()),
            );
            e.family(
                "understudy_reg_notifies_total",
                Kind::Counter,
                "Registration-sync NOTIFYs between the nodes, by direction.",
            );
            e.sample(
                "understudy_reg_notifies_total",
                &[("dir", "sent")],
                st.reg_notifies_sent,
            );
            e.sample(
                "understudy_reg_notifies_total",
                &[("dir", "received")],
                st.reg_notifies_received,
            );
            e.family(
                "understudy_reg_notify_bytes_total",
                Kind::Counter,
                "Bytes of registration-sync NOTIFY bodies sent to the peer.",
            );
            e.sample(
                "understudy_reg_notify_bytes_total",
                &[("dir", "sent")],
                st.reg_notify_bytes_sent,
            );
            e.family(
                "understudy_pair_refused_total",
                Kind::Counter,
                "Pair messages refused, by reason.",
            );
            for (reason, n) in [
                ("replayed", st.replays_refused),
                ("wrong_source", st.wrong_source),
            ] {
                e.sample("understudy_pair_refused_total", &[("reason", reason)], n);
            }
            e.single(
                "understudy_reg_resyncs_total",
                Kind::Counter,
                "Full registration resyncs the stand-by asked for.",
                st.reg_resyncs,
            );
        }
        e
    }
}
