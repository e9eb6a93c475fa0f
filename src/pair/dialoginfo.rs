//! RFC 4235 `application/dialog-info+xml`: parsed robustly (namespaces, unknown elements,
//! several dialogs per document) when endpoints report their dialogs at takeover, and built
//! when we answer a dialog SUBSCRIBE ourselves.

use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// One dialog as an endpoint reports it (its own view: `local` is the endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialogReport {
    /// `id` attribute (phones use numbers: never used for pairing).
    pub id: String,
    /// Call-ID.
    pub call_id: String,
    /// The endpoint's tag.
    pub local_tag: String,
    /// The other side's tag (ours, carrying the call token).
    pub remote_tag: String,
    /// `initiator` or `recipient`.
    pub direction: Option<String>,
    /// `trying`, `proceeding`, `early`, `confirmed` or `terminated`.
    pub state: String,
    /// Seconds since the dialog was created.
    pub duration: Option<u64>,
    /// The endpoint's identity URI.
    pub local_identity: Option<String>,
    /// The endpoint's target (Contact).
    pub local_target: Option<String>,
    /// The other side's identity URI.
    pub remote_identity: Option<String>,
    /// The other side's target.
    pub remote_target: Option<String>,
}

/// A dialog-info document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialogInfo {
    /// Version.
    pub version: u64,
    /// Full or partial.
    pub full: bool,
    /// The entity (the subscribed AOR).
    pub entity: String,
    /// Dialogs.
    pub dialogs: Vec<DialogReport>,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad dialog-info document: {0}")]
pub struct DialogInfoError(pub String);

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    State,
    Duration,
    Identity,
}

