//! SDP as the media relay needs it (RFC 4566, RFC 3264): where a party wants media, and the
//! same description with our relay address in it. Everything else passes untouched; hold
//! directions are kept and `c=0.0.0.0` (RFC 2543 hold) never leaves us.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

/// Where a party wants to receive RTP and RTCP (the first media stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaAddr {
    /// RTP destination.
    pub rtp: SocketAddr,
    /// RTCP destination (`a=rtcp`, else RTP port + 1).
    pub rtcp: SocketAddr,
    /// Whether the stream is on hold by address (`c=0.0.0.0`) or port 0.
    pub held: bool,
    /// Whether the party wants to receive media now: not held, and its direction (the first
    /// stream's attribute, else the session's) is `sendrecv` or `recvonly` (RFC 3264 §6.1).
    pub receives: bool,
}

/// Read the first media stream's address.
pub fn media_addr(sdp: &[u8]) -> Option<MediaAddr> {
    let text = std::str::from_utf8(sdp).ok()?;
    let mut session_c: Option<IpAddr> = None;
    let mut media_c: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut rtcp: Option<(u16, Option<IpAddr>)> = None;
    let mut in_first = false;
    let mut seen_m = false;
    let (mut session_dir, mut media_dir) = (None, None);
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(dir) = direction(line) {
            if in_first {
                media_dir = Some(dir);
            } else {
                session_dir = Some(dir);
            }
        }
        if let Some(rest) = line.strip_prefix("m=") {
            if seen_m {
                break;
            }
            seen_m = true;
            in_first = true;
            port = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok());
        } else if let Some(rest) = line.strip_prefix("c=") {
            let ip = rest
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok());
            if in_first {
                media_c = ip;
            } else {
                session_c = ip;
            }
        } else if let Some(rest) = line.strip_prefix("a=rtcp:")
            && in_first
        {
            let mut it = rest.split_whitespace();
            let p = it.next().and_then(|p| p.parse().ok());
            let ip = it.nth(2).and_then(|a| a.parse().ok());
            if let Some(p) = p {
                rtcp = Some((p, ip));
            }
        }
    }
    let ip = media_c.or(session_c)?;
    let port = port?;
    let held = ip.is_unspecified() || port == 0;
    let rtcp_addr = match rtcp {
        Some((p, Some(a))) => SocketAddr::new(a, p),
        Some((p, None)) => SocketAddr::new(ip, p),
        None => SocketAddr::new(ip, port.saturating_add(1)),
    };
    let receives = !held
        && media_dir
            .or(session_dir)
            .unwrap_or(Direction::SendRecv)
            .receives();
    Some(MediaAddr {
        rtp: SocketAddr::new(ip, port),
        rtcp: rtcp_addr,
        held,
        receives,
    })
}

/// A stream's direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly`: the party puts the other on hold.
    SendOnly,
    /// `a=recvonly`: the party is held.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// Whether the party that wrote this direction wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

/// The direction named by one SDP line, if it is a direction attribute.
fn direction(line: &str) -> Option<Direction> {
    match line {
        "a=sendrecv" => Some(Direction::SendRecv),
        "a=sendonly" => Some(Direction::SendOnly),
        "a=recvonly" => Some(Direction::RecvOnly),
        "a=inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// RTP clock rate of a static payload type (RFC 3551 Table 4 and 5); 8 kHz otherwise.
pub fn static_clock_rate(pt: u8) -> u32 {
    match pt {
        6 => 16_000,
        10 | 11 => 44_100,
        14 | 25 | 26 | 28 | 31..=34 => 90_000,
        16 => 11_025,
        17 => 22_050,
        _ => 8_000,
    }
}

/// The payload types of the first media stream with their clock rates: from `a=rtpmap`
/// where given, else the static type's rate (RFC 3551).
pub fn formats(sdp: &[u8]) -> Vec<(u8, u32)> {
    let Ok(text) = std::str::from_utf8(sdp) else {
        return Vec::new();
    };
    let mut out: Vec<(u8, u32)> = Vec::new();
    let mut seen_m = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            if seen_m {
                break;
            }
            seen_m = true;
            out = rest
                .split_whitespace()
                .skip(3)
                .filter_map(|f| f.parse::<u8>().ok())
                .filter(|pt| *pt < 128)
                .map(|pt| (pt, static_clock_rate(pt)))
                .collect();
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:")
            && seen_m
        {
            let mut it = rest.split_whitespace();
            let pt = it.next().and_then(|p| p.parse::<u8>().ok());
            let clock = it
                .next()
                .and_then(|enc| enc.split('/').nth(1))
                .and_then(|c| c.parse::<u32>().ok())
                .filter(|c| *c > 0);
            if let (Some(pt), Some(clock)) = (pt, clock)
                && let Some(slot) = out.iter_mut().find(|(p, _)| *p == pt)
            {
                slot.1 = clock;
            }
        }
    }
    out
}

fn addr_line(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("c=IN IP4 {a}"),
        IpAddr::V6(a) => format!("c=IN IP6 {a}"),
    }
}

