//! The inbound side of one connection: frames → messages → commands and events.
//!
//! Runs on: the connection's shard, synchronously inside the connection task's poll,
//! on bytes that were just read into the shard's scratch buffer. Only an incomplete
//! frame or a fragmented message is copied into the connection ([`Inbound`]); an idle
//! connection holds no inbound buffer at all.
//!
//! Protocol violations close the connection with the matching code (1002 protocol, 1003
//! binary data, 1007 invalid UTF-8, 1009 too big); v1 command errors are answered with
//! an error message and the connection stays open.

use std::rc::Rc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{Conn, Phase, command};
use crate::{
    config::MAX_TOPICS_PER_CONN,
    event::{Event, Payload},
    frame::{self, FrameDecoder, FrameError, close_code},
    shard::Shard,
    xshard::{Route, ShardStats},
};

/// Inbound reassembly state. Both buffers are empty (unallocated) between messages.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Bytes of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// Payload of a fragmented message so far.
    message: Vec<u8>,
    /// Opcode of the fragmented message in progress, if any.
    message_opcode: Option<Data>,
}

/// Why the connection must close.
struct Violation {
    code: u16,
    reason: &'static str,
}

impl From<FrameError> for Violation {
    fn from(e: FrameError) -> Violation {
        Violation { code: e.close_code(), reason: e.reason() }
    }
}

/// Handles bytes just read from the socket.
pub fn handle_input(shard: &Shard, conn: &Rc<Conn>, data: &mut [u8]) {
    let mut inbound = conn.inbound.borrow_mut();
    let result = if inbound.partial.is_empty() {
        match process_frames(shard, conn, &mut inbound, data) {
            Ok(used) => {
                if used < data.len() {
                    let rest = &data[used..];
                    let want = FrameDecoder::frame_len_hint(rest).unwrap_or(0).max(rest.len());
                    inbound.partial.reserve_exact(want);
                    inbound.partial.extend_from_slice(rest);
                }
                Ok(())
            }
            Err(v) => Err(v),
        }
    } else {
        let mut partial = std::mem::take(&mut inbound.partial);
        partial.extend_from_slice(data);
        let result = process_frames(shard, conn, &mut inbound, &mut partial);
        if let Ok(used) = result {
            if used == partial.len() {
                partial = Vec::new();
            } else {
                partial.drain(..used);
            }
            inbound.partial = partial;
        }
        result.map(|_| ())
    };
    drop(inbound);
    if let Err(v) = result {
        ShardStats::add(&shard.stats().protocol_closes, 1);
        tracing::debug!(shard = %shard.id, conn = conn.id.get().0, code = v.code, cause = v.reason, "closing for protocol violation");
        *conn.inbound.borrow_mut() = Inbound::default();
        conn.begin_close(shard, v.code, v.reason);
    }
}

/// Decodes and handles every complete frame in `buf`; returns the bytes consumed.
fn process_frames(
    shard: &Shard,
    conn: &Rc<Conn>,
    inbound: &mut Inbound,
    buf: &mut [u8],
) -> Result<usize, Violation> {
    let mut at = 0;
    while at < buf.len() {
        // After a Close (either side's), nothing more is processed.
        if matches!(conn.phase.get(), Phase::PeerClosed | Phase::Abort) {
            return Ok(buf.len());
        }
        let Some((f, used)) = shard.decoder.decode(&mut buf[at..])? else { break };
        let payload = &mut buf[at + f.payload_start..at + f.payload_end];
        at += used;
        let closing = conn.phase.get() == Phase::Closing;
        match f.opcode {
            OpCode::Control(Control::Close) => handle_close(conn, payload)?,
            OpCode::Control(Control::Ping) if !closing => {
                conn.enqueue(shard, &Rc::new(frame::encode_control(Control::Pong, payload)));
            }
            OpCode::Control(Control::Pong) => {
                let mut hb = conn.heartbeat.get();
                hb.awaiting_pong_since = None;
                conn.heartbeat.set(hb);
            }
            OpCode::Control(_) => {}
            OpCode::Data(_) if closing => {}
            OpCode::Data(Data::Continue) => {
                let Some(opcode) = inbound.message_opcode else {
                    return Err(Violation {
                        code: close_code::PROTOCOL_ERROR,
                        reason: "continuation without a message",
                    });
                };
                if inbound.message.len() + payload.len() > shard.cfg.max_message_size.0 {
                    return Err(FrameError::TooBig.into());
                }
                inbound.message.extend_from_slice(payload);
                if f.fin {
                    let mut message = std::mem::take(&mut inbound.message);
                    inbound.message_opcode = None;
                    handle_message(shard, conn, opcode, &mut message)?;
                }
            }
            OpCode::Data(opcode) => {
                if inbound.message_opcode.is_some() {
                    return Err(Violation {
                        code: close_code::PROTOCOL_ERROR,
                        reason: "new message inside a fragmented one",
                    });
                }
                if f.fin {
                    handle_message(shard, conn, opcode, payload)?;
                } else {
                    inbound.message_opcode = Some(opcode);
                    inbound.message.extend_from_slice(payload);
                }
            }
        }
    }
    Ok(at)
}

