//! The server API for app backends: HTTP/1.1 + JSON under `/api/`, on the WebSocket
//! listener (or `api_listen`).
//!
//! Runs on: a shard, in the task of the socket that sent the request. Pure: this module
//! turns a request (head already parsed by `conn::handshake`, body bytes) into an
//! [`ApiCall`] or an [`ApiError`], and builds the responses; the shard executes calls
//! (`shard::api`), through the bus, so every call acts on the whole cluster.
//!
//! | endpoint | body |
//! |---|---|
//! | `POST /api/publish` | `{"topic":T,"data":D,"idempotency_key":K?,"sender":S?}` |
//! | `POST /api/broadcast` | `{"data":D,"idempotency_key":K?,"sender":S?}` |
//! | `POST /api/direct` | `{"user":U,"data":D,"idempotency_key":K?,"sender":S?}` |
//! | `POST /api/batch` | `{"commands":[{"op":"publish"\|"broadcast"\|"direct",...},...]}` (1–100) |
//! | `POST /api/disconnect` | `{"user":U,"code":4000-4999?,"reason":R?,"block_seconds":N?}` |

pub(crate) mod http;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    event::{Event, Payload, PublishOptions},
    ids::Route,
    presence::Query,
    protocol::limits::{MAX_TOPIC_LEN, is_valid_idempotency_key, is_valid_topic, is_valid_user_id},
};

/// Most commands in one `/api/batch`.
pub(crate) const MAX_BATCH: usize = 100;

/// Longest `reason` of `/api/disconnect`, in bytes (a Close frame's reason is at most 123).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// Longest block of `/api/disconnect`: one week.
pub(crate) const MAX_BLOCK_SECONDS: u64 = 7 * 24 * 3600;

/// The sender of API events without a `sender` field.
pub(crate) const SERVER_SENDER: &str = "server";

/// An API error: its HTTP status and the `{"error":{"code","message","field"?}}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: u16,
    /// Stable machine-readable code.
    pub(crate) code: &'static str,
    /// Human-readable detail.
    pub(crate) message: String,
    /// The body field at fault (400s), as a path (`commands[2].topic`).
    pub(crate) field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The error as its JSON body object (`{"code":...,"message":...}`).
    pub(crate) fn to_value(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = field.clone().into();
        }
        error
    }

    /// The whole response body.
    pub(crate) fn to_body(&self) -> String {
        serde_json::json!({"error": self.to_value()}).to_string()
    }
}

/// One event to publish, from `/api/publish`, `/api/broadcast`, `/api/direct` or a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiPublish {
    /// The event, exactly as a client's would be.
    pub(crate) event: Event,
    /// Always `ack` (the answer carries the id); the idempotency key scoped per endpoint.
    pub(crate) options: PublishOptions,
}

/// `/api/disconnect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiDisconnect {
    /// The user whose connections close, on every node.
    pub(crate) user: String,
    /// The Close code (4000–4999).
    pub(crate) code: u16,
    /// The Close reason.
    pub(crate) reason: String,
    /// Refuse the user's upgrades (403) for this long.
    pub(crate) block_seconds: u64,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiCall {
    /// One event.
    Publish(ApiPublish),
    /// Several, each answered in order; a command that failed validation is answered
    /// with its error and the others still run.
    Batch(Vec<Result<ApiPublish, ApiError>>),
    /// Close a user's connections.
    Disconnect(ApiDisconnect),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    sender: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    sender: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectBody {
    user: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    sender: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    commands: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    code: Option<u16>,
    reason: Option<String>,
    block_seconds: Option<u64>,
}

/// The endpoints that publish, by name (also the scope of their idempotency keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publish,
    Broadcast,
    Direct,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        match name {
            "publish" => Some(Kind::Publish),
            "broadcast" => Some(Kind::Broadcast),
            "direct" => Some(Kind::Direct),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Broadcast => "broadcast",
            Kind::Direct => "direct",
        }
    }
}

/// Parses a `POST /api/<endpoint>` body into the call.
///
/// # Errors
/// 404 for an unknown endpoint, 400 naming the field for a malformed body.
/// Whether `endpoint` is one of the `POST` endpoints (they act).
pub(crate) fn is_act_endpoint(endpoint: &str) -> bool {
    Kind::of(endpoint).is_some() || endpoint == "batch" || endpoint == "disconnect"
}

