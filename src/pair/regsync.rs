//! Registration sync with the RFC 3680 `reg` event package: the active node is the notifier,
//! the stand-by subscribes and keeps the bindings as learned from the peer. This file holds
//! the `application/reginfo+xml` documents; the subscription dialogs are driven by the server.

use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::Event;

/// One contact in a reginfo document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegContact {
    /// Contact URI.
    pub uri: String,
    /// `active` or `terminated`.
    pub active: bool,
    /// Seconds left.
    pub expires: u32,
    /// Where the REGISTER came from (`udp:1.2.3.4:5060`), an Understudy extension element.
    pub source: Option<String>,
    /// The device's `+sip.instance` (RFC 5626), carried as an RFC 3680 `unknown-param`: the
    /// peer finds the same device's own flow by it.
    pub instance: Option<String>,
}

/// One registration (AOR) in a reginfo document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegRecord {
    /// The AOR user name.
    pub aor: String,
    /// Contacts.
    pub contacts: Vec<RegContact>,
}

/// A reginfo document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegInfo {
    /// Version (RFC 3680 §5.3: increases by one per NOTIFY).
    pub version: u64,
    /// Full state (`true`) or partial.
    pub full: bool,
    /// Registrations.
    pub records: Vec<RegRecord>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Serialize (`domain` completes the AOR URIs).
