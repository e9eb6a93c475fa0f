//! Plain network value types shared by the transport (which owns the sockets) and the
//! sans-IO protocol layers, which depend on this module and never on `transport`.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::Parsed;

/// A SIP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// UDP (unreliable: transactions retransmit).
    Udp,
    /// TCP (reliable: no retransmission, zero-length wait timers).
    Tcp,
    /// TLS over TCP (reliable, like TCP).
    Tls,
}

impl Proto {
    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }

    /// Whether the transport delivers in order without loss (RFC 3261 §17: "reliable").
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::Tcp | Self::Tls)
    }

    /// From a Via transport token or `transport=` URI parameter.
    pub fn from_token(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("udp") {
            Some(Self::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Some(Self::Tcp)
        } else if s.eq_ignore_ascii_case("tls") {
            Some(Self::Tls)
        } else {
            None
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        })
    }
}

/// Identifies one TCP connection in the transport's connection table (never zero, so that an
/// `Option<ConnId>` in every dialog's flow costs no more than the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub std::num::NonZeroU64);

/// Where a message came from or goes to: protocol, remote address, and for TCP the
/// connection it arrived on (responses and in-dialog requests reuse it when it is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Protocol.
    pub proto: Proto,
    /// Remote address.
    pub remote: SocketAddr,
    /// The TCP connection, when known.
    pub conn: Option<ConnId>,
}

impl Flow {
    /// A UDP flow to `remote`.
    pub fn udp(remote: SocketAddr) -> Self {
        Self {
            proto: Proto::Udp,
            remote,
            conn: None,
        }
    }

    /// A TCP flow to `remote`, on a connection the transport picks or opens.
    pub fn tcp(remote: SocketAddr) -> Self {
        Self {
            proto: Proto::Tcp,
            remote,
            conn: None,
        }
    }

    /// A TLS flow to `remote`, on a connection the transport picks or opens.
    pub fn tls(remote: SocketAddr) -> Self {
        Self {
            proto: Proto::Tls,
            remote,
            conn: None,
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto, self.remote)
    }
}

/// Bytes to write to a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub flow: Flow,
    /// The serialized message.
    pub bytes: Bytes,
}

/// Something received from the network.
#[derive(Debug)]
pub enum Inbound {
    /// A message that parsed.
    Message(Box<Parsed>, Flow),
    /// A connection to a flow could not be opened (TCP connect refused or timed out).
    Unreachable(Flow),
    /// Bytes that did not parse (the core answers 400 when it can route one).
    Malformed {
        /// What arrived.
        raw: Bytes,
        /// Why it did not parse.
        error: String,
        /// From where.
        flow: Flow,
    },
}
