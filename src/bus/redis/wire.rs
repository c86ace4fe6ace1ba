//! What corecast puts on Redis and how it reads it back: channel names and payloads.
//!
//! Runs on: the bridge thread. Pure: no I/O. PROTOCOL.md ("Redis channels and payloads")
//! documents all of it for other publishers.
//!
//! - **the seed channel** (`seed_channel`, `ws_broadcast` by default): broadcasts, in the
//!   format of the Python nodes this design replaces — `{"sender":S,"text":T}`, plus `"data":D` when a v1 client broadcast
//!   non-string data. Seed clients receive a payload **verbatim**, whoever published it;
//!   v1 clients receive `{"type":"broadcast","sender":S,"data":D}` (D = `data` when
//!   present, else `text`), or `sender: null` and the payload as a string when it is not
//!   such an object.
//! - **`<prefix>topic:<T>`** and **`<prefix>user:<U>`**: the v1 message itself
//!   (`{"type":"message","topic":T,"sender":S,"data":D}`, `{"type":"direct",...}`),
//!   framed as received without re-serializing. A payload that is not a JSON object is
//!   wrapped as `{"type":"message","topic":T,"sender":null,"data":"<payload>"}` (or
//!   `"direct"`).
//! - **`<prefix>node:<node id>`**: each node's heartbeat to itself.
//!
//! corecast ends every event payload it publishes with `"ts":<µs since the Unix epoch>`,
//! the publish time, and strips that last member again before framing, so clients of
//! corecast nodes never see it ([`split_stamp`]); Python nodes forward it verbatim.
//!
//! A payload that is not UTF-8 cannot be a text frame: the bridge drops it (and counts it)
//! before it gets here.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::{
    event::{Event, push_json_str},
    ids::{EventId, Interest, NodeId, PublishedAt, Route},
    ws::frame,
    xshard::Delivery,
};

/// The node's channel names.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    /// Broadcasts in the seed design's format (`seed_channel`, `ws_broadcast` by
    /// default): the channel shared with the Python nodes.
    seed: String,
    /// `<prefix>topic:`
    topic: String,
    /// `<prefix>user:`
    user: String,
    /// `<prefix>node:<node id>`: this node's heartbeat.
    heartbeat: String,
    /// `<prefix>control`: cluster commands (server API), JSON.
    control: String,
    /// `<prefix>blocks`: a hash of user → the `disconnect` command that blocks it.
    blocks: String,
}

/// What a received message is, by its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// An event for local connections.
    Event(Route),
    /// This node's heartbeat came back.
    Heartbeat,
    /// A cluster command (server API).
    Control,
    /// A channel this node does not read (never subscribed; ignored).
    Unknown(&'a str),
}

impl Channels {
    /// The names for a node called `node` with channel prefix `prefix` (the deployment's,
    /// database included) and broadcasts on `seed`.
    pub(crate) fn new(prefix: &str, node: &NodeId, seed: &str) -> Channels {
        Channels {
            seed: seed.to_owned(),
            topic: format!("{prefix}topic:"),
            user: format!("{prefix}user:"),
            heartbeat: format!("{prefix}node:{node}"),
            control: format!("{prefix}control"),
            blocks: format!("{prefix}blocks"),
        }
    }

    /// The channel an event on `route` is published on.
    pub(crate) fn of_route(&self, route: &Route) -> String {
        match route {
            Route::Broadcast => self.seed.clone(),
            Route::Topic(t) => format!("{}{t}", self.topic),
            Route::Direct(u) => format!("{}{u}", self.user),
        }
    }

    /// The channel that carries what `interest` asks for.
    pub(crate) fn of_interest(&self, interest: &Interest) -> String {
        match interest {
            Interest::Topic(t) => format!("{}{t}", self.topic),
            Interest::User(u) => format!("{}{u}", self.user),
        }
    }

    /// This node's heartbeat channel.
    pub(crate) fn heartbeat(&self) -> &str {
        &self.heartbeat
    }

    /// The channel of broadcasts in the seed design's format.
    pub(crate) fn seed(&self) -> &str {
        &self.seed
    }

    /// The channel of cluster commands.
    pub(crate) fn control(&self) -> &str {
        &self.control
    }

