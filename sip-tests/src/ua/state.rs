//! The state a UA shares between its owner (the test) and its receive task: socket, policy,
//! dialogs, and the transactions it is part of. The lock is a plain mutex and is never held
//! across an `.await`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use understudy::sip::{HeaderName, Method, Request, SipMessage, new_tag, response_to};

use super::answer::Answer;
use super::dialog::{Dialog, DialogId, DialogState};
use super::inbox::Incoming;

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP (the UA's datagram socket).
    Udp,
    /// TCP (connections from or to the UA's TCP port, framed by Content-Length).
    Tcp,
    /// TLS over connections the UA opens (from its TCP port), framed like TCP.
    Tls,
}

impl Transport {
    /// The Via token: `UDP` or `TCP`.
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

/// Where a message came from or goes to: an address and a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Socket address.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

impl Peer {
    /// A UDP peer.
    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Udp,
        }
    }

    /// A TCP peer.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Tcp,
        }
    }

    /// A TLS peer.
    pub fn tls(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Tls,
        }
    }
}

/// How the UA answers a dialog-state query (`SUBSCRIBE Event: dialog`, RFC 4235).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryReply {
    /// 200 (with our To tag), then one NOTIFY with the dialog-info of our dialogs.
    Notify,
    /// The NOTIFY first, then the 200 (the order a fast notifier may produce).
    NotifyFirst,
    /// Refuse with this status (e.g. 489 Bad Event): not a notifier.
    Refuse(u16),
    /// Do not answer at all (what many soft-phones do).
    Ignore,
}

/// How the UA answers one kind of request by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answer at once with this status (2xx answers to INVITE/UPDATE carry SDP).
    Status(u16),
    /// Do not answer: the test answers with [`super::Ua::reply`].
    Manual,
}

/// What the UA does without being asked. Every received message is queued for `expect`
/// whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Retry a request once with credentials after a 401/407 (the challenge is not queued).
    pub auto_auth: bool,
    /// Answer SHA-256 challenges when offered (otherwise the first, MD5, one).
    pub prefer_sha256: bool,
    /// ACK every 2xx to our INVITEs at once.
    pub auto_ack: bool,
    /// BYE in a dialog.
    pub bye: Reply,
    /// re-INVITE in a dialog.
    pub reinvite: Reply,
    /// Other requests in a dialog (OPTIONS, INFO, UPDATE, NOTIFY, ...).
    pub in_dialog: Reply,
    /// OPTIONS outside a dialog.
    pub options: Reply,
    /// `SUBSCRIBE Event: dialog` outside a dialog (other events get 489).
    pub dialog_query: QueryReply,
    /// `NOTIFY Event: check-sync` outside a dialog.
    pub check_sync: Reply,
    /// Drop every call (locally, without BYE: the old peer is gone) on a check-sync NOTIFY.
    pub drop_on_check_sync: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            auto_auth: true,
            prefer_sha256: false,
            auto_ack: true,
            bye: Reply::Status(200),
            reinvite: Reply::Status(200),
            in_dialog: Reply::Status(200),
            options: Reply::Status(200),
            dialog_query: QueryReply::Notify,
            check_sync: Reply::Status(200),
            drop_on_check_sync: false,
        }
    }
}

/// Transactions are keyed by top-Via branch and method (CANCEL shares its INVITE's branch).
pub(crate) type TxKey = (String, String);

/// A request we received and may answer.
#[derive(Debug)]
pub(crate) struct ServerTx {
    pub(crate) request: Request,
    pub(crate) source: Peer,
    pub(crate) to_tag: Option<String>,
    pub(crate) last: Option<Bytes>,
    pub(crate) final_status: Option<u16>,
}

/// A request we sent.
#[derive(Debug)]
pub(crate) struct ClientTx {
    pub(crate) request: Request,
    pub(crate) dest: Peer,
    pub(crate) seen: HashSet<(u16, Option<String>)>,
    pub(crate) auth_tried: bool,
}

