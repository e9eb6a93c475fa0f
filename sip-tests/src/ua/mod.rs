//! [`Ua`]: a scriptable SIP user agent over a real UDP socket on 127.0.0.1.
//!
//! A background task ([`recv`]) owns the receiving side of the socket. It absorbs
//! retransmissions (re-sending its last response, or its ACK for a retransmitted 2xx),
//! answers what a phone answers by itself according to the [`Policy`] (in-dialog BYE,
//! re-INVITE, OPTIONS, INFO, UPDATE; CANCEL with 200 + 487; digest challenges; ACK for 2xx),
//! plays queued [`Answer`] plans on new INVITEs, and queues every new message. The test reads
//! that queue with [`Ua::expect`] and its shorthands, and acts with the verbs in [`uac`] and
//! [`uas`].
//!
//! A UA bound with [`Ua::bind_tcp`] also listens on TCP on the same port ([`tcp`]); responses
//! go back over the transport (and connection) the request came on, in-dialog requests over
//! the dialog's transport, and requests outside a dialog over the server's
//! ([`Ua::set_server_tcp`]).
//!
//! It is also a "smart endpoint" for takeover tests ([`notifier`]): it answers dialog-state
//! queries (`SUBSCRIBE Event: dialog`) with the dialog-info of its dialogs (or refuses, or
//! stays silent, by policy), answers offerless re-INVITEs with an offer and insists on the
//! answer in the ACK, follows a new remote target, and obeys `NOTIFY Event: check-sync`.

mod answer;
mod build;
mod dialog;
mod inbox;
mod notifier;
mod recv;
mod state;
mod tcp;
pub mod uac;
pub mod uas;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use understudy::sip::{Method, Request, Response, SipMessage};

pub use answer::Answer;
pub use dialog::{Dialog, DialogId, DialogState};
pub use inbox::Incoming;
pub use state::{Peer, Policy, QueryReply, Reply, Transport};
pub use uac::Outgoing;

use inbox::Inbox;
use state::Shared;

/// A test user agent.
#[derive(Debug)]
pub struct Ua {
    shared: Arc<Shared>,
    inbox: Inbox,
    recv_task: JoinHandle<()>,
    wait: Duration,
}

impl Ua {
    /// Bind a UA for `user` on `127.0.0.1:0`. It has no server and no password yet.
    pub async fn bind(user: &str) -> Result<Self> {
        Self::bind_at(user, "127.0.0.1:0".parse()?, false).await
    }