/// Parse a document.
pub fn parse(xml: &str) -> Result<DialogInfo, DialogInfoError> {
    let mut r = Reader::from_str(xml);
    r.config_mut().trim_text(true);
    let mut info: Option<DialogInfo> = None;
    let mut cur: Option<DialogReport> = None;
    let mut side: Option<Side> = None;
    let mut text: Option<Text> = None;
    let mut depth_unknown = 0u32;
    loop {
        let ev = r.read_event().map_err(|e| DialogInfoError(e.to_string()))?;
        match ev {
            Event::Eof => break,
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                if depth_unknown > 0 {
                    if !empty {
                        depth_unknown += 1;
                    }
                    continue;
                }
                match e.local_name().as_ref() {
                    b"dialog-info" => {
                        info = Some(DialogInfo {
                            version: attr(e, b"version").and_then(|v| v.parse().ok()).unwrap_or(0),
                            full: attr(e, b"state").as_deref() != Some("partial"),
                            entity: attr(e, b"entity").unwrap_or_default(),
                            dialogs: Vec::new(),
                        });
                    }
                    b"dialog" => {
                        cur = Some(DialogReport {
                            id: attr(e, b"id").unwrap_or_default(),
                            call_id: attr(e, b"call-id").unwrap_or_default(),
                            local_tag: attr(e, b"local-tag").unwrap_or_default(),
                            remote_tag: attr(e, b"remote-tag").unwrap_or_default(),
                            direction: attr(e, b"direction"),
                            ..DialogReport::default()
                        });
                        if empty {
                            push(&mut info, &mut cur);
                        }
                    }
                    b"state" if cur.is_some() && side.is_none() => text = Some(Text::State),
                    b"duration" if cur.is_some() => text = Some(Text::Duration),
                    b"local" if cur.is_some() => side = Some(Side::Local),
                    b"remote" if cur.is_some() => side = Some(Side::Remote),
                    b"identity" if side.is_some() => text = Some(Text::Identity),
                    b"target" if side.is_some() => {
                        if let (Some(d), Some(uri)) = (cur.as_mut(), attr(e, b"uri")) {
                            match side {
                                Some(Side::Local) => d.local_target = Some(uri),
                                _ => d.remote_target = Some(uri),
                            }
                        }
                        if !empty {
                            depth_unknown += 1;
                        }
                    }
                    _ => {
                        if !empty && cur.is_some() {
                            depth_unknown += 1;
                        }
                    }
                }
            }
            Event::Text(t) => {
                let (Some(d), Some(kind)) = (cur.as_mut(), text) else {
                    continue;
                };
                let v = t.unescape().map_err(|e| DialogInfoError(e.to_string()))?.trim().to_string();
                match kind {
                    Text::State => d.state = v,
                    Text::Duration => d.duration = v.parse().ok(),
                    Text::Identity => match side {
                        Some(Side::Local) => d.local_identity = Some(v),
                        _ => d.remote_identity = Some(v),
                    },
                }
            }
            Event::End(e) => {
                if depth_unknown > 0 {
                    depth_unknown -= 1;
                    continue;
                }
                match e.local_name().as_ref() {
                    b"state" | b"duration" | b"identity" => text = None,
                    b"local" | b"remote" => side = None,
                    b"dialog" => push(&mut info, &mut cur),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    info.ok_or_else(|| DialogInfoError("no dialog-info element".into()))
}

fn push(info: &mut Option<DialogInfo>, cur: &mut Option<DialogReport>) {
    if let (Some(i), Some(d)) = (info.as_mut(), cur.take()) {
        i.dialogs.push(d);
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Build a full-state document.
pub fn to_xml(info: &DialogInfo) -> String {
    let mut s = String::with_capacity(300 + 400 * info.dialogs.len());
    let _ = writeln!(
        s,
        "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{}\" state=\"{}\" entity=\"{}\">",
        info.version,
        if info.full { "full" } else { "partial" },
        esc(&info.entity)
    );
    for d in &info.dialogs {
        let _ = write!(
            s,
            " <dialog id=\"{}\" call-id=\"{}\" local-tag=\"{}\" remote-tag=\"{}\"",
            esc(&d.id),
            esc(&d.call_id),
            esc(&d.local_tag),
            esc(&d.remote_tag)
        );
        if let Some(dir) = &d.direction {
            let _ = write!(s, " direction=\"{}\"", esc(dir));
        }
        let _ = write!(s, ">\n  <state>{}</state>\n", esc(&d.state));
        if let Some(du) = d.duration {
            let _ = writeln!(s, "  <duration>{du}</duration>");
        }
        for (tag, id, target) in [
            ("local", &d.local_identity, &d.local_target),
            ("remote", &d.remote_identity, &d.remote_target),
        ] {
            if id.is_none() && target.is_none() {
                continue;
            }
            let _ = write!(s, "  <{tag}>");
            if let Some(i) = id {
                let _ = write!(s, "<identity>{}</identity>", esc(i));
            }
            if let Some(t) = target {
                let _ = write!(s, "<target uri=\"{}\"/>", esc(t));
            }
            let _ = writeln!(s, "</{tag}>");
        }
        s.push_str(" </dialog>\n");
    }
    s.push_str("</dialog-info>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let info = DialogInfo {
            version: 1,
            full: true,
            entity: "sip:alice@pbx.local".into(),
            dialogs: vec![DialogReport {
                id: "1".into(),
                call_id: "c1@h".into(),
                local_tag: "at".into(),
                remote_tag: "u00000000000000ffa".into(),
                direction: Some("initiator".into()),
                state: "confirmed".into(),
                duration: Some(42),
                local_identity: Some("sip:alice@pbx.local".into()),
                local_target: Some("sip:alice@127.0.0.1:5090".into()),
                remote_identity: Some("sip:bob@pbx.local".into()),
                remote_target: Some("sip:127.0.0.1:5060".into()),
            }],
        };
        assert_eq!(parse(&to_xml(&info)).unwrap(), info);
    }

    #[test]
    fn phone_style_documents_with_namespaces_and_extras() {
        // Prefixed namespace, numeric ids, unknown elements (also inside <local>), two
        // dialogs, an attribute order of its own, and a <state> with attributes.
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<d:dialog-info xmlns:d="urn:ietf:params:xml:ns:dialog-info" xmlns:x="urn:x" version="7" state="full" entity="sip:100@pbx">
  <d:dialog id="12" direction="recipient" remote-tag="u0123456789abcdefb" local-tag="ph1" call-id="bcid">
    <d:state event="remote-bye" code="200">confirmed</d:state>
    <x:vendor><x:state>ignored</x:state></x:vendor>
    <d:local><d:identity display="Bob">sip:bob@pbx</d:identity><d:target uri="sip:bob@127.0.0.1:5070"><d:param pname="+sip.rendering" pval="yes"/></d:target></d:local>
    <d:remote><d:identity>sip:alice@pbx</d:identity></d:remote>
  </d:dialog>
  <d:dialog id="13" call-id="other" local-tag="p2"><d:state>terminated</d:state></d:dialog>
</d:dialog-info>"#;
        let i = parse(xml).unwrap();
        assert_eq!(i.version, 7);
        assert_eq!(i.dialogs.len(), 2);
        let d = &i.dialogs[0];
        assert_eq!(d.call_id, "bcid");
        assert_eq!(d.remote_tag, "u0123456789abcdefb");
        assert_eq!(d.state, "confirmed");
        assert_eq!(d.local_target.as_deref(), Some("sip:bob@127.0.0.1:5070"));
        assert_eq!(d.local_identity.as_deref(), Some("sip:bob@pbx"));
        assert_eq!(i.dialogs[1].state, "terminated");
        assert!(parse("<dialog-info").is_err());
        assert!(parse("<x/>").is_err());
    }
}
