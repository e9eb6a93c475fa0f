//! Minimal SDP bodies (RFC 4566) for offers and answers. The B2BUA passes bodies through, so
//! tests mark each body with a recognisable session name and check it arrives unchanged.

use std::net::SocketAddr;

/// An audio offer or answer from `addr` (media port = SIP port + 1000, wrapping), session
/// version `version`, session name `name`.
pub fn body(addr: SocketAddr, name: &str, version: u32) -> String {
    let port = addr.port().wrapping_add(1000) & !1;
    format!(
        "v=0\r\n\
         o=- 1 {version} IN IP4 {ip}\r\n\
         s={name}\r\n\
         c=IN IP4 {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=sendrecv\r\n",
        ip = addr.ip(),
    )
}

/// The session name (`s=` line) of an SDP body, if any.
pub fn session_name(body: &[u8]) -> Option<String> {
    String::from_utf8_lossy(body)
        .lines()
        .find_map(|l| l.strip_prefix("s=").map(str::to_string))
}