    /// Bind a UA for `user` on UDP and TCP, the same port for both on 127.0.0.1. It still
    /// uses UDP outside dialogs until [`Self::set_server_tcp`].
    pub async fn bind_tcp(user: &str) -> Result<Self> {
        let mut last = None;
        for _ in 0..50 {
            match Self::bind_at(user, "127.0.0.1:0".parse()?, true).await {
                Ok(ua) => return Ok(ua),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no port")))
            .context("binding UDP and TCP on one port")
    }

    /// Bind a UA for `user` on `addr` (UDP, and TCP on the same port when `tcp`).
    pub async fn bind_at(user: &str, addr: SocketAddr, tcp: bool) -> Result<Self> {
        let std_sock = std::net::UdpSocket::bind(addr).context("binding the UA socket")?;
        Self::with_socket(user, std_sock, tcp).await
    }

    /// A UA for `user` on a socket bound elsewhere (e.g. in another network namespace,
    /// `natbed::udp_in`); UDP only unless `tcp`.
    pub async fn with_socket(user: &str, std_sock: std::net::UdpSocket, tcp: bool) -> Result<Self> {
        std_sock.set_nonblocking(true)?;
        // A burst of a few hundred re-INVITEs and ACKs at takeover must not overflow the
        // default receive buffer (an ACK for a 2xx is never retransmitted by itself).
        let _ = socket2::SockRef::from(&std_sock).set_recv_buffer_size(4 << 20);
        let send_sock = std_sock.try_clone()?;
        let sock = UdpSocket::from_std(std_sock)?;
        let local = sock.local_addr()?;
        let listener = if tcp {
            Some(tcp::listen(local).context("binding the UA's TCP port")?)
        } else {
            None
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let tcp_side = listener.as_ref().map(|_| tcp::TcpSide::default());
        let shared = Arc::new(Shared::new(
            Arc::new(sock),
            send_sock,
            local,
            user,
            tx,
            tcp_side,
        ));
        let _ = shared.me.set(Arc::downgrade(&shared));
        let recv_task = tokio::spawn(recv::run(shared.clone()));
        if let (Some(l), Some(side)) = (listener, &shared.tcp) {
            let t = tokio::spawn(tcp::accept_loop(Arc::downgrade(&shared), l));
            *side
                .listener
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t.abort_handle());
        }
        Ok(Self {
            shared,
            inbox: Inbox::new(rx),
            recv_task,
            wait: crate::WAIT,
        })
    }

    /// Where requests outside a dialog go (over UDP; our Contact is a UDP one).
    pub fn set_server(&self, server: SocketAddr) {
        self.shared.lock().server = Some(Peer::udp(server));
        *self
            .shared
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Transport::Udp;
    }

    /// Where requests outside a dialog go, over TCP; our Contact says `transport=tcp`. The
    /// UA must have been bound with [`Self::bind_tcp`].
    pub fn set_server_tcp(&self, server: SocketAddr) {
        assert!(
            self.shared.tcp.is_some(),
            "set_server_tcp needs a UA bound with Ua::bind_tcp"
        );
        self.shared.lock().server = Some(Peer::tcp(server));
        *self
            .shared
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Transport::Tcp;
    }

    /// Where requests outside a dialog go, over TLS (from the UA's TCP port); our Contact
    /// says `transport=tls`; the server's certificate must name its IP and chain to the CA
    /// in `ca` (PEM). The UA must have been bound with [`Self::bind_tcp`].
    pub fn set_server_tls(&self, server: SocketAddr, ca: &std::path::Path) -> Result<()> {
        let Some(tcp) = &self.shared.tcp else {
            anyhow::bail!("set_server_tls needs a UA bound with Ua::bind_tcp");
        };
        let config = understudy::tls::client_config(Some(ca), None).map_err(anyhow::Error::msg)?;
        *tcp.tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(config);
        self.shared.lock().server = Some(Peer::tls(server));
        *self
            .shared
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Transport::Tls;
        Ok(())
    }

    /// Protocol errors the UA saw (e.g. an ACK without the SDP answer it was owed).
    pub fn protocol_errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    /// How many dialog queries (`SUBSCRIBE Event: dialog`) the UA answered with a NOTIFY.
    pub fn queries_answered(&self) -> u32 {
        self.shared.lock().queries_answered
    }

    /// Close the TCP listener and every TCP connection: the UA becomes unreachable over TCP
    /// (a phone that lost its connection), though it can still open new connections.
    pub fn close_tcp(&self) {
        if let Some(t) = &self.shared.tcp {
            t.close();
        }
    }

    /// Peer addresses of the TCP connections the UA accepted so far.
    pub fn tcp_accepted(&self) -> Vec<SocketAddr> {
        self.shared
            .tcp
            .as_ref()
            .map(tcp::TcpSide::accepted)
            .unwrap_or_default()
    }

    /// The dialog-info document the UA would send now (RFC 4235).
    pub fn dialog_info(&self) -> String {
        let mut st = self.shared.lock();
        notifier::dialog_info(&self.shared, &mut st)
    }

    /// The password used to answer digest challenges.
    pub fn set_password(&self, password: &str) {
        self.shared.lock().password = Some(password.to_string());
    }

    /// Change the policy.
    pub fn set_policy(&self, f: impl FnOnce(&mut Policy)) {
        f(&mut self.shared.lock().policy);
    }

    /// How long expectations wait by default.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.shared.user
    }

    /// `sip:user@pbx.local`.
    pub fn aor(&self) -> String {
        self.shared.aor()
    }

    /// Our Contact URI, `sip:user@127.0.0.1:port` (`;transport=tcp` when using TCP).
    pub fn contact_uri(&self) -> String {
        self.shared.contact_uri()
    }

    /// The next received message for which `pred` holds, within the default wait.
    pub async fn expect(
        &mut self,
        what: &str,
        pred: impl Fn(&Incoming) -> bool,
    ) -> Result<Incoming> {
        let wait = self.wait;
        self.expect_within(wait, what, pred).await
    }

    /// The next received message for which `pred` holds, within `limit`.
    pub async fn expect_within(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Incoming) -> bool,
    ) -> Result<Incoming> {
        let what = format!("{} at {}: {what}", self.shared.user, self.shared.local);
        self.inbox.expect(limit, &what, pred).await
    }

