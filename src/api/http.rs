//! The HTTP side of the server API: what a request head says, and responses.
//!
//! Runs on: a shard (pure).

/// What the head of a `/api/...` request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiHead {
    /// `POST` (the endpoints that act); else `GET` or another method.
    pub(crate) post: bool,
    /// `GET` (the endpoints that read).
    pub(crate) get: bool,
    /// The path after `/api/`, without the query.
    pub(crate) endpoint: String,
    /// The query (after `?`), as sent.
    pub(crate) query: String,
    /// `Content-Length`; an error when the body's length cannot be known (absent with a
    /// body-less POST is `Ok(None)`).
    pub(crate) content_length: Result<Option<usize>, &'static str>,
    /// `Authorization: Bearer <key>`.
    pub(crate) bearer: Option<String>,
    /// The connection stays open after the answer (HTTP/1.1 without `Connection: close`).
    pub(crate) keep_alive: bool,
}

impl ApiHead {
    /// Reads the head of a request for `/api/<endpoint>`.
    pub(crate) fn of(req: &httparse::Request<'_, '_>, endpoint: &str, query: &str) -> ApiHead {
        let headers = &*req.headers;
        let values = |name: &'static str| {
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
        };
        let content_length = if values("transfer-encoding").next().is_some() {
            Err("Transfer-Encoding is not supported: send the body with a Content-Length")
        } else {
            let mut lengths = values("content-length");
            match (lengths.next(), lengths.next()) {
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err("more than one Content-Length header"),
                (Some(n), None) => n.trim().parse().map(Some).map_err(|_| "invalid Content-Length"),
            }
        };
        let bearer =
            values("authorization").next().and_then(crate::http::bearer_token).map(str::to_owned);
        let close = values("connection")
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        ApiHead {
            post: req.method == Some("POST"),
            get: req.method == Some("GET"),
            endpoint: endpoint.to_owned(),
            query: query.to_owned(),
            content_length,
            bearer,
            keep_alive: !close,
        }
    }
}

/// A complete JSON response for a request to `endpoint`; `keep_alive` says whether the
/// connection stays open.
pub(crate) fn response(status: u16, body: &str, keep_alive: bool, endpoint: &str) -> Vec<u8> {
    let reason = crate::http::reason_phrase(status);
    let extra = match status {
        401 => "WWW-Authenticate: Bearer\r\n",
        405 if super::is_read_endpoint(endpoint) => "Allow: GET\r\n",
        405 => "Allow: POST\r\n",
        _ => "",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {extra}Cache-Control: no-store\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether `given` is the API key, in time independent of where they differ.
pub(crate) fn key_matches(given: Option<&str>, key: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ApiHead {
        let raw = raw.replace('\n', "\r\n") + "\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(raw.as_bytes()).unwrap();
        ApiHead::of(&req, "publish", "")
    }

    #[test]
    fn reads_length_key_and_keep_alive() {
        let h = head(
            "POST /api/publish HTTP/1.1\nHost: x\nContent-Length: 12\nAuthorization: Bearer k",
        );
        assert!(h.post && h.keep_alive);
        assert_eq!(h.content_length, Ok(Some(12)));
        assert_eq!(h.bearer.as_deref(), Some("k"));
        let h = head("GET /api/publish HTTP/1.1\nHost: x\nConnection: close");
        assert!(!h.post && h.get && !h.keep_alive);
        assert_eq!(h.content_length, Ok(None));
        assert!(head("POST /api/p HTTP/1.1\nTransfer-Encoding: chunked").content_length.is_err());
        assert!(
            head("POST /api/p HTTP/1.1\nContent-Length: 1\nContent-Length: 2")
                .content_length
                .is_err()
        );
        assert!(head("POST /api/p HTTP/1.1\nContent-Length: x").content_length.is_err());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(key_matches(Some("secret"), "secret"));
        assert!(!key_matches(Some("secre"), "secret"));
        assert!(!key_matches(Some("secret2"), "secret"));
        assert!(!key_matches(None, "secret"));
    }
}