    /// The hash key of the users blocked by `/api/disconnect`.
    pub(crate) fn blocks(&self) -> &str {
        &self.blocks
    }

    /// What a message on `channel` is.
    pub(crate) fn classify<'a>(&self, channel: &'a str) -> Incoming<'a> {
        if channel == self.seed {
            Incoming::Event(Route::Broadcast)
        } else if let Some(topic) = channel.strip_prefix(&self.topic) {
            Incoming::Event(Route::Topic(topic.into()))
        } else if let Some(user) = channel.strip_prefix(&self.user) {
            Incoming::Event(Route::Direct(user.into()))
        } else if channel == self.heartbeat {
            Incoming::Heartbeat
        } else if channel == self.control {
            Incoming::Control
        } else {
            Incoming::Unknown(channel)
        }
    }
}

/// The member corecast ends each published payload with.
const STAMP: &str = r#","ts":"#;

/// Writes the payload `event` is published with (see the module docs), stamped with the
/// publish time as its last member.
pub(crate) fn write_payload(event: &Event, published: PublishedAt, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    out.reserve(96 + event.payload_len());
    match event.route {
        Route::Broadcast => event.write_seed(out, true, None),
        Route::Topic(_) | Route::Direct(_) => event.write_v1(out, None),
    }
    if out.ends_with('}') {
        out.pop();
        let _ = write!(out, "{STAMP}{}}}", published.0);
    }
}

/// Splits a payload into what clients get and its publish time: a payload ending with
/// `,"ts":<digits>}` loses that member. Anything else is returned whole, unstamped.
pub(crate) fn split_stamp(text: &str) -> (Cow<'_, str>, Option<PublishedAt>) {
    let unstamped = (Cow::Borrowed(text), None);
    let Some(body) = text.strip_suffix('}') else { return unstamped };
    let Some(at) = body.rfind(STAMP) else { return unstamped };
    let digits = &body[at + STAMP.len()..];
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return unstamped;
    }
    let Ok(micros) = digits.parse::<u64>() else { return unstamped };
    let mut client = String::with_capacity(at + 1);
    client.push_str(&body[..at]);
    client.push('}');
    (Cow::Owned(client), Some(PublishedAt(micros)))
}

/// Why a received message is not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Dropped {
    /// Not UTF-8 (or not a string at all): it cannot be sent as a text frame.
    #[error("payload is not UTF-8")]
    NotUtf8,
    /// Larger than a connection's outbound queue limit: queueing it would cut off every
    /// receiver as a slow consumer.
    #[error("payload larger than outbound_queue_limit")]
    TooLarge,
}

