//! The Via header (RFC 3261 §20.42, §18.2.1 `received`, RFC 3581 `rport`).

use std::fmt;

use super::params::{Params, split_once_byte};

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-cased (`UDP`, `TCP`, `TLS`, or anything else).
    pub transport: String,
    /// sent-by host.
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters (`branch`, `received`, `rport`, ...).
    pub params: Params,
}

/// A Via value's parts as written (the transport not yet upper-cased, the parameters not yet
/// split): the grammar of [`Via::parse`], written once for parsing and for checking.
struct Parts<'a> {
    transport: &'a str,
    host: &'a str,
    port: Option<u16>,
    params: &'a str,
}

impl<'a> Parts<'a> {
    fn of(s: &'a str) -> Result<Self, &'static str> {
        let (name, rest) = split_once_byte(s.trim_ascii(), b'/').ok_or("missing protocol")?;
        let (version, rest) = split_once_byte(rest, b'/').ok_or("missing protocol version")?;
        let (name, version) = (name.trim_ascii(), version.trim_ascii());
        let rest = rest.trim_ascii_start();
        // Any SIP version parses, so that a request from a newer version can still be answered
        // 505 (RFC 4475 §3.1.2.16); the version itself is checked on the request line.
        let numeric = split_once_byte(version, b'.').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        });
        if !name.eq_ignore_ascii_case("SIP") || !numeric {
            return Err("unsupported Via protocol");
        }
        let (transport, rest) = split_at_whitespace(rest).ok_or("missing sent-by")?;
        if transport.is_empty() {
            return Err("empty transport");
        }
        let (sent_by, params) = match split_once_byte(rest, b';') {
            Some((sent_by, params)) => (sent_by.trim_ascii(), params),
            None => (rest.trim_ascii(), ""),
        };
        let (host, port) = split_sent_by(sent_by)?;
        Ok(Self {
            transport,
            host,
            port,
            params,
        })
    }
}

/// What [`Via::check`] read: the transport as written and the parameter list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked<'a> {
    /// The transport token as written.
    pub(crate) transport: &'a str,
    /// `;a=b;c...`, checked to parse.
    pub(crate) params: &'a str,
}

impl Via {
    /// Parse one Via value (`SIP / 2.0 / UDP host:port;params`), LWS allowed around `/`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let p = Parts::of(s)?;
        Ok(Self {
            transport: p.transport.to_ascii_uppercase(),
            host: p.host.to_string(),
            port: p.port,
            params: Params::parse(p.params)?,
        })
    }

    /// Whether `s` parses as [`Via::parse`] would have it (the same errors), without building
    /// it: validation checks every Via of every message.
    pub(crate) fn check(s: &str) -> Result<Checked<'_>, &'static str> {
        let p = Parts::of(s)?;
        super::params::check(p.params)?;
        Ok(Checked {
            transport: p.transport,
            params: p.params,
        })
    }

    /// The `branch` parameter of a Via value, found without parsing the rest: the same as
    /// `Via::parse(value)?.branch()` for every value that parses (the `message` fuzz target
    /// checks it). Transactions match responses by it, once per message.
    pub fn branch_of(value: &str) -> Option<&str> {
        // As [`Via::parse`] splits it: protocol/version/transport, whitespace, sent-by, then
        // the parameters after the first `;` (a `;` glued to the transport is not one).
        let (_, rest) = split_once_byte(value.trim_ascii(), b'/')?;
        let (_, rest) = split_once_byte(rest, b'/')?;
        let (_, sent_by) = split_at_whitespace(rest.trim_ascii_start())?;
        super::params::find_value(split_once_byte(sent_by, b';')?.1, "branch")
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// Whether the branch has the RFC 3261 magic cookie.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    /// The sent-by as a socket address, when its host is an IP literal (port 5060 when
    /// absent).
    pub fn sent_by_addr(&self) -> Option<std::net::SocketAddr> {
        let ip: std::net::IpAddr = self.host.trim_matches(['[', ']']).parse().ok()?;
        Some(std::net::SocketAddr::new(ip, self.port.unwrap_or(5060)))
    }

    /// `host:port` as it appears in the header.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Split at the first ASCII whitespace byte (dropping it).
fn split_at_whitespace(s: &str) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b.is_ascii_whitespace())?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

