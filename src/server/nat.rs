//! Reaching a phone behind NAT from the node that took its call over (DESIGN "Hot takeover").
//!
//! A NAT admits packets only from the address the phone itself sent to: the flow the phone
//! opened to the old active (recorded in the digest or the dialog report) does not let the
//! new active in. A phone registered at both nodes (two registrations, or RFC 5626 outbound
//! with one flow per node) opened a flow to this node too: its legs are re-bound over that
//! flow. A leg whose phone shows NAT (it sends from another address than its Contact) but
//! has no flow to this node keeps the recorded address, and the takeover report names it
//! ("NAT: no flow"); the re-bind is tried all the same (some NATs admit it).

use std::time::Instant;

use crate::dialog::{Dialog, behind_nat, uri_addr};
use crate::registrar::Registrar;
use crate::sip::{NameAddr, Uri};

/// How a leg will be reached from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Over the flow the phone opened to this node.
    OwnFlow,
    /// At the recorded address: the endpoint is not behind NAT (as far as we can tell).
    Direct,
    /// At the recorded address although the endpoint is behind NAT and opened no flow to
    /// this node: the re-bind may be dropped by its router.
    NoFlow,
}

/// Point `d` at the flow its endpoint opened to this node, when there is one.
pub(crate) fn reach(registrar: &Registrar, now: Instant, d: &mut Dialog) -> Reach {
    let Ok(target) = Uri::parse(d.remote_target.trim_matches(['<', '>'])) else {
        return Reach::Direct;
    };
    let aor = NameAddr::parse(&d.remote_uri)
        .ok()
        .and_then(|n| n.uri.user)
        .unwrap_or_default();
    if let Some(flow) = registrar.location().own_flow(&aor, &target, d.flow, now) {
        d.flow = flow;
        d.pinned = true;
        return Reach::OwnFlow;
    }
    if !behind_nat(uri_addr(&target), d.flow) {
        return Reach::Direct;
    }
    // Over UDP the address the old active used is the best guess (a NAT that filters by
    // port only, or none, lets it in); over TCP its connection is gone, and the Contact is.
    d.pinned = !d.flow.proto.is_reliable();
    Reach::NoFlow
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dialog::DialogState;
    use crate::net::Flow;
    use crate::registrar::{Binding, Origin};

    fn registrar() -> Registrar {
        crate::registrar::tests::test_registrar()
    }

    /// Bind alice's (contact, source, origin)s.
    fn bind(r: &mut Registrar, now: Instant, bindings: &[(&str, &str, Origin)]) {
        for (contact, source, origin) in bindings {
            r.location_mut().bind(
                "alice",
                Binding {
                    contact: NameAddr::parse(contact).unwrap(),
                    expires_at: now + Duration::from_secs(600),
                    source: Some(Flow::udp(source.parse().unwrap())),
                    call_id: String::new(),
                    cseq: 1,
                    origin: *origin,
                    registered_at_s: 0,
                },
            );
        }
    }

    fn leg(target: &str, recorded: &str) -> Dialog {
        Dialog {
            call_id: "c".into(),
            local_tag: "u1a".into(),
            remote_tag: "t".into(),
            local_uri: "<sip:bob@pbx.local>".into(),
            remote_uri: "<sip:alice@pbx.local>".into(),
            local_cseq: 1,
            remote_cseq: None,
            route_set: Box::default(),
            remote_target: target.into(),
            flow: Flow::udp(recorded.parse().unwrap()),
            pinned: false,
            state: DialogState::Confirmed,
        }
    }

    #[test]
    fn a_phone_registered_here_too_is_reached_over_its_own_flow() {
        let now = Instant::now();
        let mut r = registrar();
        // Behind NAT: the phone's Contact is its private address; the main saw it from one
        // public port, this node from another.
        bind(
            &mut r,
            now,
            &[
                (
                    "<sip:alice@10.0.0.2:5060>",
                    "203.0.113.2:40001",
                    Origin::Peer,
                ),
                (
                    "<sip:alice@10.0.0.2:5060>",
                    "203.0.113.2:40002",
                    Origin::Local,
                ),
            ],
        );
        assert_eq!(
            r.location().lookup("alice", now).len(),
            1,
            "one per contact"
        );
        let mut d = leg("<sip:alice@10.0.0.2:5060>", "203.0.113.2:40001");
        assert_eq!(reach(&r, now, &mut d), Reach::OwnFlow);
        assert_eq!(d.flow.remote, "203.0.113.2:40002".parse().unwrap());
        assert_eq!(
            d.next_hop().remote,
            d.flow.remote,
            "not the private Contact"
        );
        // The peer's view of the contact stays beside ours, and a change of it leaves ours.
        r.location_mut()
            .unbind_learned("alice", "sip:alice@10.0.0.2:5060");
        let mut d = leg("<sip:alice@10.0.0.2:5060>", "203.0.113.2:40001");
        assert_eq!(reach(&r, now, &mut d), Reach::OwnFlow);
    }

    #[test]
    fn the_same_device_is_found_by_its_instance() {
        let now = Instant::now();
        let mut r = registrar();
        let inst = ";+sip.instance=\"<urn:uuid:0000-1>\"";
        let (a, b) = (
            format!("<sip:alice@10.0.0.2:5060;ob>{inst};reg-id=1"),
            format!("<sip:alice@10.0.0.2:5062;ob>{inst};reg-id=2"),
        );
        bind(
            &mut r,
            now,
            &[
                (&a, "203.0.113.2:40001", Origin::Peer),
                (&b, "203.0.113.2:40009", Origin::Local),
            ],
        );
        let mut d = leg("<sip:alice@10.0.0.2:5060;ob>", "203.0.113.2:40001");
        assert_eq!(reach(&r, now, &mut d), Reach::OwnFlow);
        assert_eq!(d.flow.remote, "203.0.113.2:40009".parse().unwrap());
    }

    #[test]
    fn a_phone_that_rewrites_its_contact_is_found_behind_the_same_address() {
        let now = Instant::now();
        let mut r = registrar();
        // Each node saw it at another public port and the phone put that in its Contact.
        bind(
            &mut r,
            now,
            &[
                (
                    "<sip:alice@203.0.113.2:40001>",
                    "203.0.113.2:40001",
                    Origin::Peer,
                ),
                (
                    "<sip:alice@203.0.113.2:40002>",
                    "203.0.113.2:40002",
                    Origin::Local,
                ),
            ],
        );
        let mut d = leg("<sip:alice@203.0.113.2:40001>", "203.0.113.2:40001");
        assert_eq!(reach(&r, now, &mut d), Reach::OwnFlow);
        assert_eq!(d.flow.remote, "203.0.113.2:40002".parse().unwrap());
        // Two candidates behind that address: no guess.
        bind(
            &mut r,
            now,
            &[(
                "<sip:alice@203.0.113.2:40003>",
                "203.0.113.2:40003",
                Origin::Local,
            )],
        );
        let mut d = leg("<sip:alice@203.0.113.2:40001>", "203.0.113.2:40001");
        assert_eq!(reach(&r, now, &mut d), Reach::Direct);
    }

    #[test]
    fn no_flow_here_is_reported_only_behind_nat() {
        let now = Instant::now();
        let mut r = registrar();
        bind(
            &mut r,
            now,
            &[(
                "<sip:alice@10.0.0.2:5060>",
                "203.0.113.2:40001",
                Origin::Peer,
            )],
        );
        let mut d = leg("<sip:alice@10.0.0.2:5060>", "203.0.113.2:40001");
        assert_eq!(reach(&r, now, &mut d), Reach::NoFlow);
        assert_eq!(d.flow.remote, "203.0.113.2:40001".parse().unwrap());
        assert!(d.pinned, "over UDP, the recorded address it is");
        let mut d = leg("<sip:alice@192.0.2.7:5060>", "192.0.2.7:5060");
        assert_eq!(reach(&r, now, &mut d), Reach::Direct);
        assert!(!d.pinned);
    }
}