fn handle_close(conn: &Rc<Conn>, payload: &[u8]) -> Result<(), Violation> {
    let reply_code = match payload.len() {
        0 => close_code::NORMAL,
        1 => {
            return Err(Violation {
                code: close_code::PROTOCOL_ERROR,
                reason: "close frame with a 1-byte payload",
            });
        }
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !frame::is_valid_close_code(code) {
                return Err(Violation {
                    code: close_code::PROTOCOL_ERROR,
                    reason: "invalid close code",
                });
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(Violation {
                    code: close_code::INVALID_PAYLOAD,
                    reason: "close reason is not UTF-8",
                });
            }
            code
        }
    };
    if conn.phase.get() == Phase::Open {
        // Reply with the client's code; nothing queued before it still matters.
        let mut out = conn.out.borrow_mut();
        out.drop_unstarted();
        out.push(Rc::new(frame::encode_close(reply_code, "")));
        drop(out);
        conn.phase.set(Phase::PeerClosed);
        conn.flush_now();
    } else {
        conn.phase.set(Phase::PeerClosed);
    }
    conn.wake();
    Ok(())
}

fn handle_message(
    shard: &Shard,
    conn: &Rc<Conn>,
    opcode: Data,
    payload: &mut [u8],
) -> Result<(), Violation> {
    if opcode != Data::Text {
        return Err(Violation {
            code: close_code::UNSUPPORTED_DATA,
            reason: "binary messages are not supported",
        });
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return Err(Violation {
            code: close_code::INVALID_PAYLOAD,
            reason: "text message is not UTF-8",
        });
    };
    ShardStats::add(&shard.stats().messages_in, 1);
    if !conn.v1 {
        conn.pending_events.borrow_mut().push(Event {
            sender: conn.user.to_string(),
            route: Route::Broadcast,
            payload: Payload::Text(text.to_owned()),
        });
        return Ok(());
    }
    let parsed = command::parse(payload, &mut shard.json_buffers.borrow_mut().0);
    let event = |route, payload| Event { sender: conn.user.to_string(), route, payload };
    let reply = match parsed {
        Ok(command::Command::Subscribe(topic)) => {
            let mut topics = conn.topics.borrow_mut();
            if topics.iter().any(|t| **t == *topic) {
                Some(command::ack_json("subscribed", &topic))
            } else if topics.len() >= MAX_TOPICS_PER_CONN {
                Some(
                    command::CommandError {
                        code: "too_many_topics",
                        message: format!("at most {MAX_TOPICS_PER_CONN} topics per connection"),
                    }
                    .to_json(),
                )
            } else {
                shard.hub.borrow_mut().subscribe(&topic, conn.id.get());
                topics.push(topic.as_str().into());
                Some(command::ack_json("subscribed", &topic))
            }
        }
        Ok(command::Command::Unsubscribe(topic)) => {
            conn.topics.borrow_mut().retain(|t| **t != *topic);
            shard.hub.borrow_mut().unsubscribe(&topic, conn.id.get());
            Some(command::ack_json("unsubscribed", &topic))
        }
        Ok(command::Command::Publish { topic, payload }) => {
            conn.pending_events.borrow_mut().push(event(Route::Topic(topic.into()), payload));
            None
        }
        Ok(command::Command::Direct { to, payload }) => {
            conn.pending_events.borrow_mut().push(event(Route::Direct(to.into()), payload));
            None
        }
        Ok(command::Command::Broadcast(payload)) => {
            conn.pending_events.borrow_mut().push(event(Route::Broadcast, payload));
            None
        }
        Err(e) => Some(e.to_json()),
    };
    if let Some(json) = reply {
        conn.enqueue(shard, &Rc::new(frame::encode_text(&json)));
    }
    Ok(())
}
