//! The dialog event package as a notifier (RFC 4235): a user's phone (a busy-lamp field) or
//! a peer subscribes to a user's dialogs and gets `application/dialog-info+xml` built from the
//! calls this node handles. `Expires: 0` is a one-shot fetch; otherwise the subscription lasts
//! and a NOTIFY follows whenever the user's dialogs change (checked once a second).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::b2bua::{B2bua, CallState, Side};
use crate::dialog::{Dialog, LocalContact};
use crate::pair::dialoginfo::{self, DialogInfo, DialogReport};
use crate::sip::{HeaderName, Method, Request, SipMessage, Uri, new_tag, response_to};
use crate::transaction::{ServerTxId, TransactionLayer};
use crate::transport::Flow;

#[derive(Debug)]
struct Sub {
    user: String,
    dialog: Dialog,
    expires_at: Instant,
    version: u64,
    last: String,
}

/// Dialog-event subscriptions to our users.
#[derive(Debug, Default)]
pub(crate) struct Blf {
    subs: HashMap<String, Sub>,
}

/// The user's dialogs, from the user's point of view.
fn report(b2bua: &B2bua, user: &str, domain: &str, now: Instant) -> DialogInfo {
    let mut dialogs = Vec::new();
    for c in b2bua.calls() {
        let state = match c.state {
            CallState::Calling => "trying",
            CallState::Ringing => "early",
            _ => "confirmed",
        };
        let caller_user = Uri::parse(&c.caller).ok().and_then(|u| u.user);
        for side in [Side::A, Side::B] {
            let is_user = match side {
                Side::A => caller_user.as_deref() == Some(user),
                Side::B => c.callee == user,
            };
            if !is_user {
                continue;
            }
            let Some(d) = c.leg(side) else {
                continue;
            };
            dialogs.push(DialogReport {
                id: format!("{:016x}{}", c.token, side.letter()),
                call_id: d.call_id.clone(),
                local_tag: d.remote_tag.clone(),
                remote_tag: d.local_tag.clone(),
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
                local_target: Some(d.remote_target.clone()),
                remote_identity: Some(match side {
                    Side::A => format!("sip:{}@{domain}", c.callee),
                    Side::B => c.caller.clone(),
                }),
                remote_target: None,
            });
        }
    }
    DialogInfo {
        version: 0,
        full: true,
        entity: format!("sip:{user}@{domain}"),
        dialogs,
    }
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
                    last: String::new(),
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
        let info = report(b2bua, &user, domain, now);
        Self::notify(now, tx, me, sub, info, expires == 0);
        if expires == 0 {
            self.subs.remove(&call_id);
        }
    }

    fn notify(
        now: Instant,
        tx: &mut TransactionLayer,
        me: &LocalContact,
        sub: &mut Sub,
        mut info: DialogInfo,
        terminated: bool,
    ) {
        info.version = sub.version;
        sub.version += 1;
        let body = dialoginfo::to_xml(&info);
        sub.last = body.clone();
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
        n.body = Bytes::from(body);
        let _ = tx.send_request(now, &n, sub.dialog.next_hop());
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
        for sub in self.subs.values_mut() {
            let info = report(b2bua, &sub.user, domain, now);
            let mut probe = info.clone();
            probe.version = sub.version.saturating_sub(1);
            if dialoginfo::to_xml(&probe) != sub.last {
                Self::notify(now, tx, me, sub, info, false);
            }
        }
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
