//! v1 client commands: the parser (simd-json, per-shard reused buffers) from a text
//! message to a [`Command`], and [`CommandError`], the refusal a client is answered with
//! while its connection stays open.
//!
//! Runs on: a shard, inside a connection's read path. Pure: no I/O.

use simd_json::{BorrowedValue, prelude::*};

use super::limits::{
    HISTORY_PAGE, MAX_IDEMPOTENCY_KEY_LEN, MAX_TOPIC_LEN, MAX_USER_ID_LEN,
    is_valid_idempotency_key, is_valid_topic, is_valid_user_id,
};
use crate::{
    event::{Payload, PublishOptions, push_json_str},
    history::Since,
};

/// A parsed v1 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `{"op":"subscribe","topic":T}`, with `"since":"<id>"|"latest"` to recover or to get
    /// the last event first.
    Subscribe {
        /// The topic.
        topic: String,
        /// Where to replay from, if anywhere.
        since: Option<Since>,
        /// A subscription token for a topic the connection's permissions do not cover.
        token: Option<String>,
        /// `"presence":true`: send the topic's members, then its joins and leaves.
        presence: bool,
    },
    /// `{"op":"presence","topic":T}`: the topic's members, without subscribing.
    Presence(String),
    /// `{"op":"refresh","token":J}`: a later connection token for the same user.
    Refresh {
        /// The new token.
        token: String,
    },
    /// `{"op":"unsubscribe","topic":T}`
    Unsubscribe(String),
    /// `{"op":"history","topic":T,"since":"<id>","limit":N}`: one page of the topic's
    /// history (from the oldest kept event without `since`), without subscribing.
    History {
        /// The topic.
        topic: String,
        /// Where the page starts (after this event).
        since: Since,
        /// Most events in the page.
        limit: u64,
    },
    /// `{"op":"publish","topic":T,"data":D}`
    Publish {
        /// Destination topic.
        topic: String,
        /// The `data` value.
        payload: Payload,
        /// `ack`, `idempotency_key`.
        options: PublishOptions,
    },
    /// `{"op":"direct","to":U,"data":D}`
    Direct {
        /// Destination user id.
        to: String,
        /// The `data` value.
        payload: Payload,
        /// `ack`, `idempotency_key`.
        options: PublishOptions,
    },
    /// `{"op":"broadcast","data":D}`
    Broadcast(Payload, PublishOptions),
}

/// A command the server refuses; answered with `{"type":"error",...}`, connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandError {
    /// Stable machine-readable code (PROTOCOL.md lists them).
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl CommandError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> CommandError {
        CommandError { code, message: message.into() }
    }

    /// The error reply as JSON text.
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::with_capacity(48 + self.message.len());
        out.push_str(r#"{"type":"error","code":"#);
        push_json_str(&mut out, self.code);
        out.push_str(r#","message":"#);
        push_json_str(&mut out, &self.message);
        out.push('}');
        out
    }
}

