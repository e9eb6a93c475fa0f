//! Minimal SDP bodies (RFC 4566) for offers and answers. The B2BUA passes bodies through, so
//! tests mark each body with a recognisable session name and check it arrives unchanged.

use std::net::SocketAddr;

/// An audio offer or answer from `addr` (media port = SIP port + 1000, wrapping), session
/// version `version`, session name `name`.
pub fn body(addr: SocketAddr, name: &str, version: u32) -> String {
    body_with(addr, name, version, "sendrecv")
}

/// [`body`] with the direction attribute `direction` (`sendrecv`, `sendonly`, `recvonly`,
/// `inactive`).
pub fn body_with(addr: SocketAddr, name: &str, version: u32, direction: &str) -> String {
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
         a={direction}\r\n",
        ip = addr.ip(),
    )
}

/// The session name (`s=` line) of an SDP body, if any.
pub fn session_name(body: &[u8]) -> Option<String> {
    String::from_utf8_lossy(body)
        .lines()
        .find_map(|l| l.strip_prefix("s=").map(str::to_string))
}

/// The direction attribute of an SDP body (`sendrecv` when it has none).
pub fn direction(body: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(body);
    for l in text.lines() {
        match l.trim_end() {
            "a=sendonly" => return "sendonly",
            "a=recvonly" => return "recvonly",
            "a=inactive" => return "inactive",
            _ => {}
        }
    }
    "sendrecv"
}

/// What a party answers to an offer with direction `offered`, holding the call itself or not
/// (RFC 3264 §6.1).
pub fn answer_direction(offered: &str, holding: bool) -> &'static str {
    match (offered, holding) {
        ("inactive", _) | ("sendonly", true) => "inactive",
        ("sendonly", false) => "recvonly",
        (_, true) => "sendonly",
        ("recvonly", false) => "sendonly",
        _ => "sendrecv",
    }
}
