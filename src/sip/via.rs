//! The Via header (RFC 3261 §20.42, §18.2.1 `received`, RFC 3581 `rport`).

use std::fmt;

use super::params::Params;

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

impl Via {
    /// Parse one Via value (`SIP / 2.0 / UDP host:port;params`), LWS allowed around `/`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let s = s.trim();
        let mut parts = s.splitn(3, '/');
        let name = parts.next().ok_or("missing protocol")?.trim();
        let version = parts.next().ok_or("missing protocol version")?.trim();
        let rest = parts.next().ok_or("missing transport")?.trim_start();
        // Any SIP version parses, so that a request from a newer version can still be answered
        // 505 (RFC 4475 §3.1.2.16); the version itself is checked on the request line.
        let numeric = super::params::split_once_byte(version, b'.').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        });
        if !name.eq_ignore_ascii_case("SIP") || !numeric {
            return Err("unsupported Via protocol");
        }
        let (transport, rest) = rest
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or("missing sent-by")?;
        let transport = transport.to_ascii_uppercase();
        if transport.is_empty() {
            return Err("empty transport");
        }
        let (sent_by, params) = match super::params::split_once_byte(rest, b';') {
            Some((sent_by, params)) => (sent_by.trim(), Params::parse(params)?),
            None => (rest.trim(), Params::new()),
        };
        let (host, port) = split_sent_by(sent_by)?;
        Ok(Self {
            transport,
            host,
            port,
            params,
        })
    }

    /// The `branch` parameter of a Via value, found without parsing the rest: the same as
    /// `Via::parse(value)?.branch()` for every value that parses (the `message` fuzz target
    /// checks it). Transactions match responses by it, once per message.
    pub fn branch_of(value: &str) -> Option<&str> {
        // As [`Via::parse`] splits it: protocol/version/transport, whitespace, sent-by, then
        // the parameters after the first `;` (a `;` glued to the transport is not one).
        let rest = value.trim().splitn(3, '/').nth(2)?.trim_start();
        let (_, sent_by) = rest.split_once(|c: char| c.is_ascii_whitespace())?;
        super::params::find_value(super::params::split_once_byte(sent_by, b';')?.1, "branch")
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

fn split_sent_by(s: &str) -> Result<(String, Option<u16>), &'static str> {
    if s.is_empty() {
        return Err("empty sent-by");
    }
    if s.starts_with('[') {
        let (v6, after) =
            super::params::split_once_byte(s, b']').ok_or("unterminated IPv6 reference")?;
        let host = format!("{v6}]");
        let port = match after.trim().strip_prefix(':') {
            Some(p) => Some(p.trim().parse().map_err(|_| "bad port")?),
            None => None,
        };
        return Ok((host, port));
    }
    let (h, p) = match super::params::split_once_byte(s, b':') {
        Some((h, p)) => (
            h.trim(),
            Some(p.trim().parse::<u16>().map_err(|_| "bad port")?),
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
    Ok((h.to_string(), p))
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
