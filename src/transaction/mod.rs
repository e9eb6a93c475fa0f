//! The RFC 3261 §17 transaction layer, sans-IO: messages and clock readings in, bytes to send
//! and events for the transaction user out. The four state machines are Figures 5–8 of the
//! RFC (with RFC 6026's Accepted states); timers are named as in the RFC and driven only by
//! the `now` the caller passes, so tests run on a virtual clock.
//!
//! Verbs (quinn style): [`TransactionLayer::handle_request`], [`TransactionLayer::handle_response`],
//! [`TransactionLayer::send_request`], [`TransactionLayer::respond`],
//! [`TransactionLayer::handle_timeout`], [`TransactionLayer::poll_timeout`],
//! [`TransactionLayer::poll_transmit`], [`TransactionLayer::poll_event`].

mod client_invite;
mod client_non_invite;
mod ctx;
mod key;
mod server_invite;
mod server_non_invite;
mod timer;

#[cfg(test)]
mod tests;

/// The effect handle for one transaction, borrowing the layer's queues next to the entry.
macro_rules! ctx {
    ($layer:ident, $now:expr, $flow:expr, $tx:expr, $slots:expr) => {
        Ctx {
            now: $now,
            timers: $layer.timers,
            flow: $flow,
            tx: $tx,
            slots: $slots,
            heap: &mut $layer.heap,
            seq: &mut $layer.seq,
            transmits: &mut $layer.transmits,
        }
    };
}

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::entropy::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use self::client_invite::{ClientInvite, Up as ClientUp};
use self::client_non_invite::ClientNonInvite;
use self::ctx::{Ctx, Scheduled, Slots, TxRef};
pub use self::key::{ClientKey, ServerKey};
use self::server_invite::{ServerInvite, Up as ServerUp};
use self::server_non_invite::ServerNonInvite;
pub use self::timer::{Timer, Timers};
use crate::net::{Flow, Proto, Transmit};
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, Via};

/// A client transaction handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(pub u64);

/// A server transaction handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(pub u64);

/// What the transaction layer reports to its user.
#[derive(Debug, Clone)]
pub enum TxEvent {
    /// A new request (a server transaction was created; CANCEL gets its own).
    Request {
        /// The server transaction to respond on.
        id: ServerTxId,
        /// The request, with `received`/`rport` stamped on its top Via.
        request: Request,
        /// Where it came from.
        source: Flow,
    },
    /// An ACK that matched no non-2xx transaction: the ACK for a 2xx, for the dialog layer.
    Ack {
        /// The ACK.
        request: Request,
        /// Where it came from.
        source: Flow,
    },
    /// A response for a client transaction (for INVITE: 2xx retransmissions too).
    Response {
        /// The client transaction.
        id: ClientTxId,
        /// The response.
        response: Response,
    },
    /// Timer B or F fired: treat as 408 (RFC 3261 §8.1.3.1).
    Timeout {
        /// The client transaction.
        id: ClientTxId,
    },
    /// The transport could not reach the destination (RFC 3261 §8.1.3.1: treat as 503).
    Unreachable {
        /// The client transaction.
        id: ClientTxId,
    },
    /// No ACK arrived for a final response to an INVITE (Timer H, or Timer L after a 2xx).
    NoAck {
        /// The server transaction.
        id: ServerTxId,
    },
    /// A response that matched no client transaction.
    StrayResponse {
        /// The response.
        response: Response,
        /// Where it came from.
        source: Flow,
    },
}

/// Why a transaction operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request lacks a usable top Via branch or CSeq.
    #[error("request has no usable Via branch or CSeq")]
    NoKey,
    /// A transaction with the same key already exists.
    #[error("duplicate transaction")]
    Duplicate,
    /// ACK is never sent in a transaction of its own (RFC 3261 §17.1.1.3).
    #[error("ACK is sent statelessly")]
    AckIsStateless,
    /// The server transaction is gone.
    #[error("no such server transaction")]
    NoSuchTransaction,
}

