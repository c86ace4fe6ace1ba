//! Events published by clients, and their encoding into frames, **once** per wire format.
//!
//! Runs on: the thread that encodes (a shard for the embedded bus). [`Event`] is plain
//! owned data (`Send`); [`Event::encode`] turns it into an [`xshard::Delivery`] whose
//! frames every shard and connection then share by reference count.
//!
//! Wire formats (PROTOCOL.md):
//! - v1: `{"type":"message","topic":T,"sender":S,"data":D}`,
//!   `{"type":"direct","sender":S,"data":D}`, `{"type":"broadcast","sender":S,"data":D}`.
//! - seed: `{"sender":S,"text":X}` where X is the text, or the JSON text of non-string data.

use crate::{
    ids::{EventId, NodeId, Route},
    ws::frame,
    xshard::Delivery,
};

/// The body of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A string: a seed-mode client's text, or a v1 client's string `data`, decoded.
    Text(String),
    /// A v1 client's non-string `data`: one JSON value, already serialized (compact).
    /// String `data` arrives as [`Payload::Text`]: both mean "this string".
    Json(String),
}

/// How a v1 client asked for its publish to be handled (`ack`, `idempotency_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Answer `{"type":"published",...,"id":...}` once the event is stored.
    pub ack: bool,
    /// A retried publish with this key (on the same stream, within the idempotency
    /// window) gets the first publish's id instead of being stored twice.
    pub idempotency_key: Option<Box<str>>,
}

/// Something a client published, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The publishing connection's user id (validated: no characters need escaping).
    pub sender: String,
    /// Who receives it.
    pub route: Route,
    /// What they receive.
    pub payload: Payload,
}

impl Event {
    /// Encodes the frames every receiver needs: the v1 frame always, the seed frame for
    /// broadcasts. Each is built exactly once here. `origin` is the publishing node; `id`
    /// the event's position in its stream, when the stream keeps history.
    pub fn encode(&self, origin: &NodeId, id: Option<EventId>) -> Delivery {
        let mut json = String::with_capacity(96 + self.payload_len());
        self.write_v1(&mut json, id);
        let v1 = frame::encode_text(&json);
        let seed = matches!(self.route, Route::Broadcast).then(|| {
            json.clear();
            self.write_seed(&mut json, false, id);
            frame::encode_text(&json)
        });
        Delivery {
            route: self.route.clone(),
            id,
            origin: origin.clone(),
            v1,
            seed,
            published: None,
            lag_observed: Default::default(),
        }
    }