/// Whether `endpoint` is one of the `GET` endpoints (occupancy).
pub(crate) fn is_read_endpoint(endpoint: &str) -> bool {
    endpoint == "stats" || endpoint == "channels" || endpoint.starts_with("channels/")
}

/// Parses a `GET` request: `channels[?prefix=P]`, `channels/{T}`, `channels/{T}/users`,
/// `stats`. A topic with `/` in it is written `%2F`.
///
/// # Errors
/// 404 for an unknown endpoint, 400 for a malformed topic or prefix.
pub(crate) fn parse_query(endpoint: &str, query: &str) -> Result<Query, ApiError> {
    let topic_of = |raw: &str| {
        crate::http::percent_decoded(raw, 3 * MAX_TOPIC_LEN)
            .filter(|t| is_valid_topic(t))
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "invalid_topic",
                    format!("a topic is 1-{MAX_TOPIC_LEN} characters of A-Z a-z 0-9 _ . : / - (write / as %2F)"),
                )
            })
    };
    let not_found = || {
        ApiError::new(
            404,
            "not_found",
            "GET endpoints: /api/channels, /api/channels/{topic}, /api/channels/{topic}/users, /api/stats",
        )
    };
    match endpoint {
        "stats" => return Ok(Query::Stats),
        "channels" => {
            let mut prefix = String::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if name == "prefix" {
                    prefix = crate::http::percent_decoded(value, 3 * MAX_TOPIC_LEN)
                        .filter(|p| p.is_empty() || is_valid_topic(p))
                        .ok_or_else(|| {
                            ApiError::field("prefix", "a topic prefix (A-Z a-z 0-9 _ . : / -)")
                        })?;
                }
            }
            return Ok(Query::Channels { prefix });
        }
        _ => {}
    }
    let rest = endpoint.strip_prefix("channels/").ok_or_else(not_found)?;
    match rest.split_once('/') {
        None => Ok(Query::Channel(topic_of(rest)?)),
        Some((topic, "users")) => Ok(Query::Users(topic_of(topic)?)),
        Some(_) => Err(not_found()),
    }
}

pub(crate) fn parse_call(endpoint: &str, body: &[u8]) -> Result<ApiCall, ApiError> {
    if let Some(kind) = Kind::of(endpoint) {
        return publish_of(kind, body, "").map(ApiCall::Publish);
    }
    match endpoint {
        "batch" => {
            let batch: BatchBody = from_json(body, "")?;
            if !(1..=MAX_BATCH).contains(&batch.commands.len()) {
                return Err(ApiError::field(
                    "commands",
                    format!("a batch has 1 to {MAX_BATCH} commands"),
                ));
            }
            let calls = batch
                .commands
                .iter()
                .enumerate()
                .map(|(i, raw)| batch_command(raw.get().as_bytes(), &format!("commands[{i}].")))
                .collect();
            Ok(ApiCall::Batch(calls))
        }
        "disconnect" => {
            let body: DisconnectBody = from_json(body, "")?;
            check_user(&body.user, "user")?;
            let code = body.code.unwrap_or(4000);
            if !(4000..=4999).contains(&code) {
                return Err(ApiError::field("code", "a Close code from 4000 to 4999"));
            }
            let reason = body.reason.unwrap_or_else(|| "disconnected by the server".into());
            if reason.len() > MAX_CLOSE_REASON {
                return Err(ApiError::field(
                    "reason",
                    format!("at most {MAX_CLOSE_REASON} bytes (a Close frame's limit)"),
                ));
            }
            let block_seconds = body.block_seconds.unwrap_or(0);
            if block_seconds > MAX_BLOCK_SECONDS {
                return Err(ApiError::field(
                    "block_seconds",
                    format!("at most {MAX_BLOCK_SECONDS} (one week)"),
                ));
            }
            Ok(ApiCall::Disconnect(ApiDisconnect { user: body.user, code, reason, block_seconds }))
        }
        _ => Err(ApiError::new(404, "not_found", format!("no endpoint /api/{endpoint}"))),
    }
}

/// One command of a batch: `{"op":...}` plus the fields of that endpoint.
fn batch_command(raw: &[u8], path: &str) -> Result<ApiPublish, ApiError> {
    let mut object: serde_json::Map<String, serde_json::Value> = from_json(raw, path)?;
    let op = match object.remove("op") {
        None => return Err(ApiError::field(format!("{path}op"), "missing field `op`")),
        Some(op) => op,
    };
    let kind = op.as_str().and_then(Kind::of).ok_or_else(|| {
        ApiError::field(format!("{path}op"), "`op` is \"publish\", \"broadcast\" or \"direct\"")
    })?;
    let rest = serde_json::to_vec(&object).unwrap_or_default();
    publish_of(kind, &rest, path)
}

