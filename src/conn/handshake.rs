//! The HTTP/1.1 upgrade: parse the request, decide, and build the response.
//!
//! Runs on: a shard, in a connection task before it is registered. Pure functions over
//! bytes (the task does the reading, with the handshake deadline), so that every
//! decision is unit-tested and the parser can be fuzzed.

use crate::{
    api::http::ApiHead,
    config::{EchoPath, Origins},
    conn::Mode,
    history::Since,
    protocol::limits::is_valid_user_id,
};

/// What the configuration says about upgrades.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    /// The conformance echo endpoint, if enabled.
    pub echo_path: &'a EchoPath,
    /// Browser origins allowed to upgrade.
    pub allowed_origins: &'a Origins,
}

/// The user id under which echo connections are registered: not a valid user id, so no
/// direct message can ever reach them.
pub(crate) const ECHO_USER: &str = "~echo";

/// Most request headers accepted; more gets HTTP 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// The subprotocol that selects the v1 JSON protocol.
pub(crate) const V1_SUBPROTOCOL: &str = "corecast.v1";

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// A valid WebSocket upgrade on `/ws/{user}`.
    Upgrade {
        /// The validated user id from the path.
        user: String,
        /// Seed, v1 (client offered `corecast.v1`: the server selects it) or echo.
        mode: Mode,
        /// `Sec-WebSocket-Accept` value.
        accept_key: String,
        /// `?lastEventId=<id>`: replay the broadcasts after it (a value that is not an
        /// event id is [`Since::Malformed`]: answered `recovered: false`).
        last_event_id: Option<Since>,
        /// The connection token from `Authorization: Bearer` or `?token=` (the header wins);
        /// checked by the shard when authentication is on.
        token: Option<String>,
    },
    /// A request to the server API (`/api/...`); the shard reads the body and answers.
    Api(ApiHead),
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// `GET /livez`: the process is alive (answered while it serves anything).
    Live,
    /// `GET /metrics`: the node's counters for Prometheus.
    Metrics,
    /// `GET` of a file embedded in the binary (`/corecast.js`, the dashboard at `/`),
    /// with the API key the request presented (`Authorization: Bearer` or `?key=`).
    Asset {
        /// The file.
        asset: crate::assets::Asset,
        /// The key given, if any (the shard decides whether the file needs one).
        key: Option<String>,
    },
    /// Anything else: answer with this status and close.
    Reject(Rejection),
}

/// An HTTP error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// HTTP status code.
    pub status: u16,
    /// Short plain-text body saying why.
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Request {
    Request::Reject(Rejection { status, reason })
}

/// Parses the request at the start of `buf`.
///
/// Returns `None` while the request head is incomplete, otherwise the decision and the
/// number of bytes the head used (bytes after it are the client's first frames).
pub(crate) fn parse_request(buf: &[u8], policy: Policy<'_>) -> Option<(Request, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => {
            return Some((reject(431, "too many request headers"), buf.len()));
        }
        Err(_) => return Some((reject(400, "malformed HTTP request"), buf.len())),
    };
    Some((decide(&req, policy), used))
}