    /// The event as the v1 message its receivers get:
    /// `{"type":"message","topic":T,"sender":S,"data":D}`, `{"type":"direct",...}` or
    /// `{"type":"broadcast",...}`; with an id, `"id"` comes first: `{"id":"E:O","type":...`.
    pub(crate) fn write_v1(&self, json: &mut String, id: Option<EventId>) {
        push_id(json, id);
        match &self.route {
            Route::Broadcast => json.push_str(r#""type":"broadcast","sender":"#),
            Route::Topic(topic) => {
                json.push_str(r#""type":"message","topic":"#);
                push_json_str(json, topic);
                json.push_str(r#","sender":"#);
            }
            Route::Direct(_) => json.push_str(r#""type":"direct","sender":"#),
        }
        push_json_str(json, &self.sender);
        json.push_str(r#","data":"#);
        match &self.payload {
            Payload::Text(text) => push_json_str(json, text),
            Payload::Json(raw) => json.push_str(raw),
        }
        json.push('}');
    }

    /// The event in the seed format `{"sender":S,"text":X}`: X is the text, or the JSON
    /// text of non-string data. With `with_data`, non-string data is also kept as the
    /// value itself in an extra `"data"` field (the `ws_broadcast` payload: seed readers
    /// ignore the field, v1 receivers get the value back). With an id, `"id"` comes
    /// first.
    pub(crate) fn write_seed(&self, json: &mut String, with_data: bool, id: Option<EventId>) {
        push_id(json, id);
        json.push_str(r#""sender":"#);
        push_json_str(json, &self.sender);
        json.push_str(r#","text":"#);
        match &self.payload {
            Payload::Text(text) => push_json_str(json, text),
            Payload::Json(raw) => {
                push_json_str(json, raw);
                if with_data {
                    json.push_str(r#","data":"#);
                    json.push_str(raw);
                }
            }
        }
        json.push('}');
    }

    pub(crate) fn payload_len(&self) -> usize {
        match &self.payload {
            Payload::Text(s) | Payload::Json(s) => s.len(),
        }
    }

    /// The largest frame this event encodes to, at most: its data as the v1 and seed
    /// frames write it (a seed frame carries JSON data both as escaped `text` and as
    /// `data`), plus [`ENVELOPE_MAX`] for the fixed fields.
    fn max_frame_len(&self) -> usize {
        let data = match &self.payload {
            Payload::Text(text) => json_str_len(text),
            Payload::Json(raw) => json_str_len(raw) + raw.len(),
        };
        data + ENVELOPE_MAX
    }

    /// Why this event cannot be published when a connection may queue `limit` bytes (its
    /// frame could be larger: it would close every receiver as a slow consumer, again at
    /// each recovery), or `None`. No pass over the data when even its worst escaping fits.
    pub(crate) fn too_large_for(&self, limit: usize) -> Option<String> {
        if self.payload_len() * 7 + ENVELOPE_MAX + 2 <= limit {
            return None;
        }
        let size = self.max_frame_len();
        (size > limit).then(|| {
            format!(
                "the event's frame could be {size} bytes: more than a connection may queue (outbound_queue_limit, {limit} bytes)"
            )
        })
    }
}

/// Room the fixed fields of an encoded event take around its data, at most: type, topic
/// (128 bytes), sender (64), id, stamp, field names and the frame header.
const ENVELOPE_MAX: usize = 512;

/// The length of `s` as [`push_json_str`] writes it, quotes included.
fn json_str_len(s: &str) -> usize {
    let escaped: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1F => 6,
            _ => 1,
        })
        .sum();
    escaped + 2
}

/// Opens a JSON object, with `"id":"E:O",` as its first field when there is an id.
fn push_id(json: &mut String, id: Option<EventId>) {
    json.push('{');
    if let Some(id) = id {
        use std::fmt::Write;
        let _ = write!(json, r#""id":"{id}","#);
    }
}

/// Appends `s` as a JSON string literal (quotes and escapes included).
pub fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1F => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId("test".into())
    }

    fn text_of(frame: &[u8]) -> &str {
        assert_eq!(frame[0], 0x81);
        let (len, at) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        std::str::from_utf8(&frame[at..at + len]).unwrap()
    }

    #[test]
    fn seed_text_broadcast_encodes_both_formats() {
        let event = Event {
            sender: "alice".into(),
            route: Route::Broadcast,
            payload: Payload::Text("hi \"there\"\n".into()),
        };
        let d = event.encode(&node(), None);
        assert_eq!(
            text_of(&d.v1),
            r#"{"type":"broadcast","sender":"alice","data":"hi \"there\"\n"}"#
        );
        assert_eq!(
            text_of(d.seed.as_ref().unwrap()),
            r#"{"sender":"alice","text":"hi \"there\"\n"}"#
        );
    }

    #[test]
    fn v1_broadcast_of_string_and_object_data() {
        let string = Event {
            sender: "bob".into(),
            route: Route::Broadcast,
            payload: Payload::Text("plain é".into()),
        }
        .encode(&node(), None);
        assert_eq!(text_of(&string.v1), r#"{"type":"broadcast","sender":"bob","data":"plain é"}"#);
        assert_eq!(text_of(string.seed.as_ref().unwrap()), r#"{"sender":"bob","text":"plain é"}"#);
        let object = Event {
            sender: "bob".into(),
            route: Route::Broadcast,
            payload: Payload::Json(r#"{"x":1}"#.into()),
        }
        .encode(&node(), None);
        assert_eq!(text_of(&object.v1), r#"{"type":"broadcast","sender":"bob","data":{"x":1}}"#);
        assert_eq!(
            text_of(object.seed.as_ref().unwrap()),
            r#"{"sender":"bob","text":"{\"x\":1}"}"#
        );
    }

    #[test]
    fn topic_and_direct_have_no_seed_frame() {
        let topic = Event {
            sender: "c".into(),
            route: Route::Topic("news".into()),
            payload: Payload::Json("[1,2]".into()),
        }
        .encode(&node(), None);
        assert_eq!(
            text_of(&topic.v1),
            r#"{"type":"message","topic":"news","sender":"c","data":[1,2]}"#
        );
        assert!(topic.seed.is_none());
        let direct = Event {
            sender: "c".into(),
            route: Route::Direct("d".into()),
            payload: Payload::Json("null".into()),
        }
        .encode(&node(), None);
        assert_eq!(text_of(&direct.v1), r#"{"type":"direct","sender":"c","data":null}"#);
    }

    #[test]
    fn an_id_is_the_first_field_of_both_formats() {
        let event = Event {
            sender: "al".into(),
            route: Route::Broadcast,
            payload: Payload::Text("x".into()),
        };
        let d = event.encode(&node(), Some(EventId { epoch: 17, offset: 3 }));
        assert_eq!(text_of(&d.v1), r#"{"id":"17:3","type":"broadcast","sender":"al","data":"x"}"#);
        assert_eq!(text_of(d.seed.as_ref().unwrap()), r#"{"id":"17:3","sender":"al","text":"x"}"#);
        assert_eq!(d.id, Some(EventId { epoch: 17, offset: 3 }));
    }

    #[test]
    fn the_largest_frame_bound_holds_for_every_encoding() {
        let texts = ["plain", "quote \" back \\ nl \n tab \t", "ctl \u{1}\u{1f}", ""];
        for text in texts {
            for payload in [Payload::Text(text.into()), Payload::Json(format!("{text:?}"))] {
                for route in [Route::Broadcast, Route::Topic("t".repeat(128).into())] {
                    let event = Event { sender: "u".repeat(64), route, payload: payload.clone() };
                    let id = Some(EventId { epoch: u64::MAX, offset: u64::MAX });
                    let (mut v1, mut seed) = (String::new(), String::new());
                    event.write_v1(&mut v1, id);
                    event.write_seed(&mut seed, true, id);
                    let (Payload::Text(data) | Payload::Json(data)) = &event.payload;
                    let mut escaped = String::new();
                    push_json_str(&mut escaped, data);
                    assert_eq!(json_str_len(data), escaped.len());
                    assert!(v1.len() + 14 <= event.max_frame_len(), "{v1}");
                    assert!(seed.len() + 14 <= event.max_frame_len(), "{seed}");
                }
            }
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\u{1}b\\");
        assert_eq!(s, r#""a\u0001b\\""#);
    }
}