/// Mutable UA state.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) server: Option<Peer>,
    pub(crate) password: Option<String>,
    pub(crate) policy: Policy,
    pub(crate) plans: VecDeque<Answer>,
    pub(crate) dialogs: HashMap<DialogId, Dialog>,
    pub(crate) server_txs: HashMap<TxKey, ServerTx>,
    pub(crate) client_txs: HashMap<TxKey, ClientTx>,
    /// ACKs for 2xx, by (Call-ID, CSeq, To tag): bytes, destination, and whether sent yet.
    /// A sent ACK is re-sent when its 2xx is retransmitted.
    pub(crate) acks: HashMap<(String, u32, String), (Bytes, Peer, bool)>,
    /// Branches of ACKs received (an ACK is queued once).
    pub(crate) acks_seen: HashSet<String>,
    /// Call-ID → the current transaction of our initial INVITE (it changes on auth retry).
    pub(crate) invites: HashMap<String, TxKey>,
    /// Call-ID → last CSeq used outside a dialog.
    pub(crate) out_cseq: HashMap<String, u32>,
    pub(crate) tasks: Vec<AbortHandle>,
    /// Protocol errors seen by the receive task (e.g. an ACK without the SDP answer we
    /// were owed): tests assert there are none.
    pub(crate) errors: Vec<String>,
    /// Dialog queries answered (200/202 + NOTIFY sent).
    pub(crate) queries_answered: u32,
    /// Subscription dialogs we created as notifier: Call-ID → our NOTIFY CSeq.
    pub(crate) notifier_cseq: HashMap<String, u32>,
    /// Version counter of our dialog-info documents.
    pub(crate) dialog_info_version: u64,
}