fn decide(req: &httparse::Request<'_, '_>, policy: Policy<'_>) -> Request {
    if req.version != Some(1) {
        return reject(400, "HTTP/1.1 required");
    }
    let Some(target) = req.path else { return reject(400, "missing request target") };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // RFC 7230 §5.4 (and RFC 6455 §4.2.1, item 2): exactly one Host header.
    let count =
        |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    match count("host") {
        1 => {}
        0 => return reject(400, "missing Host header"),
        _ => return reject(400, "more than one Host header"),
    }
    if let Some(endpoint) = path.strip_prefix("/api/") {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        return Request::Api(ApiHead::of(req, endpoint, query));
    }
    if req.method != Some("GET") {
        return reject(405, "only GET is supported");
    }
    if path == "/healthz" {
        return Request::Health;
    }
    if path == "/livez" {
        return Request::Live;
    }
    if path == "/metrics" {
        return Request::Metrics;
    }
    if let Some(asset) = crate::assets::at(path) {
        let query = target.split_once('?').map(|(_, query)| query);
        let key = header("authorization")
            .and_then(crate::http::bearer_token)
            .map(str::to_owned)
            .or_else(|| {
                query
                    .and_then(|q| query_value(q, "key"))
                    .and_then(|value| crate::http::percent_decoded(value, MAX_TOKEN_TEXT))
            });
        return Request::Asset { asset, key };
    }
    if path == "/readyz" {
        return Request::Ready;
    }
    let echo = policy.echo_path.0.as_deref() == Some(path);
    let user = if echo {
        ECHO_USER
    } else {
        let Some(user) = path.strip_prefix("/ws/") else {
            return reject(404, "no such endpoint; use /ws/{user_id}");
        };
        if !is_valid_user_id(user) {
            return reject(400, "invalid user id: 1-64 characters of A-Z a-z 0-9 _ . -");
        }
        user
    };
    let has_token = |value: Option<&str>, token: &str| {
        value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header("upgrade"), "websocket") || !has_token(header("connection"), "upgrade") {
        return reject(
            400,
            "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        );
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return reject(426, "unsupported Sec-WebSocket-Version; 13 required");
    }
    // RFC 6455 §4.2.1, item 5: one key; two keys are two answers the client cannot tell apart.
    if count("sec-websocket-key") > 1 {
        return reject(400, "more than one Sec-WebSocket-Key header");
    }
    let Some(key) = header("sec-websocket-key").map(str::trim).filter(|k| is_valid_key(k)) else {
        return reject(400, "missing or malformed Sec-WebSocket-Key");
    };
    if !policy.allowed_origins.allows(header("origin")) {
        return reject(403, "origin not allowed");
    }
    let v1 = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == V1_SUBPROTOCOL);
    let mode = if echo {
        Mode::Echo
    } else if v1 {
        Mode::V1
    } else {
        Mode::Seed
    };
    let query = target.split_once('?').map(|(_, query)| query);
    let last_event_id = query.and_then(|q| query_value(q, "lastEventId")).map(|value| {
        match crate::http::percent_decoded(value, MAX_EVENT_ID_TEXT) {
            Some(text) => Since::parse(&text).unwrap_or(Since::Malformed),
            None => Since::Malformed,
        }
    });
    // A token that is not readable as such is kept as given: the verifier calls it
    // malformed (401), rather than the node calling it missing.
    let token = header("authorization")
        .and_then(crate::http::bearer_token)
        .map(str::to_owned)
        .or_else(|| {
            query.and_then(|q| query_value(q, "token")).map(|value| {
                crate::http::percent_decoded(value, MAX_TOKEN_TEXT)
                    .unwrap_or_else(|| value.to_owned())
            })
        });
    Request::Upgrade {
        user: user.to_owned(),
        mode,
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        last_event_id,
        token,
    }
}

/// The raw value of `name` in a query string (`a=1&b=2`), the first if repeated.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Longest `lastEventId` value read (no event id is longer).
const MAX_EVENT_ID_TEXT: usize = 64;

/// Longest `token` query value decoded (the request head's own limit bounds it anyway).
const MAX_TOKEN_TEXT: usize = 16 << 10;