    /// The next request with `method`.
    pub async fn expect_request(&mut self, method: Method) -> Result<Request> {
        let what = format!("{method} request");
        let m = self.expect(&what, |m| m.is_request(&method)).await?;
        Ok(m.request().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// The next INVITE outside a dialog (no To tag): a new call for us.
    pub async fn expect_new_invite(&mut self) -> Result<Request> {
        let m = self
            .expect("new INVITE", |m| {
                m.request()
                    .is_some_and(|r| r.method == Method::Invite && r.to_tag().is_none())
            })
            .await?;
        Ok(m.request().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// The next request with `method` in call `call_id`.
    pub async fn expect_request_in(&mut self, call_id: &str, method: Method) -> Result<Request> {
        let what = format!("{method} in {call_id}");
        let m = self
            .expect(&what, |m| {
                m.is_request(&method) && m.call_id() == Some(call_id)
            })
            .await?;
        Ok(m.request().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// The next response with `status` to a `method` request in `call_id`.
    pub async fn expect_status(
        &mut self,
        call_id: &str,
        method: Method,
        status: u16,
    ) -> Result<Response> {
        let what = format!("{status} to {method} in {call_id}");
        let m = self
            .expect(&what, |m| {
                m.is_response_to(call_id, &method)
                    && m.response().is_some_and(|r| r.status == status)
            })
            .await?;
        Ok(m.response().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// The next final response to a `method` request in `call_id`.
    pub async fn expect_final(&mut self, call_id: &str, method: Method) -> Result<Response> {
        let what = format!("final response to {method} in {call_id}");
        let m = self
            .expect(&what, |m| {
                m.is_response_to(call_id, &method) && m.response().is_some_and(|r| r.status >= 200)
            })
            .await?;
        Ok(m.response().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// Everything received and not yet taken by an expectation (for assertions that
    /// something did *not* arrive, after a barrier).
    pub fn take_unmatched(&mut self) -> Vec<Incoming> {
        self.inbox.drain()
    }

    /// How many retransmissions (of requests or responses) the UA absorbed so far.
    pub fn absorbed(&self) -> u64 {
        *self.shared.absorbed.borrow()
    }

    /// Wait until the UA has absorbed at least `n` retransmissions in total.
    pub async fn wait_absorbed(&self, n: u64, limit: Duration) -> Result<()> {
        let mut rx = self.shared.absorbed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|v| *v >= n))
            .await
            .with_context(|| {
                format!(
                    "{} absorbed fewer than {n} retransmissions in {limit:?}",
                    self.user()
                )
            })?
            .context("the UA is gone")?;
        Ok(())
    }

    /// Send the dialog's later requests to `addr` (same transport), as a phone whose
    /// outbound proxy moved would. The remote target is not changed.
    pub fn redirect_dialog(&self, id: &DialogId, addr: SocketAddr) -> Result<()> {
        let mut st = self.shared.lock();
        let d = st.dialogs.get_mut(id).context("no such dialog")?;
        d.peer = addr;
        Ok(())
    }

    /// Hold the call in dialog `id` (`true`) or take it off hold: later SDP of ours says
    /// so. Nothing is sent; a re-INVITE ([`Ua::reinvite`]) tells the peer.
    pub fn set_hold(&self, id: &DialogId, hold: bool) -> Result<()> {
        let mut st = self.shared.lock();
        st.dialogs.get_mut(id).context("no such dialog")?.hold = hold;
        Ok(())
    }

    /// A snapshot of one dialog.
    pub fn dialog(&self, id: &DialogId) -> Option<Dialog> {
        self.shared.lock().dialogs.get(id).cloned()
    }

    /// A snapshot of every dialog.
    pub fn dialogs(&self) -> Vec<Dialog> {
        self.shared.lock().dialogs.values().cloned().collect()
    }

    /// Dialogs that are early or confirmed.
    pub fn live_dialogs(&self) -> Vec<Dialog> {
        self.dialogs().into_iter().filter(Dialog::is_up).collect()
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        self.recv_task.abort();
        if let Some(t) = &self.shared.tcp {
            t.close();
        }
        for t in self.shared.lock().tasks.drain(..) {
            t.abort();
        }
    }
}
