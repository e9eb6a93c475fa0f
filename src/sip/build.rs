//! Builders for what every element generates: responses to requests (RFC 3261 §8.2.6),
//! branches (§8.1.1.7) and tags (§19.3).

use super::message::{HeaderName, Request, Response};

/// A response to `req`: copies Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2) and adds
/// `to_tag` to To when the request had none and a tag is given.
pub fn response_to(req: &Request, status: u16, to_tag: Option<&str>) -> Response {
    let mut r = Response::new(status);
    for h in req.headers.iter() {
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                r.headers.push(h.name.clone(), h.value.clone());
            }
            HeaderName::To => {
                let mut v = h.value.clone();
                if let Some(tag) = to_tag
                    && status > 100
                    && !has_tag(&v)
                {
                    v.push_str(";tag=");
                    v.push_str(tag);
                }
                r.headers.push(HeaderName::To, v);
            }
            _ => {}
        }
    }
    r
}

fn has_tag(v: &str) -> bool {
    super::NameAddr::parse(v).is_ok_and(|a| a.tag().is_some())
}

fn random_token(n: usize) -> String {
    crate::entropy::token(n, b"abcdefghijklmnopqrstuvwxyz0123456789")
}

/// A new RFC 3261 branch (`z9hG4bK` + 16 random characters).
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}

/// A new random tag.
pub fn new_tag() -> String {
    random_token(12)
}