#[derive(Debug)]
enum ClientFsm {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

#[derive(Debug)]
struct ClientEntry {
    key: ClientKey,
    flow: Flow,
    slots: Slots,
    fsm: ClientFsm,
}

#[derive(Debug)]
enum ServerFsm {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

#[derive(Debug)]
struct ServerEntry {
    key: ServerKey,
    flow: Flow,
    slots: Slots,
    fsm: ServerFsm,
    /// (Call-ID, CSeq) of an INVITE, for matching the ACK of its 2xx.
    dialog_key: Option<(String, u32)>,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Client transactions created.
    pub client_created: u64,
    /// Server transactions created.
    pub server_created: u64,
    /// Request retransmissions absorbed by server transactions.
    pub retransmissions_absorbed: u64,
    /// Client transaction timeouts (B/F).
    pub timeouts: u64,
    /// Requests refused with 503 because the server transaction table was full.
    pub overload_refused: u64,
}

/// The server transaction table never grows beyond this (a flood gets 503, not memory).
pub const MAX_SERVER_TRANSACTIONS: usize = 200_000;

/// The transaction layer.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: Timers,
    force_rport: bool,
    next_id: u64,
    clients: HashMap<u64, Box<ClientEntry>>,
    client_keys: HashMap<ClientKey, u64>,
    servers: HashMap<u64, Box<ServerEntry>>,
    server_keys: HashMap<ServerKey, u64>,
    accepted: HashMap<(String, u32), u64>,
    heap: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    stats: Stats,
    max_servers: usize,
}

impl TransactionLayer {
    /// A layer with these timers. With `force_rport`, responses over UDP always go to the
    /// source address and port (RFC 3581 behaviour for every request, as NAT needs).
    pub fn new(timers: Timers, force_rport: bool) -> Self {
        Self {
            timers,
            force_rport,
            next_id: 0,
            clients: HashMap::default(),
            client_keys: HashMap::default(),
            servers: HashMap::default(),
            server_keys: HashMap::default(),
            accepted: HashMap::default(),
            heap: BinaryHeap::new(),
            seq: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            max_servers: MAX_SERVER_TRANSACTIONS,
        }
    }

    /// Cap the server transaction table (default [`MAX_SERVER_TRANSACTIONS`]).
    pub fn set_max_server_transactions(&mut self, n: usize) {
        self.max_servers = n.max(1);
    }

