//! HEP version 3 (the Homer Encapsulation Protocol): a copy of each SIP message as it crossed
//! the wire — addresses, transport, time, and the message itself — for a capture server
//! (Homer, heplify-server, Kamailio's `sipcapture`). Sans-IO: this file only builds packets;
//! the node sends them off the signalling path.
//!
//! A packet is `HEP3`, its total length (u16), then chunks: vendor (u16, 0 for the generic
//! chunks), type (u16), length including this 6-byte header (u16), payload. All big-endian.

use std::net::{IpAddr, SocketAddr};

use crate::net::Proto;

/// What one capture says: where a message went, how, and when.
#[derive(Debug, Clone, Copy)]
pub struct Captured<'a> {
    /// Transport.
    pub proto: Proto,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Wall clock, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The SIP message as it crossed the wire.
    pub payload: &'a [u8],
}

/// Generic chunk types (vendor 0) this encoder writes.
mod chunk {
    pub const FAMILY: u16 = 0x0001;
    pub const PROTOCOL: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const SECONDS: u16 = 0x0009;
    pub const MICROS: u16 = 0x000a;
    pub const PAYLOAD_TYPE: u16 = 0x000b;
    pub const AGENT_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
}

/// Payload type "SIP".
const SIP: u8 = 1;

fn put(out: &mut Vec<u8>, kind: u16, data: &[u8]) -> Option<()> {
    let len = u16::try_from(data.len().checked_add(6)?).ok()?;
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Some(())
}

/// One HEP3 packet for `c`, from capture agent `agent_id`, with the capture server's
/// password when it has one. `None` when the message is too large for a packet (64 KiB) or
/// the two addresses are of different families.
pub fn encode(c: &Captured<'_>, agent_id: u32, password: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(c.payload.len() + 128);
    out.extend_from_slice(b"HEP3\0\0");
    let ip_proto: u8 = match c.proto {
        Proto::Udp => 17,
        Proto::Tcp | Proto::Tls => 6,
    };
    match (c.src.ip(), c.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(&mut out, chunk::FAMILY, &[2])?;
            put(&mut out, chunk::PROTOCOL, &[ip_proto])?;
            put(&mut out, chunk::IPV4_SRC, &s.octets())?;
            put(&mut out, chunk::IPV4_DST, &d.octets())?;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            put(&mut out, chunk::FAMILY, &[10])?;
            put(&mut out, chunk::PROTOCOL, &[ip_proto])?;
            put(&mut out, chunk::IPV6_SRC, &s.octets())?;
            put(&mut out, chunk::IPV6_DST, &d.octets())?;
        }
        _ => return None,
    }
    put(&mut out, chunk::SRC_PORT, &c.src.port().to_be_bytes())?;
    put(&mut out, chunk::DST_PORT, &c.dst.port().to_be_bytes())?;
    let secs = u32::try_from(c.time_us / 1_000_000).unwrap_or(u32::MAX);
    let micros = u32::try_from(c.time_us % 1_000_000).unwrap_or(0);
    put(&mut out, chunk::SECONDS, &secs.to_be_bytes())?;
    put(&mut out, chunk::MICROS, &micros.to_be_bytes())?;
    put(&mut out, chunk::PAYLOAD_TYPE, &[SIP])?;
    put(&mut out, chunk::AGENT_ID, &agent_id.to_be_bytes())?;
    if let Some(p) = password {
        put(&mut out, chunk::AUTH_KEY, p.as_bytes())?;
    }
    put(&mut out, chunk::PAYLOAD, c.payload)?;
    let total = u16::try_from(out.len()).ok()?;
    let [hi, lo] = total.to_be_bytes();
    if let Some(slot) = out.get_mut(4..6) {
        slot.copy_from_slice(&[hi, lo]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a packet as (type, payload), checking the framing on the way.
    fn chunks(p: &[u8]) -> Vec<(u16, Vec<u8>)> {
        assert_eq!(&p[..4], b"HEP3");
        assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, p.len());
        let mut rest = &p[6..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let vendor = u16::from_be_bytes([rest[0], rest[1]]);
            let kind = u16::from_be_bytes([rest[2], rest[3]]);
            let len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
            assert_eq!(vendor, 0);
            out.push((kind, rest[6..len].to_vec()));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn a_udp_message_over_ipv4() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\n\r\n";
        let c = Captured {
            proto: Proto::Udp,
            src: "127.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5070".parse().unwrap(),
            time_us: 1_700_000_000_250_000,
            payload: msg,
        };
        let p = encode(&c, 2001, Some("s3cret")).unwrap();
        let ch = chunks(&p);
        let get = |k: u16| {
            ch.iter()
                .find(|(t, _)| *t == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(chunk::FAMILY), vec![2]);
        assert_eq!(get(chunk::PROTOCOL), vec![17]);
        assert_eq!(get(chunk::IPV4_DST), vec![10, 0, 0, 2]);
        assert_eq!(get(chunk::DST_PORT), 5070u16.to_be_bytes().to_vec());
        assert_eq!(get(chunk::SECONDS), 1_700_000_000u32.to_be_bytes().to_vec());
        assert_eq!(get(chunk::MICROS), 250_000u32.to_be_bytes().to_vec());
        assert_eq!(get(chunk::AGENT_ID), 2001u32.to_be_bytes().to_vec());
        assert_eq!(get(chunk::AUTH_KEY), b"s3cret".to_vec());
        assert_eq!(get(chunk::PAYLOAD), msg.to_vec());
    }

    #[test]
    fn mixed_families_and_oversized_messages_are_not_encoded() {
        let big = vec![b'x'; 70_000];
        let c = Captured {
            proto: Proto::Tcp,
            src: "[::1]:5060".parse().unwrap(),
            dst: "[::1]:5070".parse().unwrap(),
            time_us: 0,
            payload: &big,
        };
        assert!(encode(&c, 1, None).is_none());
        let small = Captured { payload: b"x", ..c };
        let p = encode(&small, 1, None).unwrap();
        assert!(
            chunks(&p)
                .iter()
                .any(|(t, v)| *t == chunk::FAMILY && v == &[10])
        );
        let mixed = Captured {
            dst: "127.0.0.1:5070".parse().unwrap(),
            ..small
        };
        assert!(encode(&mixed, 1, None).is_none());
    }
}
