//! The dialog event package as a notifier (RFC 4235): a user's phone (a busy-lamp field) or
//! a peer subscribes to a user's dialogs and gets `application/dialog-info+xml` built from the
//! calls this node handles. `Expires: 0` is a one-shot fetch; otherwise the subscription lasts
//! and a NOTIFY follows whenever the user's dialogs change (checked once a second).

use crate::entropy::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::b2bua::{B2bua, CallState, Side};
use crate::dialog::{Dialog, LocalContact};
use crate::net::Flow;
use crate::pair::dialoginfo::{self, DialogInfo, DialogReport};
use crate::sip::{HeaderName, Method, Request, Response, SipMessage, Uri, new_tag, response_to};
use crate::transaction::{ClientTxId, ServerTxId, TransactionLayer};

#[derive(Debug)]
struct Sub {
    user: String,
    dialog: Dialog,
    expires_at: Instant,
    version: u64,
    /// The dialogs last notified, without their durations (which change every second).
    last: Vec<DialogReport>,
}

/// Dialog-event subscriptions to our users, at most `limit` (`limits.subscriptions`).
#[derive(Debug)]
pub(crate) struct Blf {
    subs: HashMap<String, Sub>,
    /// Our NOTIFYs in flight, by the Call-ID of their subscription.
    notifies: HashMap<ClientTxId, String>,
    limit: usize,
    /// New subscriptions refused with 503 at the limit.
    pub(crate) refused: u64,
}

impl Blf {
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            subs: HashMap::default(),
            notifies: HashMap::default(),
            limit,
            refused: 0,
        }
    }
}

/// The dialogs of every user `wanted` accepts, from that user's point of view, in one pass
/// over the calls.
fn reports(
    b2bua: &B2bua,
    wanted: impl Fn(&str) -> bool,
    domain: &str,
    now: Instant,
) -> HashMap<String, Vec<DialogReport>> {
    let mut out: HashMap<String, Vec<DialogReport>> = HashMap::default();
    for c in b2bua.calls() {
        let state = match c.state {
            CallState::Calling => "trying",
            CallState::Ringing => "early",
            _ => "confirmed",
        };
        let caller_user = Uri::parse(&c.caller).ok().and_then(|u| u.user);
        for side in [Side::A, Side::B] {
            let user = match side {
                Side::A => caller_user.as_deref(),
                Side::B => Some(&*c.callee),
            };
            let (Some(user), Some(d)) = (user.filter(|u| wanted(u)), c.leg(side)) else {
                continue;
            };
            out.entry(user.to_string()).or_default().push(DialogReport {
                id: format!("{:016x}{}", c.token, side.letter()),
                call_id: d.call_id.to_string(),
                local_tag: d.remote_tag.to_string(),
                remote_tag: d.local_tag.to_string(),
                direction: Some(
                    if side == Side::A {
                        "initiator"
                    } else {
                        "recipient"
                    }
                    .into(),
                ),
                state: state.into(),
                duration: Some(now.saturating_duration_since(c.created).as_secs()),
                local_identity: Some(format!("sip:{user}@{domain}")),
                local_target: Some(d.remote_target.to_string()),
                remote_identity: Some(match side {
                    Side::A => format!("sip:{}@{domain}", c.callee),
                    Side::B => c.caller.to_string(),
                }),
                remote_target: None,
            });
        }
    }
    out
}

/// What a change is judged on: everything but the running duration.
fn comparable(dialogs: &[DialogReport]) -> Vec<DialogReport> {
    dialogs
        .iter()
        .map(|d| DialogReport {
            duration: None,
            ..d.clone()
        })
        .collect()
}

