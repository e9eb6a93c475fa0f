//! The server's outbound registrations to trunks (`trunkreg`): only a node that takes calls
//! (the active of a pair, or a single node) registers; a node that stops taking calls, or
//! shuts down, removes its contact. A new active therefore registers its own address as
//! soon as it takes over, and the carrier's calls follow it.

use std::time::Instant;

use serde_json::Value;

use crate::config::Config;
use crate::dialog::LocalContact;
use crate::dns::Dns;
use crate::entropy::HashMap;
use crate::sip::Response;
use crate::transaction::{ClientTxId, TransactionLayer};
use crate::trunkreg::TrunkRegistration;

/// Every trunk registration of this node, and the REGISTER transactions in flight.
#[derive(Debug, Default)]
pub(crate) struct TrunkRegs {
    regs: Vec<TrunkRegistration>,
    txs: HashMap<ClientTxId, usize>,
    /// Shutting down: nothing starts again.
    stopped: bool,
}

impl TrunkRegs {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            regs: cfg
                .trunks
                .iter()
                .filter_map(TrunkRegistration::new)
                .collect(),
            txs: HashMap::default(),
            stopped: false,
        }
    }

    /// Start or stop with the role (`takes_calls`), and send what is due.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        dns: &Dns,
        takes_calls: bool,
    ) {
        if self.stopped {
            return;
        }
        for i in 0..self.regs.len() {
            let Some(reg) = self.regs.get_mut(i) else {
                continue;
            };
            let off = matches!(reg.state(), crate::trunkreg::RegState::Off);
            if takes_calls && off {
                reg.start(now);
            } else if !takes_calls && !off {
                tracing::info!(
                    trunk = reg.trunk(),
                    "not active: removing our trunk registration"
                );
                let r = reg.stop(now, me);
                self.send(now, tx, dns, i, r);
                continue;
            }
            let r = reg.poll(now, me);
            self.send(now, tx, dns, i, r);
        }
    }

    /// Shutdown: remove every registration the carriers have.
    pub(crate) fn stop_all(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        dns: &Dns,
    ) {
        self.stopped = true;
        for i in 0..self.regs.len() {
            let r = self.regs.get_mut(i).and_then(|reg| reg.stop(now, me));
            self.send(now, tx, dns, i, r);
        }
    }

    fn send(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        dns: &Dns,
        i: usize,
        r: Option<crate::sip::Request>,
    ) {
        let (Some(r), Some(reg)) = (r, self.regs.get_mut(i)) else {
            return;
        };
        let resolved = reg
            .host_name()
            .map(|h| dns.targets(h, now))
            .unwrap_or_default();
        let Some(flow) = reg.flow(&resolved) else {
            tracing::debug!(
                trunk = reg.trunk(),
                "trunk host not resolved yet: REGISTER waits"
            );
            reg.retry_soon(now);
            return;
        };
        match tx.send_request(now, &r, flow) {
            Ok(id) => {
                self.txs.insert(id, i);
            }
            Err(e) => {
                tracing::warn!(trunk = reg.trunk(), error = %e, "cannot send REGISTER");
                reg.on_timeout(now);
            }
        }
    }

    /// Whether a REGISTER is still waiting for its final response.
    pub(crate) fn busy(&self) -> bool {
        !self.txs.is_empty()
    }

    /// Whether `id` is one of our REGISTERs.
    pub(crate) fn owns(&self, id: ClientTxId) -> bool {
        self.txs.contains_key(&id)
    }

    /// The final response to one of our REGISTERs (`None`: timeout or unreachable).
    pub(crate) fn on_result(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        dns: &Dns,
        id: ClientTxId,
        resp: Option<&Response>,
    ) {
        let Some(i) = self.txs.remove(&id) else {
            return;
        };
        let Some(reg) = self.regs.get_mut(i) else {
            return;
        };
        let next = match resp {
            Some(r) => reg.on_response(now, me, r),
            None => {
                reg.on_timeout(now);
                None
            }
        };
        self.send(now, tx, dns, i, next);
    }

    /// When a registration needs the clock next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.regs
            .iter()
            .filter_map(TrunkRegistration::next_wake)
            .min()
    }

    /// Per trunk name: the registration's state (`/trunks`, `/status`).
    pub(crate) fn view(&self, now: Instant) -> HashMap<String, Value> {
        self.regs
            .iter()
            .map(|r| (r.trunk().to_string(), r.view(now)))
            .collect()
    }

    /// `(trunk, registered, failures since the last success)` for the metrics.
    pub(crate) fn gauges(&self) -> Vec<(&str, bool, u32)> {
        self.regs
            .iter()
            .map(|r| {
                let registered = matches!(r.state(), crate::trunkreg::RegState::Registered { .. });
                (r.trunk(), registered, r.failures())
            })
            .collect()
    }
}
