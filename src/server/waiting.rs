//! The takeover's queue of calls waiting for the pacer to let their re-bind start: first in,
//! first out, and found by either leg's Call-ID in constant time. A BYE that arrives for a
//! call not yet re-bound claims it from the queue; during the takeover of 100,000 calls
//! thousands of BYEs a second arrive for calls already re-bound, and each must learn that
//! its call is not waiting without a look at the whole queue.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::b2bua::Adopted;
use crate::entropy::HashMap;

/// A call waiting for the pacer, with its legs' destinations (worked out once: a tick may
/// look at it many times).
#[derive(Debug)]
pub(crate) struct Waiting {
    /// Boxed: the queue's table moves its entries as it grows, and a call is large.
    pub(crate) call: Box<Adopted>,
    pub(crate) dests: [SocketAddr; 2],
}

impl Waiting {
    pub(crate) fn new(call: Box<Adopted>) -> Self {
        let dests = [call.a.next_hop().remote, call.b.next_hop().remote];
        Self { call, dests }
    }
}

/// The queue. A claimed call leaves its token behind in `order`; the token is skipped when it
/// reaches the front (it is no longer in `calls`).
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    /// Call tokens, oldest first.
    order: VecDeque<u64>,
    /// The waiting calls by token.
    calls: HashMap<u64, Waiting>,
    /// Both legs' Call-IDs of every waiting call, to its token.
    by_call_id: HashMap<String, u64>,
}

impl WaitQueue {
    /// Calls waiting.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Queue a call at the back.
    pub(crate) fn push_back(&mut self, w: Waiting) {
        let token = w.call.token;
        self.by_call_id.insert(w.call.a.call_id.to_string(), token);
        self.by_call_id.insert(w.call.b.call_id.to_string(), token);
        self.order.push_back(token);
        self.calls.insert(token, w);
    }

    /// The call at the front.
    pub(crate) fn front(&mut self) -> Option<&Waiting> {
        loop {
            let token = *self.order.front()?;
            if let Some(w) = self.calls.get(&token) {
                return Some(w);
            }
            self.order.pop_front();
        }
    }

    /// Take the call at the front out of the queue.
    pub(crate) fn pop_front(&mut self) -> Option<Waiting> {
        while let Some(token) = self.order.pop_front() {
            if let Some(w) = self.remove(token) {
                return Some(w);
            }
        }
        None
    }

    /// Move the call at the front to the back (its destinations are full for now).
    pub(crate) fn rotate(&mut self) {
        // A stale token moved along is dropped when it reaches the front again.
        if let Some(token) = self.order.pop_front() {
            self.order.push_back(token);
        }
    }

    /// Take the call with a leg of this Call-ID out of the queue, wherever it is.
    pub(crate) fn claim(&mut self, call_id: &str) -> Option<Waiting> {
        let token = *self.by_call_id.get(call_id)?;
        self.remove(token)
    }

    fn remove(&mut self, token: u64) -> Option<Waiting> {
        let w = self.calls.remove(&token)?;
        // A Call-ID another waiting call also names (a later entry took the index over)
        // stays indexed for that call.
        for id in [&w.call.a.call_id, &w.call.b.call_id] {
            if self.by_call_id.get(&**id) == Some(&token) {
                self.by_call_id.remove(&**id);
            }
        }
        if self.calls.is_empty() {
            // Nothing left for the stale tokens to point at.
            self.order.clear();
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b2bua::Source;
    use crate::dialog::{Dialog, DialogState};
    use crate::net::Flow;

    fn dialog(call_id: &str, port: u16) -> Dialog {
        Dialog {
            call_id: call_id.into(),
            local_tag: "l".into(),
            remote_tag: "r".into(),
            local_uri: "sip:l@192.0.2.1".into(),
            remote_uri: "sip:r@192.0.2.2".into(),
            local_cseq: 1,
            remote_cseq: None,
            route_set: Box::default(),
            remote_target: format!("sip:r@192.0.2.2:{port}").into(),
            flow: Flow::udp(SocketAddr::from(([192, 0, 2, 2], port))),
            pinned: false,
            state: DialogState::Confirmed,
        }
    }

    fn waiting(token: u64) -> Waiting {
        Waiting::new(Box::new(Adopted {
            token,
            a: dialog(&format!("a{token}"), 5060),
            b: dialog(&format!("b{token}"), 5070),
            caller: "c".into(),
            callee: "d".into(),
            start_ms: 0,
            source: Source::Digest,
            transfer_of: None,
        }))
    }

    fn tokens(q: &mut WaitQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop_front().map(|w| w.call.token)).collect()
    }

    #[test]
    fn first_in_first_out_with_rotation() {
        let mut q = WaitQueue::default();
        for t in 1..=3 {
            q.push_back(waiting(t));
        }
        assert_eq!(q.front().map(|w| w.call.token), Some(1));
        q.rotate();
        assert_eq!(q.len(), 3);
        assert_eq!(tokens(&mut q), vec![2, 3, 1]);
        assert!(q.is_empty());
        assert_eq!(q.front().map(|w| w.call.token), None);
    }

    #[test]
    fn either_legs_call_id_claims_the_call_wherever_it_waits() {
        let mut q = WaitQueue::default();
        for t in 1..=4 {
            q.push_back(waiting(t));
        }
        assert_eq!(q.claim("b3").map(|w| w.call.token), Some(3));
        assert_eq!(q.claim("a3").map(|w| w.call.token), None, "claimed once");
        assert_eq!(q.claim("a1").map(|w| w.call.token), Some(1));
        assert_eq!(q.claim("nobody").map(|w| w.call.token), None);
        assert_eq!(q.len(), 2);
        assert_eq!(q.front().map(|w| w.call.token), Some(2));
        assert_eq!(tokens(&mut q), vec![2, 4]);
        // A call that left the queue cannot be claimed any more.
        assert!(q.claim("a2").is_none());
    }

    /// Two waiting calls naming the same Call-ID: the first leaving the queue does not make
    /// the other unclaimable.
    #[test]
    fn a_shared_call_id_stays_claimable_for_the_call_still_waiting() {
        let mut q = WaitQueue::default();
        q.push_back(waiting(1));
        let mut w = waiting(2);
        w.call.a.call_id = "a1".into();
        q.push_back(w);
        assert_eq!(q.pop_front().map(|w| w.call.token), Some(1));
        assert_eq!(q.claim("a1").map(|w| w.call.token), Some(2));
    }
}