fn publish_of(kind: Kind, body: &[u8], path: &str) -> Result<ApiPublish, ApiError> {
    let (route, data, key, sender) = match kind {
        Kind::Publish => {
            let b: PublishBody = from_json(body, path)?;
            if !is_valid_topic(&b.topic) {
                return Err(ApiError::field(
                    format!("{path}topic"),
                    "1-128 characters of A-Z a-z 0-9 _ . : / -",
                ));
            }
            (Route::Topic(b.topic.into()), b.data, b.idempotency_key, b.sender)
        }
        Kind::Broadcast => {
            let b: BroadcastBody = from_json(body, path)?;
            (Route::Broadcast, b.data, b.idempotency_key, b.sender)
        }
        Kind::Direct => {
            let b: DirectBody = from_json(body, path)?;
            check_user(&b.user, &format!("{path}user"))?;
            (Route::Direct(b.user.into()), b.data, b.idempotency_key, b.sender)
        }
    };
    let sender = sender.unwrap_or_else(|| SERVER_SENDER.to_owned());
    check_user(&sender, &format!("{path}sender"))?;
    let idempotency_key = match key {
        None => None,
        Some(key) => {
            if !is_valid_idempotency_key(&key) {
                return Err(ApiError::field(
                    format!("{path}idempotency_key"),
                    "1-128 characters of A-Z a-z 0-9 _ . : -",
                ));
            }
            // Scoped per endpoint: the same key on /api/publish and /api/direct (or from
            // a WebSocket client) names different publishes.
            Some(format!("api.{}:{key}", kind.name()).into_boxed_str())
        }
    };
    let payload = payload_of(&data);
    Ok(ApiPublish {
        event: Event { sender, route, payload },
        options: PublishOptions { ack: true, idempotency_key },
    })
}

/// `data` as an event payload: a string is that text, anything else its compact JSON.
fn payload_of(data: &RawValue) -> Payload {
    match serde_json::from_str::<serde_json::Value>(data.get()) {
        Ok(serde_json::Value::String(text)) => Payload::Text(text),
        Ok(value) => Payload::Json(value.to_string()),
        // It parsed as a RawValue, so it is JSON; kept as sent.
        Err(_) => Payload::Json(data.get().to_owned()),
    }
}

fn check_user(user: &str, field: &str) -> Result<(), ApiError> {
    if is_valid_user_id(user) {
        Ok(())
    } else {
        Err(ApiError::field(field, "1-64 characters of A-Z a-z 0-9 _ . -"))
    }
}

/// Deserializes `body`, naming the field at fault (prefixed with `path`) on error.
fn from_json<T: DeserializeOwned>(body: &[u8], path: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(400, "invalid_json", format!("the body is not JSON: {inner}"));
        }
        // Unknown and missing fields are named in serde's message; the path names where.
        let field = if at == "." { String::new() } else { at };
        let mut error = ApiError::field(format!("{path}{field}"), inner.to_string());
        if error.field.as_deref() == Some("") {
            error.field = field_in_message(&error.message).map(|f| format!("{path}{f}"));
        }
        error
    })?;
    de.end()
        .map_err(|e| ApiError::new(400, "invalid_json", format!("the body is not JSON: {e}")))?;
    Ok(value)
}