/// Everything a UA's receive task and its owner share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sock: Arc<UdpSocket>,
    send_sock: std::net::UdpSocket,
    pub(crate) local: SocketAddr,
    /// The TCP side, when the UA listens on TCP too (same port as UDP).
    pub(crate) tcp: Option<super::tcp::TcpSide>,
    /// Ourselves, for tasks started from `&self` (TCP connections).
    pub(crate) me: OnceLock<Weak<Shared>>,
    /// The transport of our Contact and of requests outside a dialog.
    pub(crate) transport: Mutex<Transport>,
    pub(crate) user: String,
    pub(crate) domain: String,
    pub(crate) inbox: mpsc::UnboundedSender<Incoming>,
    /// Retransmissions absorbed so far (requests and responses already handled).
    pub(crate) absorbed: watch::Sender<u64>,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(
        sock: Arc<UdpSocket>,
        send_sock: std::net::UdpSocket,
        local: SocketAddr,
        user: &str,
        inbox: mpsc::UnboundedSender<Incoming>,
        tcp: Option<super::tcp::TcpSide>,
    ) -> Self {
        Self {
            sock,
            send_sock,
            local,
            tcp,
            me: OnceLock::new(),
            transport: Mutex::new(Transport::Udp),
            user: user.to_string(),
            domain: "pbx.local".to_string(),
            inbox,
            absorbed: watch::Sender::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Lock the state (a panic elsewhere does not poison it for the rest of the test).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Send a message to `to` without awaiting: a datagram, or bytes on the TCP connection
    /// with that peer (opened first when there is none).
    pub(crate) fn send(&self, bytes: &[u8], to: Peer) {
        match to.transport {
            Transport::Udp => self.send_udp(bytes, to.addr),
            Transport::Tcp | Transport::Tls => {
                super::tcp::send(self, Bytes::copy_from_slice(bytes), to)
            }
        }
    }

    /// Record a protocol error (and print it at once).
    pub(crate) fn error(&self, st: &mut State, e: String) {
        eprintln!("ua {} at {}: PROTOCOL ERROR: {e}", self.user, self.local);
        st.errors.push(e);
    }

    /// The transport of our Contact and out-of-dialog requests.
    pub(crate) fn transport(&self) -> Transport {
        *self
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Send a datagram without awaiting, through a std clone of the socket (tokio's
    /// `try_send_to` refuses before the socket was first polled for writing). On loopback
    /// the send buffer does not stay full, so a `WouldBlock` is retried.
    pub(crate) fn send_udp(&self, bytes: &[u8], to: SocketAddr) {
        for _ in 0..1000 {
            match self.send_sock.send_to(bytes, to) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => {
                    eprintln!("ua {}: send to {to} failed: {e}", self.user);
                    return;
                }
            }
        }
        eprintln!("ua {}: send to {to} kept blocking; dropped", self.user);
    }

    /// Our Contact (with `;transport=tcp` when we use TCP).
    pub(crate) fn contact(&self) -> String {
        format!("<{}>", self.contact_uri())
    }

    /// Our Contact URI.
    pub(crate) fn contact_uri(&self) -> String {
        match self.transport() {
            Transport::Udp => format!("sip:{}@{}", self.user, self.local),
            Transport::Tcp => format!("sip:{}@{};transport=tcp", self.user, self.local),
            Transport::Tls => format!("sip:{}@{};transport=tls", self.user, self.local),
        }
    }

    /// Our address of record, `sip:user@domain`.
    pub(crate) fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    /// Count one absorbed retransmission.
    pub(crate) fn absorb(&self) {
        self.absorbed.send_modify(|n| *n += 1);
    }

    /// Queue a message for `expect`.
    pub(crate) fn deliver(&self, msg: understudy::sip::Message, source: Peer) {
        let _ = self.inbox.send(Incoming {
            msg,
            source: source.addr,
            transport: source.transport,
            received: std::time::Instant::now(),
        });
    }

    /// Answer the server transaction `key`. Returns `false` (and sends nothing) when it
    /// already has a final response or does not exist. Responses above 100 to a request
    /// without a To tag get our tag; INVITE responses with a tag create or update our dialog.
    pub(crate) fn respond(
        &self,
        st: &mut State,
        key: &TxKey,
        status: u16,
        body: Option<(&str, Bytes)>,
        extra: &[(HeaderName, String)],
    ) -> bool {
        let Some(tx) = st.server_txs.get_mut(key) else {
            return false;
        };
        if tx.final_status.is_some() {
            return false;
        }
        let req = tx.request.clone();
        let in_dialog = req.to_tag().is_some();
        let tag = if status > 100 && !in_dialog {
            Some(tx.to_tag.get_or_insert_with(new_tag).clone())
        } else {
            None
        };
        let mut r = response_to(&req, status, tag.as_deref());
        let is_invite = req.method == Method::Invite;
        if is_invite && status > 100 && status < 300 {
            r.headers.push(HeaderName::Contact, self.contact());
        }
        for (n, v) in extra {
            r.headers.push(n.clone(), v.clone());
        }
        if let Some((ct, b)) = body {
            r.headers.push(HeaderName::ContentType, ct);
            r.body = b;
        }
        let bytes = r.to_bytes();
        tx.last = Some(bytes.clone());
        if status >= 200 {
            tx.final_status = Some(status);
        }
        let source = tx.source;
        self.send(&bytes, source);
        self.after_response(st, &req, status, tag.as_deref(), source);
        true
    }

    /// Dialog bookkeeping after we answered `req`.
    fn after_response(
        &self,
        st: &mut State,
        req: &Request,
        status: u16,
        new_tag: Option<&str>,
        source: Peer,
    ) {
        let id_for = |local: &str| DialogId {
            call_id: req.call_id().unwrap_or_default().to_string(),
            local_tag: local.to_string(),
            remote_tag: req.from_tag().unwrap_or_default(),
        };
        match (&req.method, new_tag) {
            (Method::Invite, Some(tag)) if status > 100 => {
                let id = id_for(tag);
                if status >= 300 {
                    if let Some(d) = st.dialogs.get_mut(&id) {
                        d.state = DialogState::Terminated;
                    }
                    return;
                }
                if !st.dialogs.contains_key(&id)
                    && let Some(d) = Dialog::as_uas(req, tag, source)
                {
                    st.dialogs.insert(id.clone(), d);
                }
                if status >= 200
                    && let Some(d) = st.dialogs.get_mut(&id)
                {
                    d.state = DialogState::Confirmed;
                }
            }
            (Method::Bye, None) if (200..300).contains(&status) => {
                if let Some(tag) = req.to_tag()
                    && let Some(d) = st.dialogs.get_mut(&id_for(&tag))
                {
                    d.state = DialogState::Terminated;
                }
            }
            _ => {}
        }
    }
}
