//! Generic `;name=value` parameter lists (RFC 3261 §19.1.1 uri-parameters, §20 header params).

use std::fmt;

/// An ordered list of `name[=value]` parameters. Names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, Option<String>)>);

impl Params {
    /// An empty list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Parse `;a=b;c` (the leading `;` optional). Whitespace around names, `=` and values is
    /// linear white space (RFC 3261 §25.1) and is dropped. Quoted values keep their quotes.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let mut out = Vec::new();
        each(s, |n, v| out.push((n.to_string(), v.map(str::to_string))))?;
        Ok(Self(out))
    }

    /// The value of `name`: `Some(Some(v))`, `Some(None)` for a flag, `None` if absent.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `name` when it has one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    /// Whether `name` is present, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Set (replace or append) a parameter.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let v = value.map(str::to_string);
        if let Some(slot) = self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            slot.1 = v;
        } else {
            self.0.push((name.to_string(), v));
        }
    }

    /// Remove a parameter.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Iterate over `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.0 {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// `s.split_once(sep)` for an ASCII separator, by a plain byte scan: the standard library's
/// char searcher is built for long texts, and SIP's are a few dozen bytes (an ASCII byte
/// never occurs inside a multi-byte character, so both halves are on char boundaries).
pub(crate) fn split_once_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    debug_assert!(sep.is_ascii());
    let i = s.bytes().position(|b| b == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// RFC 3261 §25.1 `token` characters (header names, methods, tags, parameter names).
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Split on `sep` where it is outside double quotes and angle brackets.
pub(crate) fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    parts_outside_quotes(s, sep).collect()
}

/// [`split_outside_quotes`] without collecting: the parts one by one.
pub(crate) fn parts_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut angle = 0u32;
    // `split` hands the predicate every character once, in order, so it can track the
    // quoting state.
    s.split(move |c: char| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => angle = angle.saturating_add(1),
            '>' if !in_quotes => angle = angle.saturating_sub(1),
            c if c == sep && !in_quotes && angle == 0 => return true,
            _ => {}
        }
        false
    })
}

/// Walk `;a=b;c` with the grammar of [`Params::parse`], handing each parameter (name, value)
/// to `f`: the one place that grammar is written, for parsing and for checking without
/// building the list.
pub(crate) fn each<'a>(
    s: &'a str,
    mut f: impl FnMut(&'a str, Option<&'a str>),
) -> Result<(), &'static str> {
    for part in parts_outside_quotes(s, ';') {
        let part = part.trim_ascii();
        if part.is_empty() {
            continue;
        }
        match split_once_byte(part, b'=') {
            Some((n, v)) => {
                let n = n.trim_ascii();
                let v = v.trim_ascii();
                if n.is_empty() || !n.bytes().all(is_token_byte) {
                    return Err("bad parameter name");
                }
                if v.starts_with('"') && (v.len() < 2 || !v.ends_with('"')) {
                    return Err("unterminated quoted parameter");
                }
                f(n, Some(v));
            }
            None => {
                if !part.bytes().all(is_token_byte) {
                    return Err("bad parameter name");
                }
                f(part, None);
            }
        }
    }
    Ok(())
}

/// Whether `s` parses as a parameter list ([`Params::parse`] would accept it), and in the
/// same pass its first `tag` parameter as [`get`] gives it (`Some(None)`: a bare `tag`).
pub(crate) fn check(s: &str) -> Result<Option<Option<&str>>, &'static str> {
    let mut tag = None;
    each(s, |n, v| {
        if tag.is_none() && n.eq_ignore_ascii_case("tag") {
            tag = Some(v);
        }
    })?;
    Ok(tag)
}

/// The first parameter called `name` in a `;`-separated list, as `Params::parse(s)?.get(name)`
/// gives it for a list that parses (`Some(None)`: present without a value), without building
/// the list.
pub(crate) fn get<'a>(s: &'a str, name: &str) -> Option<Option<&'a str>> {
    for part in parts_outside_quotes(s, ';') {
        let part = part.trim_ascii();
        match split_once_byte(part, b'=') {
            Some((n, v)) if n.trim_ascii().eq_ignore_ascii_case(name) => {
                return Some(Some(v.trim_ascii()));
            }
            None if part.eq_ignore_ascii_case(name) => return Some(None),
            _ => {}
        }
    }
    None
}

/// The value of the first parameter called `name` in a `;`-separated list, as
/// `Params::parse(s)?.value(name)` gives it for a list that parses, without building the list.
pub(crate) fn find_value<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    get(s, name).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lws_around_equals() {
        let p = Params::parse(" ; tag = 98asjd8 ;lr").unwrap();
        assert_eq!(p.value("tag"), Some("98asjd8"));
        assert!(p.has("lr"));
        assert_eq!(p.get("lr"), Some(None));
    }

    #[test]
    fn split_respects_quotes_and_angles() {
        let v = split_outside_quotes(r#""a,b" <sip:x;y=1,z>, <sip:q>"#, ',');
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn split_keeps_empty_parts_and_multibyte_text() {
        assert_eq!(split_outside_quotes("", ';'), [""]);
        assert_eq!(split_outside_quotes(";a;;", ';'), ["", "a", "", ""]);
        assert_eq!(
            split_outside_quotes(r#"é;"ü\";ß";ø"#, ';'),
            ["é", r#""ü\";ß""#, "ø"]
        );
    }
}
