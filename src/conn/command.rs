//! v1 client commands: parsing (simd-json, per-shard reused buffers) and the JSON
//! replies and error codes. Also the validation of user ids and topic names.
//!
//! Runs on: a shard, inside a connection's read path. Pure: no I/O.

use simd_json::{BorrowedValue, prelude::*};

use crate::{
    config::{MAX_TOPIC_LEN, MAX_USER_ID_LEN},
    event::{Payload, push_json_str},
};

/// A parsed v1 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `{"op":"subscribe","topic":T}`
    Subscribe(String),
    /// `{"op":"unsubscribe","topic":T}`
    Unsubscribe(String),
    /// `{"op":"publish","topic":T,"data":D}`
    Publish {
        /// Destination topic.
        topic: String,
        /// The `data` value.
        payload: Payload,
    },
    /// `{"op":"direct","to":U,"data":D}`
    Direct {
        /// Destination user id.
        to: String,
        /// The `data` value.
        payload: Payload,
    },
    /// `{"op":"broadcast","data":D}`
    Broadcast(Payload),
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
    fn new(code: &'static str, message: impl Into<String>) -> CommandError {
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
/// `unknown_op`, `missing_field`, `invalid_topic`, `invalid_user`.
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
        "subscribe" => Ok(Command::Subscribe(topic_field(&value)?)),
        "unsubscribe" => Ok(Command::Unsubscribe(topic_field(&value)?)),
        "publish" => {
            Ok(Command::Publish { topic: topic_field(&value)?, payload: data_field(&value)? })
        }
        "direct" => {
            let to = str_field(&value, "to")?;
            if !is_valid_user_id(to) {
                return Err(CommandError::new(
                    "invalid_user",
                    format!("\"to\" must be 1-{MAX_USER_ID_LEN} characters of A-Z a-z 0-9 _ . -"),
                ));
            }
            Ok(Command::Direct { to: to.to_owned(), payload: data_field(&value)? })
        }
        "broadcast" => Ok(Command::Broadcast(data_field(&value)?)),
        other => {
            let mut shown = other.chars().take(32).collect::<String>();
            if shown.len() < other.len() {
                shown.push('…');
            }
            Err(CommandError::new("unknown_op", format!("unknown op \"{shown}\"")))
        }
    }
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

/// User ids: 1–[`MAX_USER_ID_LEN`] bytes of `[A-Za-z0-9_.-]` (so they never need escaping
/// in JSON or a URL).
pub(crate) fn is_valid_user_id(id: &str) -> bool {
    (1..=MAX_USER_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Topics: 1–[`MAX_TOPIC_LEN`] bytes of `[A-Za-z0-9_.:/-]`.
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
}

/// `{"type":"subscribed","topic":T}` or `{"type":"unsubscribed","topic":T}`.
pub(crate) fn ack_json(kind: &str, topic: &str) -> String {
    let mut out = String::with_capacity(40 + topic.len());
    out.push_str(r#"{"type":"#);
    push_json_str(&mut out, kind);
    out.push_str(r#","topic":"#);
    push_json_str(&mut out, topic);
    out.push('}');
    out
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
            Ok(Command::Subscribe("a/b".into()))
        );
        assert_eq!(
            parse_str(r#"{"op":"unsubscribe","topic":"x"}"#),
            Ok(Command::Unsubscribe("x".into()))
        );
        assert_eq!(
            parse_str(r#"{"op":"publish","topic":"t","data":{"k":[1,true,null]}}"#),
            Ok(Command::Publish {
                topic: "t".into(),
                payload: Payload::Json(r#"{"k":[1,true,null]}"#.into())
            })
        );
        assert_eq!(
            parse_str(r#"{"op":"direct","to":"bob","data":"hé"}"#),
            Ok(Command::Direct { to: "bob".into(), payload: Payload::Text("hé".into()) })
        );
        assert_eq!(
            parse_str(r#"{"op":"broadcast","data":3}"#),
            Ok(Command::Broadcast(Payload::Json("3".into())))
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
    }

    #[test]
    fn error_json_escapes_message() {
        let e = CommandError::new("unknown_op", "unknown op \"x\"");
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"unknown_op","message":"unknown op \"x\""}"#
        );
    }

    #[test]
    fn id_validation() {
        assert!(is_valid_user_id("user-1.a_b"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id(&"a".repeat(MAX_USER_ID_LEN + 1)));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("é"));
    }
}
