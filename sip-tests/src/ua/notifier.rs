//! The "smart endpoint" side of a UA: what a hardware phone or a trunk that supports the
//! takeover does when a new active asks for its calls or resets it.
//!
//! - `SUBSCRIBE Event: dialog` (RFC 6665, RFC 4235) outside a dialog: by
//!   [`super::Policy::dialog_query`], 200 with our To tag then one NOTIFY in the new
//!   subscription dialog (a new client transaction; `Subscription-State: terminated` for
//!   `Expires: 0`) carrying `application/dialog-info+xml` with every early or confirmed dialog
//!   of ours, seen from our side (`local-tag` = our tag, `remote-tag` = the peer's); or the
//!   NOTIFY first; or a refusal (489: not a notifier); or silence. Other events get 489.
//! - `NOTIFY Event: check-sync` outside a dialog (the cold reset): answered by
//!   [`super::Policy::check_sync`], and with [`super::Policy::drop_on_check_sync`] every call
//!   is dropped locally (the peer those dialogs pointed to is gone).

use std::fmt::Write as _;

use bytes::Bytes;
use understudy::sip::{HeaderName, Method, Request, SipMessage, new_tag};

use super::build::{NewRequest, branch_of, set_body};
use super::dialog::{DialogState, uri_addr};
use super::state::{ClientTx, Peer, QueryReply, Reply, Shared, State, Transport, TxKey};

