//! HTTP pieces the upgrade (`conn::handshake`) and the server API (`api::http`) share.
//!
//! Runs on: a shard. Pure.

/// The reason phrase of a status this server answers with.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The credential of an `Authorization: Bearer <credential>` header value (the scheme
/// is case-insensitive, surrounding spaces are ignored); `None` for other schemes.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// `%XX`-decodes a query value; `None` when it is malformed, not UTF-8 or longer than
/// `max`.
pub(crate) fn percent_decoded(value: &str, max: usize) -> Option<String> {
    if value.len() > max {
        return None;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer_token("Bearer a.b.c"), Some("a.b.c"));
        assert_eq!(bearer_token(" bearer   a.b.c "), Some("a.b.c"));
        assert_eq!(bearer_token("Basic eA=="), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