    /// The timers in use.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// Live client transactions.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Live server transactions.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Handle a request from the network.
    pub fn handle_request(&mut self, now: Instant, mut req: Request, source: Flow) {
        // The top Via is parsed once here; stamping `received`/`rport` does not change the
        // key (branch and sent-by), so retransmissions are matched before any rewrite.
        let Ok(via) = req.top_via() else {
            return;
        };
        let Some(key) = ServerKey::from_via(&req, &via, &req.method) else {
            return;
        };
        if req.method == Method::Ack {
            if let Some(&id) = self.server_keys.get(&key)
                && let Some(e) = self.servers.get_mut(&id)
                && let ServerFsm::Invite(fsm) = &mut e.fsm
                && !matches!(fsm.state, server_invite::State::Accepted { .. })
            {
                let mut ctx = ctx!(self, now, e.flow, TxRef::Server(id), &mut e.slots);
                fsm.on_ack(&mut ctx);
                return;
            }
            if let (Ok(call_id), Ok(cseq)) = (req.call_id(), req.cseq())
                && let Some(&id) = self.accepted.get(&(call_id.to_string(), cseq.seq))
                && let Some(e) = self.servers.get_mut(&id)
                && let ServerFsm::Invite(fsm) = &mut e.fsm
            {
                let mut ctx = ctx!(self, now, e.flow, TxRef::Server(id), &mut e.slots);
                fsm.on_2xx_ack(&mut ctx);
            }
            stamp_via(&mut req, via, source);
            self.events.push_back(TxEvent::Ack {
                request: req,
                source,
            });
            return;
        }
        if let Some(&id) = self.server_keys.get(&key)
            && let Some(e) = self.servers.get_mut(&id)
        {
            self.stats.retransmissions_absorbed += 1;
            let mut ctx = ctx!(self, now, e.flow, TxRef::Server(id), &mut e.slots);
            match &mut e.fsm {
                ServerFsm::Invite(f) => f.on_retransmission(&mut ctx),
                ServerFsm::NonInvite(f) => f.on_retransmission(&mut ctx),
            }
            return;
        }
        if self.servers.len() >= self.max_servers {
            // Overload: refuse statelessly rather than grow without bound (RFC 3261 §21.5.4).
            self.stats.overload_refused += 1;
            let mut r = crate::sip::response_to(&req, 503, Some(&crate::sip::new_tag()));
            r.headers.push(HeaderName::RetryAfter, "5");
            self.transmits.push_back(Transmit {
                flow: source,
                bytes: r.to_bytes(),
            });
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.stats.server_created += 1;
        let flow = response_flow(&via, source, self.force_rport);
        stamp_via(&mut req, via, source);
        let (fsm, dialog_key) = if req.method == Method::Invite {
            let dk = match (req.call_id(), req.cseq()) {
                (Ok(c), Ok(s)) => Some((c.to_string(), s.seq)),
                _ => None,
            };
            (ServerFsm::Invite(ServerInvite::new()), dk)
        } else {
            (ServerFsm::NonInvite(ServerNonInvite::new()), None)
        };
        self.server_keys.insert(key.clone(), id);
        self.servers.insert(
            id,
            Box::new(ServerEntry {
                key,
                flow,
                slots: Slots::default(),
                fsm,
                dialog_key,
            }),
        );
        if req.method == Method::Invite {
            // RFC 3261 §17.2.1: answer 100 at once so the client stops retransmitting.
            let trying = crate::sip::response_to(&req, 100, None);
            let _ = self.respond(now, ServerTxId(id), &trying);
        }
        self.events.push_back(TxEvent::Request {
            id: ServerTxId(id),
            request: req,
            source,
        });
    }

    /// Handle a response from the network.
    pub fn handle_response(&mut self, now: Instant, resp: Response, source: Flow) {
        let Some(key) = ClientKey::of_response(&resp) else {
            return;
        };
        let Some(&id) = self.client_keys.get(&key) else {
            self.events.push_back(TxEvent::StrayResponse {
                response: resp,
                source,
            });
            return;
        };
        let Some(e) = self.clients.get_mut(&id) else {
            return;
        };
        let mut ctx = ctx!(self, now, e.flow, TxRef::Client(id), &mut e.slots);
        let up = match &mut e.fsm {
            ClientFsm::Invite(f) => f.on_response(resp, &mut ctx),
            ClientFsm::NonInvite(f) => f.on_response(resp, &mut ctx),
        };
        self.client_up(id, up);
        self.reap_client(id);
    }

    fn client_up(&mut self, id: u64, up: ClientUp) {
        match up {
            ClientUp::Nothing => {}
            ClientUp::Response(response) => self.events.push_back(TxEvent::Response {
                id: ClientTxId(id),
                response,
            }),
            ClientUp::Timeout => {
                self.stats.timeouts += 1;
                self.events
                    .push_back(TxEvent::Timeout { id: ClientTxId(id) });
            }
        }
    }

    /// Start a client transaction for `req` (which must carry our Via with a fresh branch).
    pub fn send_request(
        &mut self,
        now: Instant,
        req: &Request,
        flow: Flow,
    ) -> Result<ClientTxId, Error> {
        if req.method == Method::Ack {
            return Err(Error::AckIsStateless);
        }
        let key = ClientKey::of_request(req).ok_or(Error::NoKey)?;
        if self.client_keys.contains_key(&key) {
            return Err(Error::Duplicate);
        }
        self.next_id += 1;
        let id = self.next_id;
        self.stats.client_created += 1;
        let bytes = req.to_bytes();
        let mut slots = Slots::default();
        let mut ctx = ctx!(self, now, flow, TxRef::Client(id), &mut slots);
        let fsm = if req.method == Method::Invite {
            ClientFsm::Invite(ClientInvite::start(req, bytes, &mut ctx))
        } else {
            ClientFsm::NonInvite(ClientNonInvite::start(bytes, &mut ctx))
        };
        self.client_keys.insert(key.clone(), id);
        self.clients.insert(
            id,
            Box::new(ClientEntry {
                key,
                flow,
                slots,
                fsm,
            }),
        );
        Ok(ClientTxId(id))
    }

    /// Send a response on a server transaction.
    pub fn respond(&mut self, now: Instant, id: ServerTxId, resp: &Response) -> Result<(), Error> {
        let e = self
            .servers
            .get_mut(&id.0)
            .ok_or(Error::NoSuchTransaction)?;
        let bytes = resp.to_bytes();
        let mut ctx = ctx!(self, now, e.flow, TxRef::Server(id.0), &mut e.slots);
        match &mut e.fsm {
            ServerFsm::Invite(f) => {
                let was_final = f.has_final();
                f.respond(resp.status, bytes, &mut ctx);
                if !was_final
                    && (200..300).contains(&resp.status)
                    && let Some(dk) = e.dialog_key.clone()
                {
                    self.accepted.insert(dk, id.0);
                }
            }
            ServerFsm::NonInvite(f) => f.respond(resp.status, bytes, &mut ctx),
        }
        self.reap_server(id.0);
        Ok(())
    }

    /// Whether a server transaction still waits for its final response.
    pub fn is_pending(&self, id: ServerTxId) -> bool {
        self.servers.get(&id.0).is_some_and(|e| match &e.fsm {
            ServerFsm::Invite(f) => !f.has_final(),
            ServerFsm::NonInvite(f) => !f.has_final(),
        })
    }

    /// The INVITE server transaction a CANCEL refers to (RFC 3261 §9.2), if it exists.
    pub fn cancel_target(&self, cancel: &Request) -> Option<ServerTxId> {
        let key = ServerKey::with_method(cancel, &Method::Invite)?;
        self.server_keys.get(&key).map(|&id| ServerTxId(id))
    }

    /// The transport could not reach `flow`: every client transaction still waiting for a
    /// final response there fails at once.
    pub fn transport_error(&mut self, flow: Flow) {
        let ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, e)| e.flow.proto == flow.proto && e.flow.remote == flow.remote)
            .filter(|(_, e)| match &e.fsm {
                ClientFsm::Invite(f) => matches!(
                    f.state,
                    client_invite::State::Calling { .. } | client_invite::State::Proceeding
                ),
                ClientFsm::NonInvite(f) => matches!(
                    f.state,
                    client_non_invite::State::Trying { .. } | client_non_invite::State::Proceeding
                ),
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(e) = self.clients.remove(&id) {
                self.client_keys.remove(&e.key);
            }
            self.events
                .push_back(TxEvent::Unreachable { id: ClientTxId(id) });
        }
    }