/// The `ws_broadcast` payload fields corecast reads (others are ignored).
#[derive(Deserialize)]
struct BroadcastPayload<'a> {
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
    /// Present (even as `null`) when a v1 client broadcast non-string data.
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The id of a stored event: the payload starts with `{"id":"<epoch>:<offset>"` (the
/// publish script puts it first). `None` for payloads without one (other publishers).
pub(crate) fn event_id_of(text: &str) -> Option<EventId> {
    let rest = text.strip_prefix(r#"{"id":""#)?;
    let end = rest.find('"')?;
    rest[..end].parse().ok()
}

/// Frames a message (its payload as text) received on `route`'s channel: each frame
/// built once, here. A stored event's id (first field) is kept, in both formats.
pub(crate) fn delivery_from(route: Route, text: &str, json: &mut String) -> Delivery {
    json.clear();
    let (text, published) = split_stamp(text);
    let text = &*text;
    let id = event_id_of(text);
    let (v1, seed) = match &route {
        Route::Broadcast => {
            json.push('{');
            if let Some(id) = id {
                use std::fmt::Write;
                let _ = write!(json, r#""id":"{id}","#);
            }
            json.push_str(r#""type":"broadcast","sender":"#);
            match serde_json::from_str::<BroadcastPayload<'_>>(text) {
                Ok(p) => {
                    push_json_str(json, &p.sender);
                    json.push_str(r#","data":"#);
                    match p.data {
                        Some(raw) => json.push_str(raw.get()),
                        None => push_json_str(json, &p.text),
                    }
                }
                Err(_) => {
                    json.push_str(r#"null,"data":"#);
                    push_json_str(json, text);
                }
            }
            json.push('}');
            (frame::encode_text(json), Some(frame::encode_text(text)))
        }
        Route::Topic(_) | Route::Direct(_) if is_json_object(text) => {
            (frame::encode_text(text), None)
        }
        Route::Topic(topic) => {
            json.push_str(r#"{"type":"message","topic":"#);
            push_json_str(json, topic);
            json.push_str(r#","sender":null,"data":"#);
            push_json_str(json, text);
            json.push('}');
            (frame::encode_text(json), None)
        }
        Route::Direct(_) => {
            json.push_str(r#"{"type":"direct","sender":null,"data":"#);
            push_json_str(json, text);
            json.push('}');
            (frame::encode_text(json), None)
        }
    };
    Delivery {
        route,
        id,
        origin: NodeId::redis(),
        v1,
        seed,
        published,
        lag_observed: Default::default(),
    }
}

/// Whether `text` is one well-formed JSON object.
fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    fn text_of(frame: &[u8]) -> String {
        let (_, payload, _) = crate::ws::frame::decode_unmasked(frame).expect("one frame");
        String::from_utf8(frame[payload].to_vec()).expect("utf-8")
    }

    fn received(route: Route, payload: &str) -> (String, Option<String>) {
        let d = delivery_from(route, payload, &mut String::new());
        (text_of(&d.v1), d.seed.as_deref().map(text_of))
    }

    fn published(route: Route, payload: Payload) -> String {
        let mut out = String::new();
        let event = Event { sender: "al".into(), route, payload };
        write_payload(&event, PublishedAt(1_764_500_000_123_456), &mut out);
        let (text, published) = split_stamp(&out);
        assert_eq!(published, Some(PublishedAt(1_764_500_000_123_456)), "{out}");
        assert!(out.ends_with(r#","ts":1764500000123456}"#), "{out}");
        text.into_owned()
    }

    #[test]
    fn channels_round_trip() {
        let c = Channels::new("cc:", &NodeId("n1".into()), "ws_broadcast");
        assert_eq!(c.of_route(&Route::Broadcast), "ws_broadcast");
        let topic = c.of_route(&Route::Topic("chat.1".into()));
        assert_eq!(topic, "cc:topic:chat.1");
        assert_eq!(c.classify(&topic), Incoming::Event(Route::Topic("chat.1".into())));
        assert_eq!(c.of_interest(&Interest::User("bo".into())), "cc:user:bo");
        assert_eq!(c.classify("cc:user:bo"), Incoming::Event(Route::Direct("bo".into())));
        assert_eq!(c.classify("ws_broadcast"), Incoming::Event(Route::Broadcast));
        assert_eq!(c.classify("cc:node:n1"), Incoming::Heartbeat);
        assert_eq!(c.classify("cc:node:n2"), Incoming::Unknown("cc:node:n2"));
    }

    /// Broadcasts keep the Python nodes' format; non-string data rides along as `data`.
    #[test]
    fn broadcast_payloads_are_python_compatible() {
        assert_eq!(
            published(Route::Broadcast, Payload::Text("hi \"x\"".into())),
            r#"{"sender":"al","text":"hi \"x\""}"#
        );
        assert_eq!(
            published(Route::Broadcast, Payload::Json(r#"{"a":[1,2]}"#.into())),
            r#"{"sender":"al","text":"{\"a\":[1,2]}","data":{"a":[1,2]}}"#
        );
        assert_eq!(
            published(Route::Topic("t".into()), Payload::Json("3".into())),
            r#"{"type":"message","topic":"t","sender":"al","data":3}"#
        );
        assert_eq!(
            published(Route::Direct("bo".into()), Payload::Text("yo".into())),
            r#"{"type":"direct","sender":"al","data":"yo"}"#
        );
    }

    #[test]
    fn received_broadcasts_frame_for_both_protocols() {
        // Seed clients get the payload verbatim, extra fields and spacing included.
        let python = r#"{"sender": "py", "text": "hello", "extra": 1}"#;
        let (v1, seed) = received(Route::Broadcast, python);
        assert_eq!(v1, r#"{"type":"broadcast","sender":"py","data":"hello"}"#);
        assert_eq!(seed.as_deref(), Some(python));
        let (v1, _) = received(Route::Broadcast, r#"{"sender":"al","text":"{}","data":null}"#);
        assert_eq!(v1, r#"{"type":"broadcast","sender":"al","data":null}"#);
        let (v1, _) = received(Route::Broadcast, r#"{"sender":"al","text":"[1]","data":[1]}"#);
        assert_eq!(v1, r#"{"type":"broadcast","sender":"al","data":[1]}"#);
        for odd in ["not json", "[1,2]", r#"{"sender":1,"text":"x"}"#, r#"{"text":"x"}"#] {
            let (v1, seed) = received(Route::Broadcast, odd);
            let mut expected = r#"{"type":"broadcast","sender":null,"data":"#.to_owned();
            push_json_str(&mut expected, odd);
            expected.push('}');
            assert_eq!(v1, expected);
            assert_eq!(seed.as_deref(), Some(odd));
        }
    }

    #[test]
    fn stored_events_keep_their_id_in_both_formats() {
        let stored = r#"{"id":"17:4","sender":"al","text":"hi"}"#;
        let d = delivery_from(Route::Broadcast, stored, &mut String::new());
        assert_eq!(d.id, Some(EventId { epoch: 17, offset: 4 }));
        assert_eq!(text_of(&d.v1), r#"{"id":"17:4","type":"broadcast","sender":"al","data":"hi"}"#);
        assert_eq!(text_of(d.seed.as_ref().unwrap()), stored);
        let topic = r#"{"id":"17:5","type":"message","topic":"t","sender":"al","data":1}"#;
        let d = delivery_from(Route::Topic("t".into()), topic, &mut String::new());
        assert_eq!(
            (d.id, text_of(&d.v1)),
            (Some(EventId { epoch: 17, offset: 5 }), topic.to_owned())
        );
        for none in [r#"{"sender":"py","text":"x"}"#, r#"{"id":"x:1"}"#, r#"{"id":"1:2"#, "plain"] {
            assert_eq!(event_id_of(none), None, "{none}");
        }
    }

    /// The stamp is stripped before framing; only a last top-level `"ts"` of digits is
    /// one.
    #[test]
    fn publish_stamps_are_stripped() {
        let stamped = r#"{"id":"1:2","type":"message","topic":"t","sender":"al","data":1,"ts":17}"#;
        let d = delivery_from(Route::Topic("t".into()), stamped, &mut String::new());
        assert_eq!(d.published, Some(PublishedAt(17)));
        assert_eq!(d.id, Some(EventId { epoch: 1, offset: 2 }));
        assert_eq!(
            text_of(&d.v1),
            r#"{"id":"1:2","type":"message","topic":"t","sender":"al","data":1}"#
        );
        let python = r#"{"sender":"al","text":"hi","ts":5}"#;
        let d = delivery_from(Route::Broadcast, python, &mut String::new());
        assert_eq!(text_of(d.seed.as_ref().unwrap()), r#"{"sender":"al","text":"hi"}"#);
        for kept in [
            r#"{"data":{"ts":5}}"#,
            r#"{"ts":"5"}"#,
            r#"{"a":1,"ts":}"#,
            r#"{"a":1,"ts":-5}"#,
            r#"{"a":1,"ts":99999999999999999999}"#,
            "ts",
        ] {
            assert_eq!(split_stamp(kept), (Cow::Borrowed(kept), None), "{kept}");
        }
    }

    #[test]
    fn received_topic_and_direct_messages() {
        let own = r#"{"type":"message","topic":"t","sender":"al","data":{"k":1}}"#;
        assert_eq!(received(Route::Topic("t".into()), own), (own.to_owned(), None));
        assert_eq!(
            received(Route::Topic("t".into()), "price 3"),
            (r#"{"type":"message","topic":"t","sender":null,"data":"price 3"}"#.into(), None)
        );
        assert_eq!(
            received(Route::Direct("bo".into()), "{broken"),
            (r#"{"type":"direct","sender":null,"data":"{broken"}"#.into(), None)
        );
    }
}
