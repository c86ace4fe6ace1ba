//! The inbound decoder of one connection (sans-I/O, fuzzed in `fuzz/`): bytes → frames →
//! messages, and the verdict that closes a connection that breaks the rules.
//!
//! Runs on: any thread; in the server, a connection's shard, synchronously inside the
//! connection task's poll, on bytes that were just read into the shard's scratch buffer.
//! No I/O and no clock: the caller hands it bytes and a callback.
//!
//! [`Inbound`] keeps only an incomplete frame and a fragmented message (both empty,
//! unallocated, between messages), enforces the RFC 6455 rules a server must enforce, the
//! size and fragment limits ([`InboundLimits`]), and validates text as UTF-8 **as it
//! arrives** (fail fast, even inside a frame that is still arriving), and hands complete
//! messages and control frames ([`InboundFrame`]) to the callback, which says whether to
//! go on ([`Flow`]). A [`Violation`] is the close code and reason the connection must
//! close with (1002 protocol, 1007 invalid UTF-8, 1008 policy, 1009 too big).

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{
    frame::{FrameDecoder, FrameError, close_code, is_valid_close_code, unmask_at},
    utf8::Utf8Check,
};

/// Why the connection must close: the close code and reason sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

impl From<FrameError> for Violation {
    fn from(e: FrameError) -> Violation {
        Violation { code: e.close_code(), reason: e.reason() }
    }
}

impl Violation {
    /// Text that is not UTF-8 (close 1007).
    pub(crate) const INVALID_UTF8: Violation =
        Violation { code: close_code::INVALID_PAYLOAD, reason: "text is not valid UTF-8" };
}

/// Limits applied while reassembling messages.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    /// Largest message after reassembly, in bytes.
    pub max_message: usize,
    /// Most frames one message may be split into.
    pub max_fragments: usize,
}

/// What the reader hands to its caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InboundFrame<'a> {
    /// A complete data message (text is valid UTF-8).
    Message {
        /// Text or binary.
        opcode: Data,
        /// The unmasked payload (reassembled if it was fragmented).
        payload: &'a mut [u8],
    },
    /// A Ping with its payload.
    Ping(&'a [u8]),
    /// A Pong.
    Pong,
    /// A valid Close; the code to reply with (the client's, or 1000 when it sent none).
    Close(u16),
}

/// Whether to keep reading frames from the same input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Go on.
    Continue,
    /// Stop: ignore the rest of the input (after a Close).
    Stop,
}

/// Inbound reassembly state of one connection (sans-I/O).
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    /// Bytes of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// Payload bytes of that frame already unmasked and UTF-8 checked (text frames).
    partial_checked: usize,
    /// Payload of a fragmented message so far.
    message: Vec<u8>,
    /// Opcode of the fragmented message in progress, if any.
    message_opcode: Option<Data>,
    /// Frames in the fragmented message so far.
    fragments: usize,
    /// UTF-8 state of the text message in progress.
    utf8: Utf8Check,
    /// A Close arrived: everything after it is ignored.
    closed: bool,
}

/// Callback receiving each complete message or control frame.
pub(crate) type OnFrame<'f> = dyn FnMut(InboundFrame<'_>) -> Result<Flow, Violation> + 'f;

