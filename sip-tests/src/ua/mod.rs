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
//! TCP is not implemented yet; the state is transport-agnostic (responses go back to the
//! source of the request, in-dialog requests to the dialog's peer), so a TCP flow can be
//! added next to the UDP socket.

mod answer;
mod build;
mod dialog;
mod inbox;
mod recv;
mod state;
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
pub use state::{Policy, Reply};
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
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").context("binding the UA socket")?;
        std_sock.set_nonblocking(true)?;
        let send_sock = std_sock.try_clone()?;
        let sock = UdpSocket::from_std(std_sock)?;
        let local = sock.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(Arc::new(sock), send_sock, local, user, tx));
        let recv_task = tokio::spawn(recv::run(shared.clone()));
        Ok(Self {
            shared,
            inbox: Inbox::new(rx),
            recv_task,
            wait: crate::WAIT,
        })
    }

    /// Where requests outside a dialog go.
    pub fn set_server(&self, server: SocketAddr) {
        self.shared.lock().server = Some(server);
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

    /// Our Contact URI, `sip:user@127.0.0.1:port`.
    pub fn contact_uri(&self) -> String {
        format!("sip:{}@{}", self.shared.user, self.shared.local)
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
        for t in self.shared.lock().tasks.drain(..) {
            t.abort();
        }
    }
}