impl Blf {
    /// A SUBSCRIBE for `Event: dialog` (authorisation already checked).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_subscribe(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        b2bua: &B2bua,
        me: &LocalContact,
        domain: &str,
        id: ServerTxId,
        req: &Request,
        source: Flow,
    ) {
        let call_id = req.call_id().unwrap_or_default().to_string();
        let user = match self.subs.get(&call_id) {
            Some(s) => s.user.clone(),
            None => match Uri::parse(&req.uri).ok().and_then(|u| u.user_unescaped()) {
                Some(u) => u,
                None => {
                    let _ = tx.respond(now, id, &response_to(req, 404, Some(&new_tag())));
                    return;
                }
            },
        };
        let expires = req
            .header_u32(&HeaderName::Expires)
            .and_then(Result::ok)
            .unwrap_or(3600)
            .min(3600);
        if !self.subs.contains_key(&call_id) && self.subs.len() >= self.limit {
            self.refused += 1;
            tracing::warn!(
                limit = self.limit,
                "dialog subscription refused: limits.subscriptions reached"
            );
            let mut r = response_to(req, 503, Some(&new_tag()));
            r.headers.push(HeaderName::RetryAfter, "60");
            let _ = tx.respond(now, id, &r);
            return;
        }
        if !self.subs.contains_key(&call_id) {
            let tag = new_tag();
            let Some(mut d) = Dialog::as_uas(req, &tag, source) else {
                let _ = tx.respond(now, id, &response_to(req, 400, Some(&tag)));
                return;
            };
            d.state = crate::dialog::DialogState::Confirmed;
            self.subs.insert(
                call_id.clone(),
                Sub {
                    user: user.clone(),
                    dialog: d,
                    expires_at: now,
                    version: 0,
                    last: Vec::new(),
                },
            );
        }
        let Some(sub) = self.subs.get_mut(&call_id) else {
            return;
        };
        sub.expires_at = now + Duration::from_secs(u64::from(expires));
        let mut r = response_to(req, 200, Some(&sub.dialog.local_tag));
        r.headers.push(HeaderName::Expires, expires.to_string());
        r.headers
            .push(HeaderName::Contact, me.contact(source.proto));
        let _ = tx.respond(now, id, &r);
        let dialogs = reports(b2bua, |u| u == user, domain, now)
            .remove(&user)
            .unwrap_or_default();
        if let Some(n) = Self::notify(now, tx, me, sub, domain, dialogs, expires == 0) {
            self.notifies.insert(n, call_id.clone());
        }
        if expires == 0 {
            self.subs.remove(&call_id);
        }
    }

    /// Send the subscriber its user's dialogs; the NOTIFY's transaction.
    fn notify(
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        sub: &mut Sub,
        domain: &str,
        dialogs: Vec<DialogReport>,
        terminated: bool,
    ) -> Option<ClientTxId> {
        sub.last = comparable(&dialogs);
        let info = DialogInfo {
            version: sub.version,
            full: true,
            entity: format!("sip:{}@{domain}", sub.user),
            dialogs,
        };
        sub.version += 1;
        let left = sub.expires_at.saturating_duration_since(now).as_secs();
        let mut n = sub.dialog.request(Method::Notify, me, None);
        n.headers.push(HeaderName::Event, "dialog");
        n.headers.push(
            HeaderName::SubscriptionState,
            if terminated {
                "terminated;reason=timeout".to_string()
            } else {
                format!("active;expires={left}")
            },
        );
        n.headers
            .push(HeaderName::ContentType, "application/dialog-info+xml");
        n.body = Bytes::from(dialoginfo::to_xml(&info));
        tx.send_request(now, &n, sub.dialog.next_hop()).ok()
    }

    /// Once a second: expire subscriptions, notify changes.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        tx: &mut TransactionLayer,
        b2bua: &B2bua,
        me: &LocalContact,
        domain: &str,
    ) {
        self.subs.retain(|_, s| s.expires_at > now);
        if self.subs.is_empty() {
            return;
        }
        let users: HashSet<&str> = self.subs.values().map(|s| s.user.as_str()).collect();
        let all = reports(b2bua, |u| users.contains(u), domain, now);
        for (call_id, sub) in &mut self.subs {
            let dialogs = all.get(&sub.user).cloned().unwrap_or_default();
            if comparable(&dialogs) != sub.last
                && let Some(n) = Self::notify(now, tx, me, sub, domain, dialogs, false)
            {
                self.notifies.insert(n, call_id.clone());
            }
        }
    }

    /// The result of one of our NOTIFYs (`None`: no answer); `false` when it is not ours.
    /// A subscriber that no longer knows the subscription (481) or is gone is dropped.
    pub(crate) fn on_result(&mut self, id: ClientTxId, resp: Option<&Response>) -> bool {
        let status = resp.map_or(408, |r| r.status);
        if status < 200 {
            return self.notifies.contains_key(&id);
        }
        let Some(call_id) = self.notifies.remove(&id) else {
            return false;
        };
        if matches!(status, 408 | 481) && self.subs.remove(&call_id).is_some() {
            tracing::info!(
                call_id,
                status,
                "dialog subscriber gone: subscription dropped"
            );
        }
        true
    }

    /// Whether an in-dialog request (a refresh) belongs to one of our subscriptions.
    pub(crate) fn owns(&self, req: &Request) -> bool {
        req.method == Method::Subscribe && req.call_id().is_ok_and(|c| self.subs.contains_key(c))
    }

    /// Live subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.subs.len()
    }
}