impl Inbound {
    /// Nothing in flight: no partial frame, no fragmented message, no Close seen. Such
    /// a state owns no memory and need not be kept.
    pub(crate) fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.message_opcode.is_none() && !self.closed
    }

    /// Handles bytes just read. Complete frames go to `on_frame`; an incomplete one is
    /// kept (and, if it is text, its arrived part is checked for UTF-8 at once).
    ///
    /// # Errors
    /// The [`Violation`] that must close the connection (the state is then undefined:
    /// drop it).
    pub(crate) fn feed(
        &mut self,
        decoder: &FrameDecoder,
        limits: &InboundLimits,
        data: &mut [u8],
        on_frame: &mut OnFrame<'_>,
    ) -> Result<(), Violation> {
        if self.closed {
            return Ok(());
        }
        if self.partial.is_empty() {
            let (used, flow) = self.process(decoder, limits, data, 0, on_frame)?;
            if flow == Flow::Stop {
                return Ok(());
            }
            if used < data.len() {
                let rest = &data[used..];
                // Reserve the whole frame once; its header (when complete) passed the limits.
                let frame_len = match decoder.decode_header(rest) {
                    Ok(Some(h)) => h.payload_start + h.payload_len,
                    _ => 0,
                };
                let want = frame_len.max(rest.len());
                self.partial.reserve_exact(want);
                self.partial.extend_from_slice(rest);
                self.partial_checked = 0;
            }
        } else {
            let mut partial = std::mem::take(&mut self.partial);
            partial.extend_from_slice(data);
            let (used, flow) =
                self.process(decoder, limits, &mut partial, self.partial_checked, on_frame)?;
            if flow == Flow::Stop || used == partial.len() {
                self.partial_checked = 0;
                return Ok(());
            }
            if used > 0 {
                partial.drain(..used);
                self.partial_checked = 0;
            }
            self.partial = partial;
        }
        self.check_partial(decoder, limits)
    }

    /// Decodes every complete frame; returns the bytes consumed and whether to stop.
    fn process(
        &mut self,
        decoder: &FrameDecoder,
        limits: &InboundLimits,
        buf: &mut [u8],
        first_checked: usize,
        on_frame: &mut OnFrame<'_>,
    ) -> Result<(usize, Flow), Violation> {
        let mut at = 0;
        while at < buf.len() {
            // Only the frame that was partly checked before this read skips bytes.
            let checked = if at == 0 { first_checked } else { 0 };
            let Some((f, used)) = decoder.decode(&mut buf[at..], checked)? else { break };
            let payload = &mut buf[at + f.payload_start..at + f.payload_end];
            at += used;
            let flow = match f.opcode {
                OpCode::Control(Control::Close) => {
                    let reply = close_reply_code(payload)?;
                    self.closed = true;
                    on_frame(InboundFrame::Close(reply))?;
                    return Ok((buf.len(), Flow::Stop));
                }
                OpCode::Control(Control::Ping) => on_frame(InboundFrame::Ping(payload))?,
                OpCode::Control(Control::Pong) => on_frame(InboundFrame::Pong)?,
                OpCode::Control(Control::Reserved(_)) => Flow::Continue,
                OpCode::Data(Data::Continue) => {
                    let opcode = self.check_data_frame(f.opcode, payload.len(), limits)?;
                    self.fragments += 1;
                    if opcode == Data::Text {
                        self.utf8
                            .feed(&payload[checked.min(payload.len())..])
                            .map_err(|_| Violation::INVALID_UTF8)?;
                    }
                    self.message.extend_from_slice(payload);
                    if f.fin {
                        if opcode == Data::Text {
                            self.utf8.finish().map_err(|_| Violation::INVALID_UTF8)?;
                        }
                        let mut message = std::mem::take(&mut self.message);
                        self.message_opcode = None;
                        self.fragments = 0;
                        on_frame(InboundFrame::Message { opcode, payload: &mut message })?
                    } else {
                        Flow::Continue
                    }
                }
                OpCode::Data(opcode) => {
                    self.check_data_frame(f.opcode, payload.len(), limits)?;
                    if opcode == Data::Text {
                        if checked == 0 {
                            self.utf8 = Utf8Check::default();
                        }
                        self.utf8
                            .feed(&payload[checked.min(payload.len())..])
                            .map_err(|_| Violation::INVALID_UTF8)?;
                        if f.fin {
                            self.utf8.finish().map_err(|_| Violation::INVALID_UTF8)?;
                        }
                    }
                    if f.fin {
                        on_frame(InboundFrame::Message { opcode, payload })?
                    } else {
                        self.message_opcode = Some(opcode);
                        self.fragments = 1;
                        self.message.extend_from_slice(payload);
                        Flow::Continue
                    }
                }
            };
            if flow == Flow::Stop {
                return Ok((at, Flow::Stop));
            }
        }
        Ok((at, Flow::Continue))
    }

    /// The checks a data frame must pass before its payload is looked at, in the one
    /// order used both for complete frames and for frames still arriving (so reading in
    /// pieces never changes the verdict): sequencing, fragment count, reassembled size.
    /// Returns the opcode of the message the frame belongs to.
    fn check_data_frame(
        &self,
        opcode: OpCode,
        payload_len: usize,
        limits: &InboundLimits,
    ) -> Result<Data, Violation> {
        match (opcode, self.message_opcode) {
            (OpCode::Data(Data::Continue), None) => Err(Violation {
                code: close_code::PROTOCOL_ERROR,
                reason: "continuation without a message",
            }),
            (OpCode::Data(Data::Continue), Some(message)) => {
                if self.fragments + 1 > limits.max_fragments {
                    return Err(Violation {
                        code: close_code::POLICY_VIOLATION,
                        reason: "too many fragments",
                    });
                }
                if self.message.len() + payload_len > limits.max_message {
                    return Err(FrameError::TooBig.into());
                }
                Ok(message)
            }
            (OpCode::Data(_), Some(_)) => Err(Violation {
                code: close_code::PROTOCOL_ERROR,
                reason: "new message inside a fragmented one",
            }),
            (OpCode::Data(data), None) => Ok(data),
            (OpCode::Control(_), _) => Ok(Data::Binary),
        }
    }

    /// Fail fast on the frame still arriving: its header is checked as soon as it is
    /// complete, and the arrived part of a text payload is unmasked and UTF-8 checked.
    fn check_partial(
        &mut self,
        decoder: &FrameDecoder,
        limits: &InboundLimits,
    ) -> Result<(), Violation> {
        let Some(h) = decoder.decode_header(&self.partial)? else { return Ok(()) };
        if !matches!(h.opcode, OpCode::Data(_)) {
            return Ok(());
        }
        if self.check_data_frame(h.opcode, h.payload_len, limits)? != Data::Text {
            return Ok(());
        }
        let arrived_end = self.partial.len().min(h.payload_start + h.payload_len);
        let from = h.payload_start + self.partial_checked;
        if arrived_end <= from {
            return Ok(());
        }
        if self.partial_checked == 0 && h.opcode == OpCode::Data(Data::Text) {
            self.utf8 = Utf8Check::default();
        }
        unmask_at(&mut self.partial[from..arrived_end], h.mask, self.partial_checked);
        self.utf8.feed(&self.partial[from..arrived_end]).map_err(|_| Violation::INVALID_UTF8)?;
        self.partial_checked = arrived_end - h.payload_start;
        Ok(())
    }
}