/// A key is the base64 encoding of 16 bytes: 22 base64 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The `101 Switching Protocols` response.
pub(crate) fn upgrade_response(accept_key: &str, mode: Mode, shard: u16) -> Vec<u8> {
    let protocol = if mode == Mode::V1 { "Sec-WebSocket-Protocol: corecast.v1\r\n" } else { "" };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n{protocol}X-Corecast-Shard: {shard}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete HTTP response with a body, after which the connection closes.
pub(crate) fn http_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = crate::http::reason_phrase(status);
    let extra = match status {
        401 => "WWW-Authenticate: Bearer\r\n",
        426 => "Sec-WebSocket-Version: 13\r\n",
        405 => "Allow: GET\r\n",
        // Every refusal for a passing reason (starting, draining, at a limit): try again
        // in a second (a load balancer may pick another node meanwhile).
        503 => "Retry-After: 1\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The error response for `rejection`.
pub(crate) fn rejection_response(rejection: Rejection) -> Vec<u8> {
    let mut body = rejection.reason.to_owned();
    body.push('\n');
    http_response(rejection.status, "text/plain; charset=utf-8", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_with(lines: &str, echo: &str, origins: &str) -> Request {
        let raw = format!("{lines}\r\n\r\n").replace('\n', "\r\n").replace("\r\r", "\r");
        let policy = Policy {
            echo_path: &echo.parse().unwrap(),
            allowed_origins: &origins.parse().unwrap(),
        };
        parse_request(raw.as_bytes(), policy).expect("complete").0
    }

    fn req(lines: &str) -> Request {
        req_with(lines, "off", "any")
    }

    fn parse(raw: &[u8]) -> Option<(Request, usize)> {
        let (echo, origins) = (EchoPath::default(), Origins::default());
        parse_request(raw, Policy { echo_path: &echo, allowed_origins: &origins })
    }

    const GOOD: &str = "GET /ws/alice HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: keep-alive, Upgrade\n\
                        Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn rfc6455_accept_key_vector() {
        match req(GOOD) {
            Request::Upgrade { user, mode, accept_key, .. } => {
                assert_eq!(user, "alice");
                assert_eq!(mode, Mode::Seed);
                assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selects_v1_from_a_list() {
        let r = req(&format!("{GOOD}\nSec-WebSocket-Protocol: chat, corecast.v1"));
        assert!(matches!(r, Request::Upgrade { mode: Mode::V1, .. }));
    }

    #[test]
    fn statuses() {
        let status = |r: Request| match r {
            Request::Reject(rej) => rej.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(req(&GOOD.replace("/ws/alice", "/nope"))), 404);
        assert_eq!(status(req(&GOOD.replace("/ws/alice", "/ws/al%20ice"))), 400);
        assert_eq!(status(req(&GOOD.replace("/ws/alice", "/ws/"))), 400);
        assert_eq!(status(req(&GOOD.replace("Version: 13", "Version: 8"))), 426);
        assert_eq!(status(req(&GOOD.replace("Upgrade: websocket\n", ""))), 400);
        assert_eq!(status(req(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"))), 400);
        assert_eq!(status(req(&GOOD.replace("GET", "POST"))), 405);
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("\nX-{i}: y")).collect();
        assert_eq!(status(req(&format!("{GOOD}{many}"))), 431);
        assert_eq!(status(req(&GOOD.replace("Host: x\n", ""))), 400, "no Host");
        assert_eq!(status(req(&format!("{GOOD}\nHost: y"))), 400, "two Hosts");
        assert_eq!(
            status(req(&format!("{GOOD}\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="))),
            400,
            "two keys"
        );
        assert_eq!(req("GET /healthz HTTP/1.1\nHost: x"), Request::Health);
        assert_eq!(req("GET /healthz?x=1 HTTP/1.1\nHost: x"), Request::Health);
        assert_eq!(req("GET /metrics HTTP/1.1\nHost: x"), Request::Metrics);
        assert_eq!(req("GET /readyz HTTP/1.1\nHost: x"), Request::Ready);
        assert_eq!(req("GET /livez HTTP/1.1\nHost: x"), Request::Live);
        assert_eq!(status(parse(b"\x00\x01garbage\r\n\r\n").unwrap().0), 400);
    }

    #[test]
    fn origin_allow_list_and_echo_path() {
        let with_origin = format!("{GOOD}\nOrigin: https://evil.example");
        let status = |r: Request| match r {
            Request::Reject(rej) => rej.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(req_with(&with_origin, "off", "https://app.example")), 403);
        assert!(matches!(req_with(&with_origin, "off", "any"), Request::Upgrade { .. }));
        assert!(
            matches!(req_with(GOOD, "off", "https://app.example"), Request::Upgrade { .. }),
            "no Origin: not a browser"
        );
        let ok_origin = format!("{GOOD}\nOrigin: https://app.example");
        assert!(matches!(
            req_with(&ok_origin, "off", "https://app.example"),
            Request::Upgrade { .. }
        ));
        let echo = GOOD.replace("/ws/alice", "/echo");
        assert!(matches!(
            req_with(&echo, "/echo", "any"),
            Request::Upgrade { mode: Mode::Echo, .. }
        ));
        assert_eq!(status(req(&echo)), 404, "echo is off by default");
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_query() {
        let token = |r: Request| match r {
            Request::Upgrade { token, .. } => token,
            other => panic!("{other:?}"),
        };
        assert_eq!(token(req(GOOD)), None);
        assert_eq!(
            token(req(&format!("{GOOD}\nAuthorization: Bearer a.b.c"))).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            token(req(&format!("{GOOD}\nAuthorization: bearer  a.b.c "))).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(token(req(&format!("{GOOD}\nAuthorization: Basic eA=="))), None);
        let query = GOOD.replace("/ws/alice", "/ws/alice?lastEventId=1:2&token=x.y%2Ez");
        assert_eq!(token(req(&query)).as_deref(), Some("x.y.z"));
        let both = format!("{query}\nAuthorization: Bearer h.h.h");
        assert_eq!(token(req(&both)).as_deref(), Some("h.h.h"), "the header wins");
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert!(parse(b"GET /ws/a HTTP/1.1\r\nHost:").is_none());
    }

    #[test]
    fn leftover_bytes_are_not_consumed() {
        let raw = format!("{}\r\n\r\nFRAME", GOOD.replace('\n', "\r\n"));
        let (_, used) = parse(raw.as_bytes()).unwrap();
        assert_eq!(&raw.as_bytes()[used..], b"FRAME");
    }
}
