//! Read-only views of the server for the admin API: `/status`, `/calls`, `/registrations`
//! (JSON) and `/metrics` (Prometheus text). Field names are a public interface (DESIGN).

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use super::Server;
use crate::b2bua::Side;

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
    pub fn calls_json(&self, now: Instant) -> Value {
        let calls: Vec<Value> = self
            .b2bua
            .calls()
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
        json!({ "calls": calls })
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

    /// `/metrics` lines for the SIP layers (the node adds its own).
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        let c = &self.counters;
        let _ = writeln!(s, "# TYPE understudy_requests_received_total counter");
        for (m, n) in &c.requests {
            let _ = writeln!(
                s,
                "understudy_requests_received_total{{method=\"{m}\"}} {n}"
            );
        }
        let _ = writeln!(s, "# TYPE understudy_responses_received_total counter");
        for (class, n) in c.responses.iter().enumerate().skip(1) {
            let _ = writeln!(
                s,
                "understudy_responses_received_total{{class=\"{class}xx\"}} {n}"
            );
        }
        let _ = writeln!(s, "# TYPE understudy_malformed_total counter");
        let _ = writeln!(
            s,
            "understudy_malformed_total{{action=\"answered\"}} {}",
            c.malformed_answered
        );
        let _ = writeln!(
            s,
            "understudy_malformed_total{{action=\"dropped\"}} {}",
            c.malformed_dropped
        );
        let _ = writeln!(s, "# TYPE understudy_internal_errors_total counter");
        let _ = writeln!(s, "understudy_internal_errors_total {}", c.internal_errors);
        let ts = self.tx.stats();
        let _ = writeln!(s, "# TYPE understudy_transactions gauge");
        let _ = writeln!(
            s,
            "understudy_transactions{{kind=\"client\"}} {}",
            self.tx.client_count()
        );
        let _ = writeln!(
            s,
            "understudy_transactions{{kind=\"server\"}} {}",
            self.tx.server_count()
        );
        let _ = writeln!(s, "# TYPE understudy_transactions_created_total counter");
        let _ = writeln!(
            s,
            "understudy_transactions_created_total{{kind=\"client\"}} {}",
            ts.client_created
        );
        let _ = writeln!(
            s,
            "understudy_transactions_created_total{{kind=\"server\"}} {}",
            ts.server_created
        );
        let _ = writeln!(s, "understudy_transaction_timeouts_total {}", ts.timeouts);
        let _ = writeln!(
            s,
            "understudy_overload_refused_total {}",
            ts.overload_refused
        );
        let _ = writeln!(
            s,
            "understudy_retransmissions_absorbed_total {}",
            ts.retransmissions_absorbed
        );
        let _ = writeln!(s, "# TYPE understudy_registrations gauge");
        let _ = writeln!(
            s,
            "understudy_registrations {}",
            self.registrar.location().binding_count()
        );
        let gauges = self.trunk_regs.gauges();
        if !gauges.is_empty() {
            let _ = writeln!(s, "# TYPE understudy_trunk_registered gauge");
            for (t, registered, _) in &gauges {
                let _ = writeln!(
                    s,
                    "understudy_trunk_registered{{trunk=\"{t}\"}} {}",
                    u8::from(*registered)
                );
            }
            let _ = writeln!(s, "# TYPE understudy_trunk_register_failures gauge");
            for (t, _, failures) in &gauges {
                let _ = writeln!(
                    s,
                    "understudy_trunk_register_failures{{trunk=\"{t}\"}} {failures}"
                );
            }
        }
        let _ = writeln!(s, "# TYPE understudy_nat_keepalives_sent_total counter");
        let _ = writeln!(
            s,
            "understudy_nat_keepalives_sent_total {}",
            self.nat_keepalive.as_ref().map_or(0, |k| k.sent)
        );
        let rs = self.registrar.stats;
        let _ = writeln!(
            s,
            "understudy_register_total{{result=\"accepted\"}} {}",
            rs.accepted
        );
        let _ = writeln!(
            s,
            "understudy_register_total{{result=\"challenged\"}} {}",
            rs.challenged
        );
        let _ = writeln!(
            s,
            "understudy_register_total{{result=\"forbidden\"}} {}",
            rs.forbidden
        );
        let _ = writeln!(s, "# TYPE understudy_dialog_subscriptions gauge");
        let _ = writeln!(s, "understudy_dialog_subscriptions {}", self.blf.len());
        let _ = writeln!(s, "# TYPE understudy_limit_dropped_total counter");
        let digest_dropped = self.pair.as_ref().map_or(0, |p| p.digest.table.dropped);
        for (table, n) in [
            ("contacts_per_aor", self.registrar.location().evicted()),
            ("auth_failures", rs.failure_sources_evicted),
            ("subscriptions", self.blf.refused),
            ("digest", digest_dropped),
        ] {
            let _ = writeln!(s, "understudy_limit_dropped_total{{table=\"{table}\"}} {n}");
        }
        let bs = self.b2bua.stats;
        let _ = writeln!(s, "# TYPE understudy_calls gauge");
        let _ = writeln!(s, "understudy_calls {}", self.b2bua.call_count());
        let _ = writeln!(
            s,
            "understudy_calls_total{{event=\"created\"}} {}",
            bs.created
        );
        let _ = writeln!(
            s,
            "understudy_calls_total{{event=\"answered\"}} {}",
            bs.answered
        );
        let _ = writeln!(s, "understudy_calls_total{{event=\"ended\"}} {}", bs.ended);
        let _ = writeln!(
            s,
            "understudy_calls_total{{event=\"refused\"}} {}",
            bs.refused
        );
        let role = self.role();
        let _ = writeln!(s, "# TYPE understudy_role gauge");
        for (name, r) in [
            ("active", crate::pair::Role::Active),
            ("standby", crate::pair::Role::Standby),
            ("taking_over", crate::pair::Role::TakingOver),
        ] {
            let _ = writeln!(
                s,
                "understudy_role{{role=\"{name}\"}} {}",
                u8::from(role == r)
            );
        }
        let _ = writeln!(s, "understudy_epoch {}", self.epoch());
        if let Some(p) = &self.pair {
            let st = p.stats;
            let _ = writeln!(s, "# TYPE understudy_keepalives_total counter");
            let _ = writeln!(
                s,
                "understudy_keepalives_total{{dir=\"sent\"}} {}",
                st.keepalives_sent
            );
            let _ = writeln!(
                s,
                "understudy_keepalives_total{{dir=\"received\"}} {}",
                st.keepalives_received
            );
            let _ = writeln!(
                s,
                "understudy_keepalives_total{{dir=\"rejected\"}} {}",
                st.keepalives_rejected
            );
            let _ = writeln!(
                s,
                "understudy_keepalives_missed_total {}",
                p.machine.missed_total
            );
            let _ = writeln!(s, "understudy_takeovers_total {}", p.machine.takeovers);
            let _ = writeln!(
                s,
                "understudy_config_mismatch {}",
                u8::from(!p.config_match())
            );
            let _ = writeln!(
                s,
                "understudy_reg_notifies_total{{dir=\"sent\"}} {}",
                st.reg_notifies_sent
            );
            let _ = writeln!(
                s,
                "understudy_reg_notifies_total{{dir=\"received\"}} {}",
                st.reg_notifies_received
            );
            let _ = writeln!(s, "# TYPE understudy_reg_notify_bytes_total counter");
            let _ = writeln!(
                s,
                "understudy_reg_notify_bytes_total{{dir=\"sent\"}} {}",
                st.reg_notify_bytes_sent
            );
            let _ = writeln!(s, "# TYPE understudy_pair_refused_total counter");
            for (reason, n) in [
                ("replayed", st.replays_refused),
                ("wrong_source", st.wrong_source),
            ] {
                let _ = writeln!(
                    s,
                    "understudy_pair_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
            let _ = writeln!(s, "# TYPE understudy_reg_resyncs_total counter");
            let _ = writeln!(s, "understudy_reg_resyncs_total {}", st.reg_resyncs);
        }
        s
    }
}
