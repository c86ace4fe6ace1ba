//! The callback of a live connection's inbound decoder: what each frame and message the
//! client sent does to the connection.
//!
//! Runs on: the connection's shard, synchronously inside the connection task's poll, on
//! bytes that were just read into the shard's scratch buffer.
//!
//! [`handle_input`] feeds those bytes to the connection's [`Inbound`] decoder (`ws`) and
//! reacts to what comes out: the close handshake (a client's Close is answered after
//! what is queued), Pongs to Pings, the control-frame rate limit, the conformance echo,
//! and text messages, which go to the seed or v1 protocol ([`super::v1`]). A
//! [`Violation`] (from the decoder, or found here: 1003 binary data, 1008 control-frame
//! flood) closes the connection with its code; v1 command errors are answered there and
//! the connection stays open.

use std::{rc::Rc, time::Instant};

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{
    Conn, Mode, ShardContext, Subscriptions,
    state::{Close, Phase},
    v1,
};
use crate::{
    stats::ShardStats,
    ws::{
        frame::{self, close_code},
        inbound::{Flow, Inbound, InboundFrame, Violation},
    },
};

/// Handles bytes just read from a live connection's socket.
pub(crate) fn handle_input(
    ctx: &ShardContext,
    conn: &Rc<Conn>,
    subs: &dyn Subscriptions,
    data: &mut [u8],
) {
    // An idle connection keeps no reader state: it is taken out of its box (or made
    // fresh) for this read, and boxed again only while a frame or message is in flight.
    let taken = conn.inbound.take();
    let mut inbound = taken.map_or_else(Inbound::default, |b| *b);
    let result = inbound.feed(&ctx.decoder, &ctx.inbound_limits, data, &mut |frame| {
        handle_frame(ctx, conn, subs, frame)
    });
    match result {
        Ok(()) if inbound.is_idle() => {}
        Ok(()) => conn.inbound.set(Some(Box::new(inbound))),
        Err(v) => {
            ShardStats::add(&ctx.stats().protocol_closes, 1);
            tracing::debug!(shard = %ctx.id, conn = conn.id().0, code = v.code, cause = v.reason, "closing for protocol violation");
            let close = Close { code: v.code, reason: v.reason, discard_queued: false };
            conn.begin_close(ctx, close, ctx.timing.close_grace);
        }
    }
}

fn handle_frame(
    ctx: &ShardContext,
    conn: &Rc<Conn>,
    subs: &dyn Subscriptions,
    frame: InboundFrame<'_>,
) -> Result<Flow, Violation> {
    let phase = conn.phase();
    if matches!(phase, Phase::PeerClosed | Phase::Abort) {
        return Ok(Flow::Stop);
    }
    match frame {
        InboundFrame::Close(reply_code) => {
            // While open, the reply goes after what is already queued; the task closes
            // the socket once it is written, or at the close deadline if the client
            // stops reading. After our own Close this completes the handshake.
            let replied = conn.state.borrow_mut().handle_peer_close(
                reply_code,
                Instant::now(),
                ctx.timing.close_grace,
            );
            if replied {
                conn.flush_now();
            }
            conn.wake();
            return Ok(Flow::Stop);
        }
        // After our Close, only the client's Close matters.
        _ if phase == Phase::Closing => {}
        InboundFrame::Ping(payload) => {
            check_control_rate(ctx, conn)?;
            conn.enqueue(ctx, &Rc::new(frame::encode_control(Control::Pong, payload)));
        }
        InboundFrame::Pong => {
            check_control_rate(ctx, conn)?;
            conn.state.borrow_mut().handle_pong();
        }
        InboundFrame::Message { opcode, payload } => {
            handle_message(ctx, conn, subs, opcode, payload)?
        }
    }
    Ok(Flow::Continue)
}

/// Control frames (Ping/Pong) from a client: at most `max_control_frames_per_sec` in any
/// one-second window, so a ping flood cannot make us answer forever.
fn check_control_rate(ctx: &ShardContext, conn: &Conn) -> Result<(), Violation> {
    let second = ctx.epoch.elapsed().as_secs();
    conn.state.borrow_mut().count_control_frame(second, &ctx.timing).map_err(|_| Violation {
        code: close_code::POLICY_VIOLATION,
        reason: "control frame rate limit",
    })
}

/// A complete data message: echoed on the conformance endpoint; otherwise it must be
/// text, for the connection's protocol.
fn handle_message(
    ctx: &ShardContext,
    conn: &Rc<Conn>,
    subs: &dyn Subscriptions,
    opcode: Data,
    payload: &mut [u8],
) -> Result<(), Violation> {
    if conn.mode == Mode::Echo {
        // Conformance endpoint (`--echo-path`): same opcode, same payload.
        conn.enqueue(ctx, &Rc::new(frame::encode(OpCode::Data(opcode), payload)));
        return Ok(());
    }
    if opcode != Data::Text {
        return Err(Violation {
            code: close_code::UNSUPPORTED_DATA,
            reason: "binary messages are not supported",
        });
    }
    v1::handle_text(ctx, conn, subs, payload)
}
