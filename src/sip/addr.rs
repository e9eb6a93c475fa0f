//! name-addr / addr-spec values: From, To, Contact, Route, Record-Route (RFC 3261 §20.10, §25.1).

use std::fmt;

use super::params::Params;
use super::uri::Uri;

/// `["display"] <uri>;params` or `uri;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, without quotes.
    pub display: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (`tag`, `expires`, `q`, ...).
    pub params: Params,
}

impl NameAddr {
    /// A bare `<uri>`.
    pub fn new(uri: Uri) -> Self {
        Self {
            display: None,
            uri,
            params: Params::new(),
        }
    }

    /// Parse a name-addr or addr-spec.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let p = Parts::of(s)?;
        Ok(Self {
            display: p.display.map(|d| match d {
                Display::Quoted(q) => unquote(q),
                Display::Tokens(t) => t.to_string(),
            }),
            uri: Uri::parse(p.uri).map_err(|e| e.0)?,
            params: match p.params {
                Some(params) => Params::parse(params)?,
                None => Params::new(),
            },
        })
    }

    /// Check that `s` parses ([`NameAddr::parse`] accepts it) without building the address:
    /// its header parameters as written (for `params::get`), and their `tag` as
    /// [`Params::get`] gives it, found in the same pass.
    pub(crate) fn check(s: &str) -> Result<Checked<'_>, &'static str> {
        let p = Parts::of(s)?;
        Uri::check(p.uri).map_err(|e| e.0)?;
        let params = p.params.unwrap_or("");
        let tag = super::params::check(params)?;
        Ok(Checked { params, tag })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }
}

/// What [`NameAddr::check`] found.
#[derive(Debug)]
pub(crate) struct Checked<'a> {
    /// The header parameters as written.
    pub(crate) params: &'a str,
    /// The first `tag` parameter: `Some(None)` when it has no value.
    pub(crate) tag: Option<Option<&'a str>>,
}

/// A display name as written.
enum Display<'a> {
    /// Inside the quotes, escapes not yet undone.
    Quoted(&'a str),
    /// A token sequence, trimmed.
    Tokens(&'a str),
}

/// An address's parts as written: the grammar of [`NameAddr::parse`], written once for
/// parsing and for checking.
struct Parts<'a> {
    display: Option<Display<'a>>,
    uri: &'a str,
    params: Option<&'a str>,
}

impl<'a> Parts<'a> {
    fn of(s: &'a str) -> Result<Self, &'static str> {
        let s = s.trim_ascii();
        if s.is_empty() {
            return Err("empty address");
        }
        let (display, after_display) = if let Some(rest) = s.strip_prefix('"') {
            let (quoted, after) =
                split_at_closing_quote(rest).ok_or("unterminated quoted display name")?;
            (Some(Display::Quoted(quoted)), after.trim_ascii_start())
        } else if let Some((name, addr)) = s.find('<').and_then(|lt| s.split_at_checked(lt)) {
            let name = name.trim_ascii();
            if !name.is_empty()
                && !name.bytes().all(|b| {
                    super::params::is_token_byte(b) || b == b' ' || b == b'\t' || b >= 0x80
                })
            {
                return Err("display name must be a token sequence or quoted");
            }
            let name = (!name.is_empty()).then_some(Display::Tokens(name));
            (name, addr)
        } else {
            (None, s)
        };
        if let Some(rest) = after_display.strip_prefix('<') {
            let (inner, after) =
                super::params::split_once_byte(rest, b'>').ok_or("unterminated <")?;
            if inner.starts_with(|c: char| c.is_ascii_whitespace())
                || inner.ends_with(|c: char| c.is_ascii_whitespace())
            {
                return Err("whitespace inside <>");
            }
            return Ok(Self {
                display,
                uri: inner,
                params: Some(after),
            });
        }
        if display.is_some() {
            return Err("display name without <uri>");
        }
        // addr-spec: parameters after the first ';' belong to the header, never to the URI
        // (RFC 3261 §20.10), and the URI may not carry headers or commas.
        let (uri, params) = match super::params::split_once_byte(s, b';') {
            Some((uri, params)) => (uri, Some(params)),
            None => (s, None),
        };
        if uri.contains('?') || uri.contains(',') {
            return Err("addr-spec with '?' or ',' must be enclosed in <>");
        }
        Ok(Self {
            display: None,
            uri,
            params,
        })
    }
}

/// The `tag` parameter of a From or To value, found without parsing the address: the same as
/// `NameAddr::parse(value)?.tag()` for every value that parses (the `message` fuzz target
/// checks it). Messages are validated, From and To parsed once, before their tags are read;
/// this is what reads them afterwards, many times per message.
pub fn tag_param(value: &str) -> Option<&str> {
    let s = value.trim_ascii();
    let params = if let Some(rest) = s.strip_prefix('"') {
        let (_, after) = split_at_closing_quote(rest)?;
        after
            .trim_ascii_start()
            .strip_prefix('<')?
            .split_once('>')?
            .1
    } else if let Some((_, addr)) = super::params::split_once_byte(s, b'<') {
        super::params::split_once_byte(addr, b'>')?.1
    } else {
        super::params::split_once_byte(s, b';')?.1
    };
    super::params::find_value(params, "tag")
}

/// Split quoted text (after its opening quote) at the closing quote: the text inside, and
/// what follows the quote.
fn split_at_closing_quote(s: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            let (inside, quote_on) = s.split_at_checked(i)?;
            return Some((inside, quote_on.strip_prefix('"')?));
        }
    }
    None
}

fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            f.write_str("\"")?;
            for c in d.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag read without parsing is the parsed address's tag, in the forms that trip a
    /// naive scan: `;` and `<` inside a quoted name, `tag` as a URI parameter inside `<>`,
    /// case, spacing, a valueless `tag`, addr-spec form, no tag.
    #[test]
    fn tag_param_agrees_with_the_parse() {
        for v in [
            r#""a;tag=x <b>" <sip:a@h;tag=uri>;tag=real"#,
            r#""J \"q\" ;tag=no" <sip:j@h>;TAG = up ;x=1"#,
            "<sip:a@h;tag=inside>",
            "<sip:a@h>;foo;tag=t2",
            "<sip:a@h>;tag;tag=second",
            "Alice <sip:a@h> ; tag=sp",
            "sip:caller@example.net;tag=2234923;x",
            "sip:caller@example.net",
            "<sip:a@h>",
        ] {
            let parsed = NameAddr::parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(tag_param(v), parsed.tag(), "{v}");
        }
        assert_eq!(
            tag_param(r#""a;tag=x <b>" <sip:a@h;tag=uri>;tag=real"#),
            Some("real")
        );
        assert_eq!(tag_param("<sip:a@h;tag=inside>"), None);
    }

    #[test]
    fn quoted_display_and_tag() {
        let a =
            NameAddr::parse(r#""J Rosenberg \\\"" <sip:jdrosen@example.com>;tag=98asjd8"#).unwrap();
        assert_eq!(a.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(a.tag(), Some("98asjd8"));
    }

    #[test]
    fn addr_spec_params_belong_to_header() {
        let a = NameAddr::parse("sip:caller@example.net;tag=2234923").unwrap();
        assert_eq!(a.tag(), Some("2234923"));
        assert!(a.uri.params.is_empty());
    }

    #[test]
    fn token_display_name() {
        let a = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display.as_deref(), Some("caller"));
    }

    #[test]
    fn rejects_torture_errors() {
        assert!(NameAddr::parse(r#""Mr. J. User <sip:j.user@example.com>"#).is_err());
        assert!(NameAddr::parse("< sip:t.watson@example.org >").is_err());
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse("Bell, Alexander <sip:a@b>").is_err());
    }

    #[test]
    fn multibyte_text_next_to_delimiters() {
        let a = NameAddr::parse("\"Jö\" <sip:é@b>;tag=ü").unwrap();
        assert_eq!(a.display.as_deref(), Some("Jö"));
        assert_eq!(a.tag(), Some("ü"));
        let a = NameAddr::parse("Jö<sip:a@b>").unwrap();
        assert_eq!(a.display.as_deref(), Some("Jö"));
        assert!(NameAddr::parse("\"é").is_err());
        assert!(NameAddr::parse("<é").is_err());
    }

    #[test]
    fn display_round_trip() {
        let a = NameAddr::parse(r#""Bob" <sip:bob@b.example;transport=tcp>;expires=60"#).unwrap();
        assert_eq!(
            a.to_string(),
            r#""Bob" <sip:bob@b.example;transport=tcp>;expires=60"#
        );
    }
}
