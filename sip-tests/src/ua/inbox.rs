//! What the UA received, in order, and the `expect` API over it: the next message that
//! matches a predicate, within a time limit. Messages that do not match stay queued for
//! later expectations.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::mpsc;
use understudy::sip::{Message, Method, Request, Response, SipMessage};

/// One message received by a UA (retransmissions it already handled are not queued).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The message.
    pub msg: Message,
    /// Who sent it.
    pub source: SocketAddr,
    /// Over which transport.
    pub transport: super::state::Transport,
    /// When it arrived.
    pub received: Instant,
}

impl Incoming {
    /// The request, if it is one.
    pub fn request(&self) -> Option<&Request> {
        match &self.msg {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response, if it is one.
    pub fn response(&self) -> Option<&Response> {
        match &self.msg {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }

    /// Whether this is a request with `method`.
    pub fn is_request(&self, method: &Method) -> bool {
        self.request().is_some_and(|r| &r.method == method)
    }

    /// Whether this is a response in `call_id` to a request with `method`.
    pub fn is_response_to(&self, call_id: &str, method: &Method) -> bool {
        self.response().is_some_and(|r| {
            r.call_id().ok() == Some(call_id) && r.cseq().is_ok_and(|c| &c.method == method)
        })
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.msg.call_id().ok()
    }

    /// One line for logs and failure messages.
    pub fn summary(&self) -> String {
        let cid = self.call_id().unwrap_or("-");
        match &self.msg {
            Message::Request(r) => format!("{} {} (Call-ID {cid})", r.method, r.uri),
            Message::Response(r) => {
                let m = r.cseq().map(|c| c.to_string()).unwrap_or_default();
                format!("{} {} to {m} (Call-ID {cid})", r.status, r.reason)
            }
        }
    }
}

/// The receiving end of a UA's queue.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Incoming>,
    pending: VecDeque<Incoming>,
}

impl Inbox {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Incoming>) -> Self {
        Self {
            rx,
            pending: VecDeque::new(),
        }
    }

    /// The next message (queued first, then arriving) for which `pred` holds, waiting at
    /// most `limit`. Non-matching messages stay queued in order.
    pub(crate) async fn expect(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Incoming) -> bool,
    ) -> Result<Incoming> {
        if let Some(i) = self.pending.iter().position(&pred)
            && let Some(m) = self.pending.remove(i)
        {
            return Ok(m);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return Ok(m),
                Ok(Some(m)) => self.pending.push_back(m),
                Ok(None) => bail!("waiting for {what}: the UA's receive task ended"),
                Err(_) => {
                    let seen: Vec<String> = self.pending.iter().map(Incoming::summary).collect();
                    bail!(
                        "timed out after {limit:?} waiting for {what}; unmatched messages: {seen:#?}"
                    );
                }
            }
        }
    }

    /// Everything received so far and not yet taken by an expectation.
    pub(crate) fn drain(&mut self) -> Vec<Incoming> {
        while let Ok(m) = self.rx.try_recv() {
            self.pending.push_back(m);
        }
        self.pending.drain(..).collect()
    }
}
