//! The v1 protocol's replies and notices as JSON text: acknowledgements (`subscribed`,
//! `unsubscribed`, `refreshed`), publish receipts, `recovered` notices and history pages.
//! (Errors are [`CommandError::to_json`](super::command::CommandError::to_json).)
//!
//! Runs on: whoever answers a client: a shard, or the bus that sequenced a publish (an
//! owner shard's sequencer, or the Redis bridge thread). Pure: no I/O.

use crate::{
    event::push_json_str,
    ids::{EventId, Route},
    ws::frame::decode_unmasked,
    xshard::ReplayAnswer,
};

/// `{"type":"refreshed","exp":N}`.
pub(crate) fn refreshed_json(exp: u64) -> String {
    format!(r#"{{"type":"refreshed","exp":{exp}}}"#)
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

/// The text of a server-built frame (a delivery's v1 frame), for embedding it in a
/// reply. `None` if `frame` is not one complete unmasked text frame.
fn frame_text(frame: &[u8]) -> Option<&str> {
    let (_, payload, used) = decode_unmasked(frame)?;
    if used != frame.len() {
        return None;
    }
    std::str::from_utf8(frame.get(payload)?).ok()
}

/// `{"type":"recovered","topic":T,"recovered":B}` (v1), or without `topic` for the seed
/// protocol's broadcast stream.
pub(crate) fn recovered_json(topic: Option<&str>, recovered: bool) -> String {
    encode_recovered(topic, false, recovered)
}

/// `{"type":"recovered","direct":true,"recovered":false}`: the node lost direct messages
/// to the connection's user that it could not fill from the history.
pub(crate) fn direct_lost_json() -> String {
    encode_recovered(None, true, false)
}

fn encode_recovered(topic: Option<&str>, direct: bool, recovered: bool) -> String {
    #[derive(serde::Serialize)]
    struct Recovered<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        direct: bool,
        recovered: bool,
    }
    serde_json::to_string(&Recovered { r#type: "recovered", topic, direct, recovered })
        .unwrap_or_default()
}

/// The publish receipt: `{"type":"published","topic":T,"id":"E:O"}` (`"to":U` for a
/// direct message, neither for a broadcast; `"id":null` when the stream keeps no
/// history).
pub(crate) fn published_json(route: &Route, id: Option<EventId>) -> String {
    #[derive(serde::Serialize)]
    struct Published<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<&'a str>,
        id: Option<String>,
    }
    let (topic, to) = match route {
        Route::Broadcast => (None, None),
        Route::Topic(t) => (Some(&**t), None),
        Route::Direct(u) => (None, Some(&**u)),
    };
    let id = id.map(|id| id.to_string());
    serde_json::to_string(&Published { r#type: "published", topic, to, id }).unwrap_or_default()
}

/// A page of history: `{"type":"history","topic":T,"recovered":B,"position":"E:O"|null,
/// "more":B,"events":[...]}` — `events` are the messages as subscribers got them;
/// `position` is where a `subscribe` with `since` continues without gap or overlap.
pub(crate) fn history_json(topic: &str, answer: &ReplayAnswer) -> String {
    #[derive(serde::Serialize)]
    struct History<'a> {
        r#type: &'static str,
        topic: &'a str,
        recovered: bool,
        position: Option<String>,
        more: bool,
        events: Vec<&'a serde_json::value::RawValue>,
    }
    let events = answer
        .events
        .iter()
        .filter_map(|d| frame_text(&d.v1))
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    let page = History {
        r#type: "history",
        topic,
        recovered: answer.recovered,
        position: answer.position.map(|p| p.to_string()),
        more: answer.more,
        events,
    };
    serde_json::to_string(&page).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    #[test]
    fn replies_about_history() {
        let id = EventId { epoch: 3, offset: 9 };
        assert_eq!(
            recovered_json(Some("t"), true),
            r#"{"type":"recovered","topic":"t","recovered":true}"#
        );
        assert_eq!(recovered_json(None, false), r#"{"type":"recovered","recovered":false}"#);
        assert_eq!(direct_lost_json(), r#"{"type":"recovered","direct":true,"recovered":false}"#);
        assert_eq!(
            published_json(&Route::Topic("t".into()), Some(id)),
            r#"{"type":"published","topic":"t","id":"3:9"}"#
        );
        assert_eq!(
            published_json(&Route::Direct("bo".into()), None),
            r#"{"type":"published","to":"bo","id":null}"#
        );
        assert_eq!(
            published_json(&Route::Broadcast, Some(id)),
            r#"{"type":"published","id":"3:9"}"#
        );
        let event = crate::event::Event {
            sender: "al".into(),
            route: Route::Topic("t".into()),
            payload: Payload::Json("[1]".into()),
        };
        let answer = ReplayAnswer {
            recovered: true,
            events: vec![std::sync::Arc::new(
                event.encode(&crate::ids::NodeId("n".into()), Some(id)),
            )],
            position: Some(id),
            more: true,
        };
        assert_eq!(
            history_json("t", &answer),
            r#"{"type":"history","topic":"t","recovered":true,"position":"3:9","more":true,"events":[{"id":"3:9","type":"message","topic":"t","sender":"al","data":[1]}]}"#
        );
    }
}