fn split_sent_by(s: &str) -> Result<(&str, Option<u16>), &'static str> {
    if s.is_empty() {
        return Err("empty sent-by");
    }
    if s.starts_with('[') {
        let (v6, after) = split_once_byte(s, b']').ok_or("unterminated IPv6 reference")?;
        // "[" v6 "]": the reference as written.
        let host = s.get(..v6.len() + 1).ok_or("unterminated IPv6 reference")?;
        let port = match after.trim_ascii().strip_prefix(':') {
            Some(p) => Some(p.trim_ascii().parse().map_err(|_| "bad port")?),
            None => None,
        };
        return Ok((host, port));
    }
    let (h, p) = match split_once_byte(s, b':') {
        Some((h, p)) => (
            h.trim_ascii(),
            Some(p.trim_ascii().parse::<u16>().map_err(|_| "bad port")?),
        ),
        None => (s, None),
    };
    if h.is_empty()
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("bad sent-by host");
    }
    Ok((h, p))
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_of_agrees_with_the_parse() {
        for v in [
            "SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK1;rport",
            "SIP  /   2.0  /  UDP  192.0.2.2 : 5060 ; BRANCH = z9hG4bK390skdjuw;rport",
            "SIP/2.0/TCP [2001:db8::1]:5060;rport;received=192.0.2.9;branch=z9hG4bKx",
            "SIP/2.0/UDP host;maddr=\"a;branch=no\";branch=yes",
            "SIP/2.0/UDP host",
            "SIP/2.0/UDP host;branch",
            "SIP/2.0/UD;x=1;branch=no host;branch=yes",
        ] {
            let parsed = Via::parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(Via::branch_of(v), parsed.branch(), "{v}");
        }
    }

    #[test]
    fn check_accepts_exactly_what_parse_accepts() {
        for v in [
            "SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK1;rport",
            "SIP  /   2.0  /  udp  192.0.2.2 : 5060 ; BRANCH = z9hG4bK390skdjuw;rport",
            "SIP/2.0/TCP [2001:db8::1]:5060;rport;received=192.0.2.9;branch=z9hG4bKx",
            "SIP/2.0/UDP host;maddr=\"a;branch=no\";branch=yes",
            "SIP/2.0/UDP host",
            "SIP/x/UDP a",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP a:b",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP a;=x",
            "SIP/2.0/UDP a;x=\"y",
        ] {
            let checked = Via::check(v).map(|c| c.transport.to_ascii_uppercase());
            assert_eq!(checked, Via::parse(v).map(|p| p.transport), "{v}");
        }
    }

    #[test]
    fn parses_torture_spacing() {
        let v =
            Via::parse("SIP  /   2.0  /  UDP  192.0.2.2 : 5060 ; branch = z9hG4bK390skdjuw;rport")
                .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK390skdjuw"));
        assert!(v.params.has("rport"));
        assert!(v.has_rfc3261_branch());
    }

    #[test]
    fn round_trip() {
        let s = "SIP/2.0/TCP [::1]:5061;branch=z9hG4bKx;received=127.0.0.1";
        assert_eq!(Via::parse(s).unwrap().to_string(), s);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Via::parse("SIP/x/UDP a").is_err());
        assert!(Via::parse("HTTP/2.0/UDP a").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP a:b").is_err());
        assert!(Via::parse("SIP/2.0/UDP [::1").is_err());
        assert!(Via::parse("SIP/2.0/UDPé a").is_ok_and(|v| v.transport == "UDPé"));
    }
}