/// The same SDP with our relay address: every `c=` line points at `ip`, the first stream at
/// `rtp_port` (its `a=rtcp` at `rtp_port + 1`), further streams are refused (port 0). An old
/// style hold (`c=0.0.0.0`) becomes `a=inactive` unless a direction attribute is present.
pub fn rewrite(sdp: &[u8], ip: IpAddr, rtp_port: u16) -> Option<Bytes> {
    let text = std::str::from_utf8(sdp).ok()?;
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let old_hold = text
        .lines()
        .any(|l| l.trim_end_matches('\r').starts_with("c=") && l.contains(" 0.0.0.0"));
    let has_dir = text.lines().any(|l| {
        matches!(
            l.trim_end_matches('\r'),
            "a=sendonly" | "a=recvonly" | "a=inactive" | "a=sendrecv"
        )
    });
    let mut out = String::with_capacity(text.len() + 32);
    let mut m_index = 0usize;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if line.starts_with("c=") {
            out.push_str(&addr_line(ip));
        } else if let Some(rest) = line.strip_prefix("m=") {
            m_index += 1;
            let mut parts = rest.splitn(3, ' ');
            let media = parts.next().unwrap_or("audio");
            let _ = parts.next();
            let tail = parts.next().unwrap_or("RTP/AVP 0");
            let port = if m_index == 1 { rtp_port } else { 0 };
            out.push_str(&format!("m={media} {port} {tail}"));
            if m_index == 1 && old_hold && !has_dir {
                out.push_str(eol);
                out.push_str("a=inactive");
            }
        } else if line.starts_with("a=rtcp:") && m_index == 1 {
            out.push_str(&format!("a=rtcp:{}", rtp_port.saturating_add(1)));
        } else if line.starts_with("a=rtcp:") {
            continue;
        } else {
            out.push_str(line);
        }
        out.push_str(eol);
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtcp:40001\r\na=sendonly\r\nm=video 40002 RTP/AVP 31\r\n";

    #[test]
    fn reads_the_first_stream() {
        let m = media_addr(OFFER.as_bytes()).unwrap();
        assert_eq!(m.rtp, "10.0.0.5:40000".parse().unwrap());
        assert_eq!(m.rtcp, "10.0.0.5:40001".parse().unwrap());
        assert!(!m.held);
        assert!(
            !m.receives,
            "a=sendonly: the party holds the other, it wants nothing back"
        );
    }

    #[test]
    fn direction_comes_from_the_stream_else_the_session() {
        let with = |session: &str, media: &str| {
            let sdp = format!(
                "v=0\r\nc=IN IP4 1.2.3.4\r\n{session}t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n{media}"
            );
            media_addr(sdp.as_bytes()).unwrap().receives
        };
        assert!(with("", ""), "sendrecv is the default");
        assert!(with("", "a=recvonly\r\n"), "a held party still receives");
        assert!(!with("", "a=inactive\r\n"));
        assert!(
            !with("a=sendonly\r\n", ""),
            "the session's attribute applies"
        );
        assert!(
            with("a=sendonly\r\n", "a=sendrecv\r\n"),
            "the stream's wins"
        );
        let old_hold = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert!(!media_addr(old_hold.as_bytes()).unwrap().receives);
    }

    #[test]
    fn formats_take_clock_rates_from_rtpmap() {
        let sdp = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0 9 96 101\r\n\
                   a=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n\
                   m=video 5000 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n";
        assert_eq!(
            formats(sdp.as_bytes()),
            vec![(0, 8000), (9, 8000), (96, 48000), (101, 8000)]
        );
    }

    #[test]
    fn rewrites_address_ports_and_keeps_direction() {
        let r = rewrite(OFFER.as_bytes(), "127.0.0.1".parse().unwrap(), 20000).unwrap();
        let t = std::str::from_utf8(&r).unwrap();
        assert!(t.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(t.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        assert!(t.contains("a=rtcp:20001\r\n"));
        assert!(t.contains("a=sendonly\r\n"));
        assert!(
            t.contains("m=video 0 RTP/AVP 31\r\n"),
            "extra streams refused"
        );
        assert!(!t.contains("10.0.0.5\r\nt="));
        assert!(
            t.contains("o=alice 1 1 IN IP4 10.0.0.5"),
            "origin untouched"
        );
    }

    #[test]
    fn old_style_hold_becomes_inactive_not_zero_address() {
        let held =
            "v=0\no=a 1 2 IN IP4 0.0.0.0\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 4000 RTP/AVP 0\n";
        assert!(media_addr(held.as_bytes()).unwrap().held);
        let r = rewrite(held.as_bytes(), "127.0.0.1".parse().unwrap(), 20002).unwrap();
        let t = std::str::from_utf8(&r).unwrap();
        assert!(!t.contains("c=IN IP4 0.0.0.0"));
        assert!(t.contains("a=inactive"));
    }
}