/// Parses one v1 command from a text message. `text` is used as simd-json's scratch
/// space (it is modified); `buffers` are the shard's reused parse buffers.
///
/// # Errors
/// [`CommandError`] with one of the codes `invalid_json`, `invalid_command`,
/// `unknown_op`, `missing_field`, `invalid_topic`, `invalid_user`, `invalid_since`.
pub(crate) fn parse(
    text: &mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<Command, CommandError> {
    let value = simd_json::value::borrowed::to_value_with_buffers(text, buffers)
        .map_err(|e| CommandError::new("invalid_json", format!("not valid JSON: {e}")))?;
    if value.as_object().is_none() {
        return Err(CommandError::new(
            "invalid_command",
            "a command is a JSON object with an \"op\"",
        ));
    }
    let op = value
        .get("op")
        .ok_or_else(|| CommandError::new("missing_field", "missing \"op\""))?
        .as_str()
        .ok_or_else(|| CommandError::new("invalid_command", "\"op\" must be a string"))?;
    match op {
        "subscribe" => {
            let since = optional_str(&value, "since")?.map(parse_since).transpose()?;
            let token = optional_str(&value, "token")?.map(str::to_owned);
            let presence = optional_bool(&value, "presence")?;
            Ok(Command::Subscribe { topic: topic_field(&value)?, since, token, presence })
        }
        "presence" => Ok(Command::Presence(topic_field(&value)?)),
        "refresh" => Ok(Command::Refresh { token: str_field(&value, "token")?.to_owned() }),
        "unsubscribe" => Ok(Command::Unsubscribe(topic_field(&value)?)),
        "history" => {
            let topic = topic_field(&value)?;
            let since = optional_str(&value, "since")?.map(parse_since).transpose()?;
            let limit = match value.get("limit") {
                None => HISTORY_PAGE.0,
                Some(limit) => limit
                    .as_u64()
                    .filter(|n| (1..=HISTORY_PAGE.1).contains(n))
                    .ok_or_else(|| {
                        CommandError::new(
                            "invalid_command",
                            format!("\"limit\" must be an integer from 1 to {}", HISTORY_PAGE.1),
                        )
                    })?,
            };
            Ok(Command::History { topic, since: since.unwrap_or(Since::Oldest), limit })
        }
        "publish" => Ok(Command::Publish {
            topic: topic_field(&value)?,
            payload: data_field(&value)?,
            options: options_field(&value)?,
        }),
        "direct" => {
            let to = str_field(&value, "to")?;
            if !is_valid_user_id(to) {
                return Err(CommandError::new(
                    "invalid_user",
                    format!("\"to\" must be 1-{MAX_USER_ID_LEN} characters of A-Z a-z 0-9 _ . -"),
                ));
            }
            Ok(Command::Direct {
                to: to.to_owned(),
                payload: data_field(&value)?,
                options: options_field(&value)?,
            })
        }
        "broadcast" => Ok(Command::Broadcast(data_field(&value)?, options_field(&value)?)),
        other => {
            let mut shown = other.chars().take(32).collect::<String>();
            if shown.len() < other.len() {
                shown.push('…');
            }
            Err(CommandError::new("unknown_op", format!("unknown op \"{shown}\"")))
        }
    }
}

fn parse_since(text: &str) -> Result<Since, CommandError> {
    Since::parse(text).map_err(|why| CommandError::new("invalid_since", why))
}

fn optional_str<'v>(
    value: &'v BorrowedValue<'_>,
    key: &str,
) -> Result<Option<&'v str>, CommandError> {
    match value.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| {
            CommandError::new("invalid_command", format!("\"{key}\" must be a string"))
        }),
    }
}

/// A boolean field, `false` when absent.
fn optional_bool(value: &BorrowedValue<'_>, key: &str) -> Result<bool, CommandError> {
    match value.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| {
            CommandError::new("invalid_command", format!("\"{key}\" must be true or false"))
        }),
    }
}

fn options_field(value: &BorrowedValue<'_>) -> Result<PublishOptions, CommandError> {
    let ack = optional_bool(value, "ack")?;
    let idempotency_key = optional_str(value, "idempotency_key")?;
    if let Some(key) = idempotency_key
        && !is_valid_idempotency_key(key)
    {
        return Err(CommandError::new(
            "invalid_command",
            format!(
                "\"idempotency_key\" must be 1-{MAX_IDEMPOTENCY_KEY_LEN} characters of A-Z a-z 0-9 _ . : -"
            ),
        ));
    }
    Ok(PublishOptions { ack, idempotency_key: idempotency_key.map(Into::into) })
}

fn str_field<'v>(value: &'v BorrowedValue<'_>, key: &str) -> Result<&'v str, CommandError> {
    value
        .get(key)
        .ok_or_else(|| CommandError::new("missing_field", format!("missing \"{key}\"")))?
        .as_str()
        .ok_or_else(|| CommandError::new("invalid_command", format!("\"{key}\" must be a string")))
}

fn topic_field(value: &BorrowedValue<'_>) -> Result<String, CommandError> {
    let topic = str_field(value, "topic")?;
    if !is_valid_topic(topic) {
        return Err(CommandError::new(
            "invalid_topic",
            format!("\"topic\" must be 1-{MAX_TOPIC_LEN} characters of A-Z a-z 0-9 _ . : / -"),
        ));
    }
    Ok(topic.to_owned())
}