pub fn to_xml(info: &RegInfo, domain: &str) -> String {
    let mut s = String::with_capacity(256 + 200 * info.records.len());
    let _ = write!(
        s,
        "<?xml version=\"1.0\"?>\n<reginfo xmlns=\"urn:ietf:params:xml:ns:reginfo\" xmlns:us=\"urn:understudy:reginfo\" version=\"{}\" state=\"{}\">\n",
        info.version,
        if info.full { "full" } else { "partial" }
    );
    for (i, r) in info.records.iter().enumerate() {
        let state = if r.contacts.iter().any(|c| c.active) {
            "active"
        } else {
            "terminated"
        };
        let _ = writeln!(
            s,
            " <registration aor=\"sip:{}@{}\" id=\"r{i}\" state=\"{state}\">",
            esc(&r.aor),
            esc(domain)
        );
        for (j, c) in r.contacts.iter().enumerate() {
            let (st, ev) = if c.active {
                ("active", "registered")
            } else {
                ("terminated", "unregistered")
            };
            let _ = write!(
                s,
                "  <contact id=\"c{i}.{j}\" state=\"{st}\" event=\"{ev}\" expires=\"{}\"><uri>{}</uri>",
                c.expires,
                esc(&c.uri)
            );
            if let Some(i) = &c.instance {
                let _ = write!(
                    s,
                    "<unknown-param name=\"+sip.instance\">{}</unknown-param>",
                    esc(i)
                );
            }
            if let Some(src) = &c.source {
                let _ = write!(s, "<us:source>{}</us:source>", esc(src));
            }
            s.push_str("</contact>\n");
        }
        s.push_str(" </registration>\n");
    }
    s.push_str("</reginfo>\n");
    s
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad reginfo document: {0}")]
pub struct RegInfoError(pub String);

fn attr(e: &quick_xml::events::BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// Parse a reginfo document (namespaces and unknown elements tolerated).
pub fn parse(xml: &str) -> Result<RegInfo, RegInfoError> {
    let mut r = Reader::from_str(xml);
    r.config_mut().trim_text(true);
    let mut info: Option<RegInfo> = None;
    let mut current: Option<RegRecord> = None;
    let mut contact: Option<RegContact> = None;
    let mut text_target: Option<&'static str> = None;
    loop {
        match r.read_event() {
            Err(e) => return Err(RegInfoError(e.to_string())),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                b"reginfo" => {
                    let version = attr(&e, b"version")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| RegInfoError("reginfo without version".into()))?;
                    let full = attr(&e, b"state").as_deref() == Some("full");
                    info = Some(RegInfo {
                        version,
                        full,
                        records: Vec::new(),
                    });
                }
                b"registration" => {
                    let aor = attr(&e, b"aor")
                        .ok_or_else(|| RegInfoError("registration without aor".into()))?;
                    let user = aor
                        .split_once(':')
                        .map(|(_, rest)| rest)
                        .unwrap_or(&aor)
                        .split('@')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    current = Some(RegRecord {
                        aor: user,
                        contacts: Vec::new(),
                    });
                }
                b"contact" => {
                    contact = Some(RegContact {
                        uri: String::new(),
                        active: attr(&e, b"state").as_deref() != Some("terminated"),
                        expires: attr(&e, b"expires")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                        source: None,
                        instance: None,
                    });
                }
                b"uri" => text_target = Some("uri"),
                b"source" => text_target = Some("source"),
                b"unknown-param"
                    if attr(&e, b"name")
                        .is_some_and(|n| n.eq_ignore_ascii_case("+sip.instance")) =>
                {
                    text_target = Some("instance");
                }
                _ => {}
            },
            Ok(Event::Text(t)) => {
                if let (Some(target), Some(c)) = (text_target, contact.as_mut()) {
                    let v = t
                        .unescape()
                        .map_err(|e| RegInfoError(e.to_string()))?
                        .into_owned();
                    match target {
                        "uri" => c.uri = v,
                        "instance" => c.instance = Some(v),
                        _ => c.source = Some(v),
                    }
                }
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                b"uri" | b"source" | b"unknown-param" => text_target = None,
                b"contact" => {
                    if let (Some(c), Some(rec)) = (contact.take(), current.as_mut())
                        && !c.uri.is_empty()
                    {
                        rec.contacts.push(c);
                    }
                }
                b"registration" => {
                    if let (Some(rec), Some(i)) = (current.take(), info.as_mut()) {
                        i.records.push(rec);
                    }
                }
                _ => {}
            },
            Ok(_) => {}
        }
    }
    info.ok_or_else(|| RegInfoError("no reginfo element".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let info = RegInfo {
            version: 4,
            full: true,
            records: vec![RegRecord {
                aor: "alice".into(),
                contacts: vec![
                    RegContact {
                        uri: "sip:alice@127.0.0.1:5090;transport=tcp".into(),
                        active: true,
                        expires: 300,
                        source: Some("tcp:127.0.0.1:40000".into()),
                        instance: Some("<urn:uuid:00000000-0000-1000-8000-000a95a0e128>".into()),
                    },
                    RegContact {
                        uri: "sip:alice@127.0.0.1:5091".into(),
                        active: false,
                        expires: 0,
                        source: None,
                        instance: None,
                    },
                ],
            }],
        };
        let xml = to_xml(&info, "pbx.local");
        assert_eq!(parse(&xml).unwrap(), info);
    }

    #[test]
    fn tolerates_foreign_documents() {
        let xml = r#"<?xml version="1.0"?>
<r:reginfo xmlns:r="urn:ietf:params:xml:ns:reginfo" version="0" state="partial">
  <r:registration aor="sip:bob@example.com" id="a7" state="active">
    <r:contact id="76" state="active" event="registered" expires="3600" q="0.8">
      <r:uri>sip:bob@192.0.2.4</r:uri>
      <r:display-name>Bob</r:display-name>
      <x:foo xmlns:x="urn:x">bar</x:foo>
    </r:contact>
  </r:registration>
</r:reginfo>"#;
        let i = parse(xml).unwrap();
        assert!(!i.full);
        assert_eq!(i.records[0].aor, "bob");
        assert_eq!(i.records[0].contacts[0].uri, "sip:bob@192.0.2.4");
        assert_eq!(i.records[0].contacts[0].expires, 3600);
        assert!(parse("<nope/>").is_err());
        assert!(parse("<reginfo").is_err());
    }
}