/// Validates a Close payload; returns the code to reply with.
fn close_reply_code(payload: &[u8]) -> Result<u16, Violation> {
    match payload.len() {
        0 => Ok(close_code::NORMAL),
        1 => Err(Violation {
            code: close_code::PROTOCOL_ERROR,
            reason: "close frame with a 1-byte payload",
        }),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
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
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::encode_masked;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked(&mut out, opcode, fin, payload, [9, 8, 7, 6]);
        out
    }

    const LIMITS: InboundLimits = InboundLimits { max_message: 1 << 16, max_fragments: 8 };
    const DECODER: FrameDecoder = FrameDecoder { max_frame_payload: 1 << 16 };

    /// Feeds `wire` in chunks of `chunk` bytes; collects (opcode, payload) of messages.
    fn run(wire: &[u8], chunk: usize) -> Result<Vec<(u8, Vec<u8>)>, Violation> {
        let mut inbound = Inbound::default();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            let mut piece = piece.to_vec();
            inbound.feed(&DECODER, &LIMITS, &mut piece, &mut |f| {
                match f {
                    InboundFrame::Message { opcode, payload } => {
                        got.push((u8::from(OpCode::Data(opcode)), payload.to_vec()))
                    }
                    InboundFrame::Ping(p) => got.push((9, p.to_vec())),
                    InboundFrame::Pong => got.push((10, vec![])),
                    InboundFrame::Close(code) => {
                        got.push((8, code.to_be_bytes().to_vec()));
                        return Ok(Flow::Stop);
                    }
                }
                Ok(Flow::Continue)
            })?;
        }
        Ok(got)
    }

    #[test]
    fn any_chunking_gives_the_same_messages() {
        let mut wire = masked(0x1, true, "héllo wörld".as_bytes());
        wire.extend(masked(0x1, false, "frag".as_bytes()));
        wire.extend(masked(0x9, true, b"p"));
        wire.extend(masked(0x0, true, "mented ✓".as_bytes()));
        wire.extend(masked(0x8, true, &1000u16.to_be_bytes()));
        wire.extend(masked(0x1, true, b"after close: ignored"));
        let expected = vec![
            (1, "héllo wörld".as_bytes().to_vec()),
            (9, b"p".to_vec()),
            (1, "fragmented ✓".as_bytes().to_vec()),
            (8, 1000u16.to_be_bytes().to_vec()),
        ];
        for chunk in 1..wire.len() {
            assert_eq!(run(&wire, chunk).unwrap(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        // A 100-byte text frame whose 3rd byte is invalid: rejected from the first 9 bytes.
        let mut payload = b"ab\xffcdefgh".to_vec();
        payload.resize(100, b'x');
        let wire = masked(0x1, true, &payload);
        let mut inbound = Inbound::default();
        let mut first = wire[..9].to_vec();
        let r = inbound.feed(&DECODER, &LIMITS, &mut first, &mut |_| Ok(Flow::Continue));
        assert_eq!(r, Err(Violation::INVALID_UTF8));
        // Split characters across frames and reads are fine.
        let mut wire = masked(0x1, false, &"€".as_bytes()[..1]);
        wire.extend(masked(0x0, true, &"€".as_bytes()[1..]));
        for chunk in 1..wire.len() {
            assert_eq!(run(&wire, chunk).unwrap(), vec![(1, "€".as_bytes().to_vec())]);
        }
        // A message that ends inside a character is invalid.
        assert_eq!(
            run(&masked(0x1, true, &"€".as_bytes()[..2]), 100),
            Err(Violation::INVALID_UTF8)
        );
    }

    #[test]
    fn limits_and_sequence_errors() {
        let mut many = masked(0x1, false, b"a");
        for _ in 0..8 {
            many.extend(masked(0x0, false, b"a"));
        }
        assert_eq!(run(&many, 1000).unwrap_err().code, close_code::POLICY_VIOLATION);
        assert_eq!(
            run(&masked(0x0, true, b"x"), 100).unwrap_err().code,
            close_code::PROTOCOL_ERROR
        );
        let mut nested = masked(0x1, false, b"a");
        nested.extend(masked(0x1, true, b"b"));
        assert_eq!(run(&nested, 100).unwrap_err().code, close_code::PROTOCOL_ERROR);
        assert_eq!(
            run(&masked(0x8, true, &999u16.to_be_bytes()), 100).unwrap_err().code,
            close_code::PROTOCOL_ERROR
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(
            run(&masked(0x8, true, &bad_reason), 100).unwrap_err().code,
            close_code::INVALID_PAYLOAD
        );
        // A hostile declared length is refused from the header alone.
        let huge = [0x81u8, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(run(&huge, 100).unwrap_err().code, close_code::MESSAGE_TOO_BIG);
    }

    /// Found by the `inbound` fuzzer: a new text frame with invalid UTF-8 inside a
    /// fragmented message is a sequencing error (1002) however the bytes are split.
    #[test]
    fn split_reads_do_not_change_the_verdict() {
        let mut wire = masked(0x1, false, b"first part");
        wire.extend(masked(0x1, true, b"\xff\xfe new message"));
        for chunk in 1..=wire.len() {
            assert_eq!(
                run(&wire, chunk).unwrap_err().code,
                close_code::PROTOCOL_ERROR,
                "chunk {chunk}"
            );
        }
        let mut wire = masked(0x1, false, b"a");
        wire.extend(masked(0x0, false, b"b"));
        wire.extend(masked(0x0, false, &[b'c'; 10]));
        let tight = InboundLimits { max_message: 1 << 16, max_fragments: 2 };
        for chunk in 1..=wire.len() {
            let mut inbound = Inbound::default();
            let mut verdict = Ok(());
            for piece in wire.chunks(chunk) {
                verdict = inbound
                    .feed(&DECODER, &tight, &mut piece.to_vec(), &mut |_| Ok(Flow::Continue));
                if verdict.is_err() {
                    break;
                }
            }
            assert_eq!(verdict.unwrap_err().code, close_code::POLICY_VIOLATION, "chunk {chunk}");
        }
    }
}