fn data_field(value: &BorrowedValue<'_>) -> Result<Payload, CommandError> {
    let data =
        value.get("data").ok_or_else(|| CommandError::new("missing_field", "missing \"data\""))?;
    Ok(match data.as_str() {
        Some(s) => Payload::Text(s.to_owned()),
        None => Payload::Json(data.encode()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, CommandError> {
        parse(&mut s.as_bytes().to_vec(), &mut simd_json::Buffers::default())
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(
            parse_str(r#"{"op":"subscribe","topic":"a/b"}"#),
            Ok(Command::Subscribe {
                topic: "a/b".into(),
                since: None,
                token: None,
                presence: false
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"subscribe","topic":"vip","token":"a.b.c"}"#),
            Ok(Command::Subscribe {
                topic: "vip".into(),
                since: None,
                token: Some("a.b.c".into()),
                presence: false,
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"subscribe","topic":"room","presence":true}"#),
            Ok(Command::Subscribe {
                topic: "room".into(),
                since: None,
                token: None,
                presence: true
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"subscribe","topic":"room","presence":1}"#).unwrap_err().code,
            "invalid_command"
        );
        assert_eq!(
            parse_str(r#"{"op":"presence","topic":"room"}"#),
            Ok(Command::Presence("room".into()))
        );
        assert_eq!(
            parse_str(r#"{"op":"refresh","token":"a.b.c"}"#),
            Ok(Command::Refresh { token: "a.b.c".into() })
        );
        assert_eq!(parse_str(r#"{"op":"refresh"}"#).unwrap_err().code, "missing_field");
        assert_eq!(
            parse_str(r#"{"op":"subscribe","topic":"a","since":"5:7"}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: Some(Since::After(crate::ids::EventId { epoch: 5, offset: 7 })),
                token: None,
                presence: false,
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"subscribe","topic":"a","since":"latest"}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: Some(Since::Latest),
                token: None,
                presence: false
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"history","topic":"a"}"#),
            Ok(Command::History { topic: "a".into(), since: Since::Oldest, limit: 100 })
        );
        assert_eq!(
            parse_str(r#"{"op":"history","topic":"a","since":"1:2","limit":5}"#),
            Ok(Command::History {
                topic: "a".into(),
                since: Since::After(crate::ids::EventId { epoch: 1, offset: 2 }),
                limit: 5
            })
        );
        assert_eq!(
            parse_str(
                r#"{"op":"publish","topic":"t","data":1,"ack":true,"idempotency_key":"k-1"}"#
            ),
            Ok(Command::Publish {
                topic: "t".into(),
                payload: Payload::Json("1".into()),
                options: PublishOptions { ack: true, idempotency_key: Some("k-1".into()) },
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"unsubscribe","topic":"x"}"#),
            Ok(Command::Unsubscribe("x".into()))
        );
        assert_eq!(
            parse_str(r#"{"op":"publish","topic":"t","data":{"k":[1,true,null]}}"#),
            Ok(Command::Publish {
                topic: "t".into(),
                payload: Payload::Json(r#"{"k":[1,true,null]}"#.into()),
                options: PublishOptions::default(),
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"direct","to":"bob","data":"hé"}"#),
            Ok(Command::Direct {
                to: "bob".into(),
                payload: Payload::Text("hé".into()),
                options: PublishOptions::default()
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"broadcast","data":3}"#),
            Ok(Command::Broadcast(Payload::Json("3".into()), PublishOptions::default()))
        );
    }

    #[test]
    fn errors_have_codes() {
        let code = |s: &str| parse_str(s).unwrap_err().code;
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1]"), "invalid_command");
        assert_eq!(code(r#"{"topic":"t"}"#), "missing_field");
        assert_eq!(code(r#"{"op":7}"#), "invalid_command");
        assert_eq!(code(r#"{"op":"dance"}"#), "unknown_op");
        assert_eq!(code(r#"{"op":"publish","topic":"t"}"#), "missing_field");
        assert_eq!(code(r#"{"op":"subscribe","topic":"bad topic"}"#), "invalid_topic");
        assert_eq!(code(r#"{"op":"subscribe","topic":""}"#), "invalid_topic");
        assert_eq!(code(r#"{"op":"direct","to":"a\"b","data":1}"#), "invalid_user");
        assert_eq!(code(r#"{"op":"subscribe","topic":"t","since":"x"}"#), "invalid_since");
        assert_eq!(code(r#"{"op":"subscribe","topic":"t","since":5}"#), "invalid_command");
        assert_eq!(code(r#"{"op":"history","topic":"t","since":"1:-2"}"#), "invalid_since");
        assert_eq!(code(r#"{"op":"history","topic":"t","limit":0}"#), "invalid_command");
        assert_eq!(code(r#"{"op":"history","topic":"t","limit":1001}"#), "invalid_command");
        assert_eq!(code(r#"{"op":"publish","topic":"t","data":1,"ack":"yes"}"#), "invalid_command");
        let long =
            format!(r#"{{"op":"broadcast","data":1,"idempotency_key":"{}"}}"#, "k".repeat(129));
        assert_eq!(code(&long), "invalid_command");
    }

    #[test]
    fn error_json_escapes_message() {
        let e = CommandError::new("unknown_op", "unknown op \"x\"");
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"unknown_op","message":"unknown op \"x\""}"#
        );
    }
}