    /// Queue bytes outside any transaction (ACK for 2xx, stateless replies).
    pub fn send_stateless(&mut self, flow: Flow, bytes: Bytes) {
        self.transmits.push_back(Transmit { flow, bytes });
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse(s)) = self.heap.peek().copied() {
            if s.at > now {
                break;
            }
            self.heap.pop();
            match s.tx {
                TxRef::Client(id) => {
                    let Some(e) = self.clients.get_mut(&id) else {
                        continue;
                    };
                    if !e.slots.is_current(s.timer, s.seq) {
                        continue;
                    }
                    e.slots.clear(s.timer);
                    let t = timer_of(s.timer);
                    let mut ctx = ctx!(self, s.at, e.flow, s.tx, &mut e.slots);
                    let up = match &mut e.fsm {
                        ClientFsm::Invite(f) => f.on_timer(t, &mut ctx),
                        ClientFsm::NonInvite(f) => f.on_timer(t, &mut ctx),
                    };
                    self.client_up(id, up);
                    self.reap_client(id);
                }
                TxRef::Server(id) => {
                    let Some(e) = self.servers.get_mut(&id) else {
                        continue;
                    };
                    if !e.slots.is_current(s.timer, s.seq) {
                        continue;
                    }
                    e.slots.clear(s.timer);
                    let t = timer_of(s.timer);
                    let mut ctx = ctx!(self, s.at, e.flow, s.tx, &mut e.slots);
                    let up = match &mut e.fsm {
                        ServerFsm::Invite(f) => f.on_timer(t, &mut ctx),
                        ServerFsm::NonInvite(f) => {
                            f.on_timer(t);
                            ServerUp::Nothing
                        }
                    };
                    if up == ServerUp::NoAck {
                        self.events.push_back(TxEvent::NoAck { id: ServerTxId(id) });
                    }
                    self.reap_server(id);
                }
            }
        }
    }