/// The event package of a request (`Event: dialog;id=1` → `dialog`), lower-cased.
pub(crate) fn event_package(req: &Request) -> String {
    req.headers
        .get(&HeaderName::Event)
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `<sip:x@y>;p` or `"Name" <sip:x@y>` → `sip:x@y`.
fn bare_uri(name_addr: &str) -> String {
    match (name_addr.find('<'), name_addr.find('>')) {
        (Some(a), Some(b)) if a < b => name_addr[a + 1..b].to_string(),
        _ => name_addr
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// The dialog-info document of our early and confirmed dialogs (RFC 4235 §4), with numeric
/// `id`s as phones use.
pub(crate) fn dialog_info(shared: &Shared, st: &mut State) -> String {
    st.dialog_info_version += 1;
    let mut dialogs: Vec<_> = st.dialogs.values().filter(|d| d.is_up()).collect();
    dialogs.sort_by_key(|d| d.created);
    let mut s = String::with_capacity(200 + 520 * dialogs.len());
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{}\" \
         state=\"full\" entity=\"{}\">\r\n",
        st.dialog_info_version - 1,
        esc(&shared.aor())
    );
    let contact = shared.contact_uri();
    for (i, d) in dialogs.into_iter().enumerate() {
        let state = match d.state {
            DialogState::Early => "early",
            _ => "confirmed",
        };
        let _ = write!(
            s,
            "  <dialog id=\"{}\" call-id=\"{}\" local-tag=\"{}\" remote-tag=\"{}\" direction=\"{}\">\r\n\
             \x20   <state>{state}</state>\r\n\
             \x20   <duration>{}</duration>\r\n\
             \x20   <local>\r\n\
             \x20     <identity>{}</identity>\r\n\
             \x20     <target uri=\"{}\"/>\r\n\
             \x20   </local>\r\n\
             \x20   <remote>\r\n\
             \x20     <identity>{}</identity>\r\n\
             \x20     <target uri=\"{}\"/>\r\n\
             \x20   </remote>\r\n\
             \x20 </dialog>\r\n",
            i + 1,
            esc(&d.id.call_id),
            esc(&d.id.local_tag),
            esc(&d.id.remote_tag),
            if d.initiator {
                "initiator"
            } else {
                "recipient"
            },
            d.created.elapsed().as_secs(),
            esc(&bare_uri(&d.local_uri)),
            esc(&contact),
            esc(&bare_uri(&d.remote_uri)),
            esc(&d.remote_target),
        );
    }
    s.push_str("</dialog-info>\r\n");
    s
}

/// A SUBSCRIBE outside a dialog.
pub(crate) fn on_subscribe(shared: &Shared, st: &mut State, key: &TxKey, req: &Request, src: Peer) {
    let allow_events = (HeaderName::AllowEvents, "dialog, check-sync".to_string());
    if event_package(req) != "dialog" {
        shared.respond(st, key, 489, None, &[allow_events]);
        return;
    }
    let policy = st.policy.dialog_query;
    match policy {
        QueryReply::Ignore => {}
        QueryReply::Refuse(code) => {
            shared.respond(st, key, code, None, &[allow_events]);
        }
        QueryReply::Notify | QueryReply::NotifyFirst => {
            let expires: u32 = req
                .headers
                .get(&HeaderName::Expires)
                .and_then(|e| e.trim().parse().ok())
                .unwrap_or(3600)
                .min(3600);
            let Some(tx) = st.server_txs.get_mut(key) else {
                return;
            };
            let tag = tx.to_tag.get_or_insert_with(new_tag).clone();
            let extra = [
                (HeaderName::Contact, shared.contact()),
                (HeaderName::Expires, expires.to_string()),
            ];
            if policy == QueryReply::Notify {
                shared.respond(st, key, 200, None, &extra);
            }
            send_dialog_notify(shared, st, req, &tag, expires, src);
            if policy == QueryReply::NotifyFirst {
                shared.respond(st, key, 200, None, &extra);
            }
            st.queries_answered += 1;
        }
    }
}

/// The NOTIFY of a subscription we accepted (RFC 6665 §4.2.1.2): in the subscription
/// dialog (our tag is the SUBSCRIBE's To tag), to the subscriber's Contact.
fn send_dialog_notify(
    shared: &Shared,
    st: &mut State,
    sub: &Request,
    our_tag: &str,
    expires: u32,
    src: Peer,
) {
    let call_id = sub.call_id().unwrap_or_default().to_string();
    let to = sub
        .headers
        .get(&HeaderName::From)
        .unwrap_or_default()
        .to_string();
    let to_uri = sub
        .headers
        .get(&HeaderName::To)
        .map(bare_uri)
        .unwrap_or_else(|| shared.aor());
    let from = format!("<{to_uri}>;tag={our_tag}");
    let target = sub
        .contact()
        .map(|c| c.uri.to_string())
        .unwrap_or_else(|| bare_uri(&to));
    // Over UDP the NOTIFY goes to the Contact's address; over TCP on the connection the
    // SUBSCRIBE came on (RFC 5923 style reuse; a server need not listen for it elsewhere).
    let dest = match src.transport {
        Transport::Udp => Peer::udp(uri_addr(&target).unwrap_or(src.addr)),
        Transport::Tcp | Transport::Tls => src,
    };
    let seq = st.notifier_cseq.entry(call_id.clone()).or_insert(0);
    *seq += 1;
    let seq = *seq;
    let contact = shared.contact();
    let mut n = NewRequest {
        method: Method::Notify,
        uri: &target,
        from: &from,
        to: &to,
        call_id: &call_id,
        cseq: seq,
        contact: Some(&contact),
        route: &sub.record_route(),
    }
    .build(shared.local, dest.transport);
    n.headers.push(HeaderName::Event, "dialog");
    let state = if expires == 0 {
        "terminated;reason=timeout".to_string()
    } else {
        format!("active;expires={expires}")
    };
    n.headers.push(HeaderName::SubscriptionState, state);
    let body = dialog_info(shared, st);
    set_body(&mut n, "application/dialog-info+xml", Bytes::from(body));
    st.client_txs.insert(
        (branch_of(&n), n.method.to_string()),
        ClientTx {
            request: n.clone(),
            dest,
            seen: Default::default(),
            auth_tried: false,
        },
    );
    shared.send(&n.to_bytes(), dest);
}

/// A NOTIFY outside a dialog: `check-sync` (and other reset events) by policy, anything
/// else 489.
pub(crate) fn on_notify(shared: &Shared, st: &mut State, key: &TxKey, req: &Request) {
    let event = event_package(req);
    if !matches!(
        event.as_str(),
        "check-sync" | "resync" | "reboot_now" | "reboot"
    ) {
        shared.respond(st, key, 489, None, &[]);
        return;
    }
    if let Reply::Status(s) = st.policy.check_sync {
        shared.respond(st, key, s, None, &[]);
    }
    if st.policy.drop_on_check_sync {
        for d in st.dialogs.values_mut() {
            d.state = DialogState::Terminated;
        }
    }
}
