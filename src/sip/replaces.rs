//! The Replaces header (RFC 3891): which dialog a new INVITE takes the place of, named by
//! Call-ID and tags as the recipient sees them (`to-tag` is the recipient's own tag). It
//! arrives as a header, or escaped inside a `Refer-To` URI (`?Replaces=…`).

use super::uri::unescape;

/// A parsed Replaces value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// The recipient's tag in that dialog.
    pub to_tag: String,
    /// The other party's tag.
    pub from_tag: String,
    /// `early-only`: replace the dialog only while it is early.
    pub early_only: bool,
}

impl Replaces {
    /// Parse a header value: `call-id;to-tag=x;from-tag=y[;early-only]`. `None` without a
    /// Call-ID or either tag.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';').map(str::trim);
        let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for p in parts {
            let (name, v) = p.split_once('=').unwrap_or((p, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "to-tag" => to_tag = Some(v.trim().to_string()),
                "from-tag" => from_tag = Some(v.trim().to_string()),
                "early-only" => early_only = true,
                _ => {}
            }
        }
        Some(Self {
            call_id,
            to_tag: to_tag.filter(|t| !t.is_empty())?,
            from_tag: from_tag.filter(|t| !t.is_empty())?,
            early_only,
        })
    }

    /// The Replaces carried in the headers part of a URI (`Replaces=…&…`, %-escaped), if any.
    pub fn from_uri_headers(headers: &str) -> Option<Self> {
        headers.split('&').find_map(|h| {
            let (name, v) = h.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("Replaces")
                .then(|| Self::parse(&unescape(v)))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_header_and_the_escaped_uri_form() {
        let r = Replaces::parse("425928@bobster.example.org;to-tag=7743;from-tag=6472").unwrap();
        assert_eq!(r.call_id, "425928@bobster.example.org");
        assert_eq!((r.to_tag.as_str(), r.from_tag.as_str()), ("7743", "6472"));
        assert!(!r.early_only);
        let u = Replaces::from_uri_headers(
            "Foo=1&Replaces=12345%40192.168.118.3%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994;early-only",
        )
        .unwrap();
        assert_eq!(u.call_id, "12345@192.168.118.3");
        assert_eq!(u.from_tag, "5FFE-3994");
        assert!(u.early_only);
    }

    #[test]
    fn a_missing_part_is_no_replaces() {
        assert_eq!(Replaces::parse(""), None);
        assert_eq!(Replaces::parse("abc;to-tag=1"), None);
        assert_eq!(Replaces::parse("abc;from-tag=1;to-tag="), None);
        assert_eq!(Replaces::from_uri_headers("Replaces"), None);
        assert_eq!(Replaces::from_uri_headers("X=1"), None);
    }
}