/// The field a serde message names: "missing field `topic`", "unknown field `x`, ...".
fn field_in_message(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(endpoint: &str, body: &str) -> Result<ApiCall, ApiError> {
        parse_call(endpoint, body.as_bytes())
    }

    fn field_of(endpoint: &str, body: &str) -> Option<String> {
        let e = call(endpoint, body).unwrap_err();
        assert_eq!(e.status, 400, "{e:?}");
        e.field
    }

    #[test]
    fn publishes_look_like_client_events() {
        let ApiCall::Publish(p) = call("publish", r#"{"topic":"t","data":{"a": [1, 2]}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.event.sender, "server");
        assert_eq!(p.event.route, Route::Topic("t".into()));
        assert_eq!(p.event.payload, Payload::Json(r#"{"a":[1,2]}"#.into()));
        assert!(p.options.ack);
        let ApiCall::Publish(p) = call(
            "direct",
            r#"{"user":"bob","data":"hi","sender":"billing","idempotency_key":"k1"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(p.event.sender, "billing");
        assert_eq!(p.event.payload, Payload::Text("hi".into()));
        assert_eq!(p.options.idempotency_key.as_deref(), Some("api.direct:k1"));
        assert!(matches!(call("broadcast", r#"{"data":null}"#), Ok(ApiCall::Publish(_))));
    }

    #[test]
    fn a_malformed_body_names_the_field() {
        assert_eq!(field_of("publish", r#"{"data":1}"#).as_deref(), Some("topic"));
        assert_eq!(
            field_of("publish", r#"{"topic":"t","data":1,"extra":2}"#).as_deref(),
            Some("extra")
        );
        assert_eq!(field_of("publish", r#"{"topic":5,"data":1}"#).as_deref(), Some("topic"));
        assert_eq!(field_of("publish", r#"{"topic":"a b","data":1}"#).as_deref(), Some("topic"));
        assert_eq!(field_of("direct", r#"{"user":"","data":1}"#).as_deref(), Some("user"));
        assert_eq!(
            field_of("broadcast", r#"{"data":1,"sender":"a b"}"#).as_deref(),
            Some("sender")
        );
        assert_eq!(
            field_of("broadcast", r#"{"data":1,"idempotency_key":"a b"}"#).as_deref(),
            Some("idempotency_key")
        );
        assert_eq!(field_of("disconnect", r#"{"user":"u","code":1000}"#).as_deref(), Some("code"));
        assert_eq!(
            field_of("disconnect", r#"{"user":"u","block_seconds":99999999}"#).as_deref(),
            Some("block_seconds")
        );
        assert_eq!(field_of("batch", r#"{"commands":[]}"#).as_deref(), Some("commands"));
        let e = call("publish", "{nope").unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_json"));
        let e = call("publish", r#"{"topic":"t","data":1} trailing"#).unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_json"));
        assert_eq!(call("nope", "{}").unwrap_err().status, 404);
    }

    #[test]
    fn a_batch_answers_each_command_in_order() {
        let body = r#"{"commands":[
            {"op":"publish","topic":"t","data":1},
            {"op":"shout","data":1},
            {"op":"direct","user":"bob","data":2,"bogus":true},
            {"op":"broadcast","data":3,"idempotency_key":"k"}]}"#;
        let ApiCall::Batch(calls) = call("batch", body).unwrap() else { panic!() };
        assert_eq!(calls.len(), 4);
        assert!(calls[0].is_ok());
        assert_eq!(calls[1].as_ref().unwrap_err().field.as_deref(), Some("commands[1].op"));
        assert_eq!(calls[2].as_ref().unwrap_err().field.as_deref(), Some("commands[2].bogus"));
        let key = calls[3].as_ref().unwrap().options.idempotency_key.as_deref();
        assert_eq!(key, Some("api.broadcast:k"), "scoped like the endpoint");
        let many = format!(
            r#"{{"commands":[{}]}}"#,
            vec![r#"{"op":"broadcast","data":1}"#; 101].join(",")
        );
        assert_eq!(field_of("batch", &many).as_deref(), Some("commands"));
    }

    #[test]
    fn disconnect_defaults() {
        assert_eq!(
            call("disconnect", r#"{"user":"bob"}"#),
            Ok(ApiCall::Disconnect(ApiDisconnect {
                user: "bob".into(),
                code: 4000,
                reason: "disconnected by the server".into(),
                block_seconds: 0
            }))
        );
    }

    #[test]
    fn read_endpoints_parse_topics_and_prefixes() {
        assert_eq!(parse_query("stats", ""), Ok(Query::Stats));
        assert_eq!(parse_query("channels", ""), Ok(Query::Channels { prefix: String::new() }));
        assert_eq!(
            parse_query("channels", "x=1&prefix=chat."),
            Ok(Query::Channels { prefix: "chat.".into() })
        );
        assert_eq!(parse_query("channels/room.1", ""), Ok(Query::Channel("room.1".into())));
        assert_eq!(parse_query("channels/a%2Fb/users", ""), Ok(Query::Users("a/b".into())));
        assert_eq!(parse_query("channels/a/b/c", "").unwrap_err().status, 404);
        assert_eq!(parse_query("nothing", "").unwrap_err().status, 404);
        assert_eq!(parse_query("channels/a%20b", "").unwrap_err().code, "invalid_topic");
        assert_eq!(parse_query("channels", "prefix=%zz").unwrap_err().status, 400);
    }
}