    fn reap_client(&mut self, id: u64) {
        let done = self.clients.get(&id).is_some_and(|e| match &e.fsm {
            ClientFsm::Invite(f) => f.is_terminated(),
            ClientFsm::NonInvite(f) => f.is_terminated(),
        });
        if done && let Some(e) = self.clients.remove(&id) {
            self.client_keys.remove(&e.key);
        }
    }

    fn reap_server(&mut self, id: u64) {
        let done = self.servers.get(&id).is_some_and(|e| match &e.fsm {
            ServerFsm::Invite(f) => f.is_terminated(),
            ServerFsm::NonInvite(f) => f.is_terminated(),
        });
        if done && let Some(e) = self.servers.remove(&id) {
            self.server_keys.remove(&e.key);
            if let Some(dk) = e.dialog_key
                && self.accepted.get(&dk) == Some(&id)
            {
                self.accepted.remove(&dk);
            }
        }
    }

    /// Give back table memory after a burst: the tables are sized for the busiest moment, and
    /// a B2BUA holding many calls should not keep that peak forever.
    pub fn compact(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 1024 && m.capacity() > 4 * m.len() {
                m.shrink_to(m.len() * 2);
            }
        }
        shrink(&mut self.clients);
        shrink(&mut self.client_keys);
        shrink(&mut self.servers);
        shrink(&mut self.server_keys);
        shrink(&mut self.accepted);
        if self.heap.capacity() > 1024 && self.heap.capacity() > 4 * self.heap.len() {
            self.heap.shrink_to(self.heap.len() * 2);
        }
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Drop stale heads so the driver does not wake for nothing.
        while let Some(Reverse(s)) = self.heap.peek() {
            let live = match s.tx {
                TxRef::Client(id) => self
                    .clients
                    .get(&id)
                    .is_some_and(|e| e.slots.is_current(s.timer, s.seq)),
                TxRef::Server(id) => self
                    .servers
                    .get(&id)
                    .is_some_and(|e| e.slots.is_current(s.timer, s.seq)),
            };
            if live {
                return Some(s.at);
            }
            self.heap.pop();
        }
        None
    }

    /// The next message to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }
}

fn timer_of(idx: ctx::TimerIdx) -> Timer {
    const ALL: [Timer; 13] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
        Timer::M,
        Timer::Retransmit2xx,
    ];
    ALL.get(idx.0 as usize).copied().unwrap_or(Timer::A)
}

/// Add `received` (and the `rport` value when asked for) to the top Via (RFC 3261 §18.2.1,
/// RFC 3581 §4). `via` is the request's top Via, already parsed.
fn stamp_via(req: &mut Request, mut via: Via, source: Flow) {
    let ip = source.remote.ip();
    let mut changed = false;
    if via.sent_by_addr().map(|a| a.ip()) != Some(ip) {
        via.params.set("received", Some(&ip.to_string()));
        changed = true;
    }
    if via.params.get("rport") == Some(None) {
        via.params
            .set("rport", Some(&source.remote.port().to_string()));
        changed = true;
    }
    if changed {
        req.headers.replace_first(&HeaderName::Via, via.to_string());
    }
}

/// Where responses to a request go (RFC 3261 §18.2.2, RFC 3581 §4): over TCP and with
/// `rport` to the source; otherwise to the Via port at the address the request came from
/// (the Via host when it is that address, else the `received` we stamp, which is the same).
fn response_flow(via: &Via, source: Flow, force_rport: bool) -> Flow {
    if source.proto == Proto::Tcp || force_rport || via.params.has("rport") {
        return source;
    }
    Flow::udp(SocketAddr::new(
        source.remote.ip(),
        via.port.unwrap_or(5060),
    ))
}
