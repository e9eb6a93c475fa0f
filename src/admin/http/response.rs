//! Response serialization (RFC 9112 §4, §6): status line, framing headers, body.

use std::fmt::Write as _;

use super::{HttpResponse, Next};

/// Serialize a response. Invalid statuses and content types are replaced rather than sent.
pub(super) fn encode_response(
    resp: &HttpResponse,
    head_only: bool,
    next: Next,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    if !(200..=599).contains(&resp.status) {
        tracing::error!(
            status = resp.status,
            "admin API handler returned an invalid status"
        );
        return encode_response(
            &HttpResponse::error(500, "invalid status"),
            head_only,
            next,
            extra,
        );
    }
    let content_type = if resp.content_type.bytes().all(|b| (b' '..0x7f).contains(&b)) {
        resp.content_type.as_str()
    } else {
        "application/octet-stream"
    };
    let connection = match next {
        Next::KeepAlive => "keep-alive",
        Next::Close => "close",
    };
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    let with_body = !matches!(resp.status, 204 | 304);
    if with_body {
        let _ = write!(
            out,
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            resp.body.len()
        );
    }
    let _ = write!(
        out,
        "Cache-Control: no-store\r\nConnection: {connection}\r\n"
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    if with_body && !head_only {
        out.extend_from_slice(&resp.body);
    }
    out
}

/// Reason phrases for the statuses an admin API uses (RFC 9110 §15); others get none.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
