//! SIP and other URIs (RFC 3261 §19.1, RFC 3966 `tel:` kept opaque).

use std::fmt;

use super::params::Params;

/// A URI. `sip:`/`sips:` URIs are parsed into parts; any other scheme is kept opaque, because
/// RFC 3261 §8.2.2.1 and RFC 4475 §3.3.4 require that unknown schemes in headers do not break
/// parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Lower-cased scheme, e.g. `sip`.
    pub scheme: String,
    /// User part (still %-escaped), without the password.
    pub user: Option<String>,
    /// Password part, if any (deprecated but legal).
    pub password: Option<String>,
    /// Host (for opaque schemes: everything after the colon).
    pub host: String,
    /// Port.
    pub port: Option<u16>,
    /// URI parameters.
    pub params: Params,
    /// The `?headers` part, without the `?`.
    pub headers: Option<String>,
}

/// Why a URI did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad URI: {0}")]
pub struct UriError(pub &'static str);

impl Uri {
    /// Parse a URI.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        let p = Parts::of(s)?;
        let params = match p.params {
            Some(params) => Params::parse(params).map_err(UriError)?,
            None => Params::new(),
        };
        Ok(Self {
            scheme: p.scheme.to_ascii_lowercase(),
            user: p.user.map(str::to_string),
            password: p.password.map(str::to_string),
            host: p.host.to_string(),
            port: p.port,
            params,
            headers: p.headers.map(str::to_string),
        })
    }

    /// Check that `s` parses ([`Uri::parse`] accepts it) without building the URI; whether
    /// it carries `?headers`.
    pub(crate) fn check(s: &str) -> Result<Checked, UriError> {
        let p = Parts::of(s)?;
        if let Some(params) = p.params {
            super::params::check(params).map_err(UriError)?;
        }
        Ok(Checked {
            headers: p.headers.is_some(),
        })
    }

    /// A `sip:` URI for `user@host:port`.
    pub fn sip(user: Option<&str>, host: &str, port: Option<u16>) -> Self {
        Self {
            scheme: "sip".into(),
            user: user.map(str::to_string),
            password: None,
            host: host.to_string(),
            port,
            params: Params::new(),
            headers: None,
        }
    }

    /// Whether this is a `sip:` or `sips:` URI.
    pub fn is_sip(&self) -> bool {
        self.scheme == "sip" || self.scheme == "sips"
    }

    /// The `transport` URI parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.params.value("transport").map(str::to_ascii_lowercase)
    }

    /// The user part with %-escapes decoded (lossy for invalid UTF-8).
    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(unescape)
    }
}

/// What [`Uri::check`] found.
pub(crate) struct Checked {
    /// The URI has a `?headers` part.
    pub(crate) headers: bool,
}

/// A URI's parts as written (the scheme not yet lower-cased, the parameters not yet split):
/// the grammar of [`Uri::parse`], written once for parsing and for checking.
struct Parts<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    params: Option<&'a str>,
    headers: Option<&'a str>,
}

impl<'a> Parts<'a> {
    fn of(s: &'a str) -> Result<Self, UriError> {
        let s = s.trim_ascii();
        if s.is_empty() {
            return Err(UriError("empty"));
        }
        if s.bytes()
            .any(|b| b == b' ' || b == b'\t' || b == b'<' || b == b'>' || b < 0x20)
        {
            return Err(UriError("whitespace or angle bracket inside URI"));
        }
        let (scheme, rest) =
            super::params::split_once_byte(s, b':').ok_or(UriError("no scheme"))?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(UriError("bad scheme"));
        }
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            if rest.is_empty() {
                return Err(UriError("empty opaque part"));
            }
            return Ok(Self {
                scheme,
                user: None,
                password: None,
                host: rest,
                port: None,
                params: None,
                headers: None,
            });
        }
        // '@' cannot appear unescaped in userinfo, but '?', ';' and ':' can (RFC 4475
        // §3.1.1.2, §3.1.1.9), so the user part ends at the first '@'.
        let (userinfo, hostpart) = match super::params::split_once_byte(rest, b'@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (hostpart, headers) = match super::params::split_once_byte(hostpart, b'?') {
            Some((r, h)) => (r, Some(h)),
            None => (hostpart, None),
        };
        let (hostport, params) = match super::params::split_once_byte(hostpart, b';') {
            Some((h, p)) => (h, Some(p)),
            None => (hostpart, None),
        };
        let (host, port) = split_host_port(hostport)?;
        let (user, password) = match userinfo {
            Some(u) => match super::params::split_once_byte(u, b':') {
                Some((u, p)) => (Some(u), Some(p)),
                None => (Some(u), None),
            },
            None => (None, None),
        };
        if user == Some("") {
            return Err(UriError("empty user part"));
        }
        Ok(Self {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }
}

fn split_host_port(s: &str) -> Result<(&str, Option<u16>), UriError> {
    if s.is_empty() {
        return Err(UriError("empty host"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or(UriError("unterminated IPv6 reference"))?;
        // "[" v6 "]": the reference as written.
        let host = s.get(..v6.len() + 2).unwrap_or(s);
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| UriError("bad port"))?),
            None if after.is_empty() => None,
            None => return Err(UriError("junk after IPv6 reference")),
        };
        return Ok((host, port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| UriError("bad port"))?)),
        None => (s, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(UriError("bad host"));
    }
    Ok((host, port))
}

/// Decode %-escapes.
pub fn unescape(s: &str) -> String {
    let mut rest = s.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    while let [b, tail @ ..] = rest {
        if *b == b'%'
            && let [h, l, after @ ..] = tail
            && let (Some(h), Some(l)) = (hexval(*h), hexval(*l))
        {
            out.push(h * 16 + l);
            rest = after;
            continue;
        }
        out.push(*b);
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_sip() {
            return write!(f, "{}:{}", self.scheme, self.host);
        }
        write!(f, "{}:", self.scheme)?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_round_trip() {
        let u = Uri::parse("sip:alice:pw@[2001:db8::1]:5070;transport=tcp;lr?Subject=x").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport().as_deref(), Some("tcp"));
        assert_eq!(
            u.to_string(),
            "sip:alice:pw@[2001:db8::1]:5070;transport=tcp;lr?Subject=x"
        );
    }

    #[test]
    fn user_part_may_hold_semicolons() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse("tel:+1-201-555-0123").unwrap();
        assert!(!u.is_sip());
        assert_eq!(u.to_string(), "tel:+1-201-555-0123");
    }

    #[test]
    fn rejects_spaces_and_bad_ports() {
        assert!(Uri::parse("sip:a b@c").is_err());
        assert!(Uri::parse("sip:a@c:99999").is_err());
        assert!(Uri::parse("sip:").is_err());
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("sip%3Auser%40x"), "sip:user@x");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%4"), "%4");
        assert_eq!(unescape("%4g%41"), "%4gA");
        assert_eq!(unescape("%é%C3%A9"), "%éé");
    }
}
