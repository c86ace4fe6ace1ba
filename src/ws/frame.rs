//! WebSocket frames: the server frames we encode **once** and share, and the
//! decoder for client frames.
//!
//! Runs on: any thread. [`SharedFrame`] is `Send + Sync` (it is a [`Bytes`]) and is
//! the unit of fan-out: it is built once per event and wire format (on the shard
//! that received the event from a client, or later on the Redis thread), crosses to
//! every shard inside an `Arc<Delivery>` (see `xshard`), and each shard wraps it in one
//! `Rc` that every local connection queue clones (non-atomic).
//!
//! The decoder ([`FrameDecoder`]) is sans-I/O: it is handed bytes that the connection
//! read into the shard's scratch buffer and reports complete frames with their payload
//! unmasked in place. It enforces RFC 6455 rules that a server must enforce (client
//! frames masked, no reserved bits or opcodes, control frames short and unfragmented,
//! minimal length encodings) and the configured size limit, so that a hostile peer
//! costs at most `max_message_size` bytes of memory.

use bytes::Bytes;
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

/// A complete server frame (header + unmasked payload), ready to be written to any
/// number of sockets.
pub type SharedFrame = Bytes;

/// Longest server frame header: 2 bytes + 8-byte extended length (no mask).
const MAX_SERVER_HEADER: usize = 10;

/// Encodes a final, unmasked server frame of `opcode` around `payload`, in one
/// allocation.
///
/// # Panics
/// Never: tungstenite's header formatting writes into a `Vec`, which cannot fail.
pub(crate) fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
    let mut out = Vec::with_capacity(MAX_SERVER_HEADER + payload.len());
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    header.format(payload.len() as u64, &mut out).expect("writing into a Vec cannot fail");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Encodes a text frame. `payload` must be valid UTF-8 (it is, when it comes from a `str`).
pub fn encode_text(payload: &str) -> SharedFrame {
    encode(OpCode::Data(Data::Text), payload.as_bytes())
}

/// Encodes a Close frame with `code` and a short `reason` (truncated to fit the
/// 125-byte control-frame limit at a character boundary).
pub(crate) fn encode_close(code: u16, reason: &str) -> SharedFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

/// Encodes a Ping or Pong control frame (payload at most 125 bytes).
pub(crate) fn encode_control(control: Control, payload: &[u8]) -> SharedFrame {
    debug_assert!(payload.len() <= 125);
    encode(OpCode::Control(control), payload)
}

/// WebSocket close codes that corecast sends. Documented in `PROTOCOL.md`.
pub(crate) mod close_code {
    /// Normal closure (reply to a client's close without a code).
    pub(crate) const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// Protocol error: unmasked frame, reserved bits/opcodes, bad fragmentation, bad close frame.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// Binary messages are not part of either protocol.
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    /// Text message that is not UTF-8.
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: the client did not answer heartbeats in time.
    pub(crate) const POLICY_VIOLATION: u16 = 1008;
    /// Message larger than `max_message_size`.
    pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
    /// Try again later: the client did not read its messages fast enough (slow consumer).
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    /// Service restart: the server is going away and the client should reconnect.
    pub(crate) const SERVICE_RESTART: u16 = 1012;
    /// Abnormal closure: never sent, reported when the peer vanished without a Close.
    pub(crate) const ABNORMAL: u16 = 1006;
}

/// One decoded client frame. The payload is a range into the buffer handed to
/// [`FrameDecoder::decode`], already unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedFrame {
    /// FIN bit.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// Start of the payload in the decoded buffer.
    pub payload_start: usize,
    /// End (exclusive) of the payload in the decoded buffer.
    pub payload_end: usize,
}

/// Why a client's bytes are not an acceptable frame. Each maps to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RFC 6455 violation (close 1002); the `&str` says which.
    Protocol(&'static str),
    /// Declared length above the configured limit (close 1009).
    TooBig,
}

impl FrameError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close_code::PROTOCOL_ERROR,
            FrameError::TooBig => close_code::MESSAGE_TOO_BIG,
        }
    }

    /// The close reason sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Protocol(why) => why,
            FrameError::TooBig => "message too big",
        }
    }
}

/// Decodes client frames from a byte buffer. Stateless apart from the limit: message
/// reassembly lives in [`Inbound`](super::inbound::Inbound), because it outlives one read.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    /// Largest payload accepted in one frame, in bytes.
    pub max_frame_payload: usize,
}

/// A client frame header, decoded and checked before its payload has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeaderInfo {
    /// FIN bit.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// Where the payload starts (header + mask key length).
    pub payload_start: usize,
    /// Declared payload length (already checked against the limit).
    pub payload_len: usize,
    /// The masking key.
    pub mask: [u8; 4],
}

impl FrameDecoder {
    /// Decodes and checks the header at the start of `buf`, whether or not the payload
    /// has arrived: so a hostile length or a bad opcode is refused at once.
    ///
    /// # Errors
    /// [`FrameError`] for a frame the server must reject.
    pub fn decode_header(&self, buf: &[u8]) -> Result<Option<FrameHeaderInfo>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let opcode = OpCode::from(b0 & 0x0F);
        match opcode {
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(FrameError::Protocol("reserved opcode"));
            }
            _ => {}
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frame not masked"));
        }
        let short_len = (b1 & 0x7F) as usize;
        let is_control = matches!(opcode, OpCode::Control(_));
        if is_control && (!fin || short_len > 125) {
            return Err(FrameError::Protocol("control frame fragmented or too long"));
        }
        let (len, header_len) = match short_len {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                let len = u16::from_be_bytes([buf[2], buf[3]]) as u64;
                if len < 126 {
                    return Err(FrameError::Protocol("non-minimal length encoding"));
                }
                (len, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(raw);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("64-bit length with the top bit set"));
                }
                if len <= u16::MAX as u64 {
                    return Err(FrameError::Protocol("non-minimal length encoding"));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        if len > self.max_frame_payload as u64 {
            return Err(FrameError::TooBig);
        }
        if buf.len() < header_len + 4 {
            return Ok(None);
        }
        let mask = [buf[header_len], buf[header_len + 1], buf[header_len + 2], buf[header_len + 3]];
        Ok(Some(FrameHeaderInfo {
            fin,
            opcode,
            payload_start: header_len + 4,
            payload_len: len as usize,
            mask,
        }))
    }

    /// Decodes the frame at the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more),
    /// `Ok(Some((frame, consumed)))` with the payload unmasked in place otherwise.
    /// The first `already_unmasked` payload bytes were unmasked earlier (while the frame
    /// was still arriving) and are left alone.
    ///
    /// # Errors
    /// [`FrameError`] for a frame the server must reject; the connection then closes
    /// with [`FrameError::close_code`].
    pub fn decode(
        &self,
        buf: &mut [u8],
        already_unmasked: usize,
    ) -> Result<Option<(DecodedFrame, usize)>, FrameError> {
        let Some(h) = self.decode_header(buf)? else { return Ok(None) };
        let payload_end = h.payload_start + h.payload_len;
        if buf.len() < payload_end {
            return Ok(None);
        }
        let skip = already_unmasked.min(h.payload_len);
        unmask_at(&mut buf[h.payload_start + skip..payload_end], h.mask, skip);
        let frame = DecodedFrame {
            fin: h.fin,
            opcode: h.opcode,
            payload_start: h.payload_start,
            payload_end,
        };
        Ok(Some((frame, payload_end)))
    }
}

/// Unmasks `payload`, which starts `offset` bytes into a frame's payload.
pub(crate) fn unmask_at(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let r = offset % 4;
    unmask(payload, [mask[r], mask[(r + 1) % 4], mask[(r + 2) % 4], mask[(r + 3) % 4]]);
}

/// XORs `payload` with the 4-byte client `mask`, eight bytes at a time.
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mask8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word) ^ mask8;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Client side of the codec, for the load tool and tests: appends a final-or-not frame
/// of `opcode` around `payload`, masked with `mask` as RFC 6455 requires of clients.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) {
    out.push(opcode | if fin { 0x80 } else { 0 });
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
}

/// Client side of the codec: the server frame at the start of `buf` as
/// `(opcode, payload range, bytes used)`, or `None` when it is incomplete.
pub fn decode_unmasked(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at): (usize, usize) = match buf[1] & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(buf.get(2..10)?);
            (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let end = at.checked_add(len)?;
    (buf.len() >= end).then_some((buf[0] & 0x0F, at..end, end))
}

/// Whether `code` may appear in a Close frame sent by a peer (RFC 6455 §7.4).
pub(crate) fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked(&mut out, opcode, fin, payload, [0x11, 0x22, 0x33, 0x44]);
        out
    }

    #[test]
    fn client_codec_round_trips_server_frames() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = encode(OpCode::Data(Data::Text), &vec![b'z'; len]);
            let (opcode, payload, used) = decode_unmasked(&frame).unwrap();
            assert_eq!((opcode, payload.len(), used), (1, len, frame.len()));
            assert_eq!(decode_unmasked(&frame[..frame.len() - 1]), None, "incomplete");
        }
    }

    #[test]
    fn decodes_masked_text_and_reports_partial_input() {
        let decoder = FrameDecoder { max_frame_payload: 1 << 20 };
        let mut wire = masked(0x1, true, b"hello world, unmasked");
        for cut in 0..wire.len() {
            assert_eq!(decoder.decode(&mut wire.clone()[..cut], 0), Ok(None), "cut at {cut}");
        }
        let (frame, used) = decoder.decode(&mut wire, 0).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert!(frame.fin);
        assert_eq!(&wire[frame.payload_start..frame.payload_end], b"hello world, unmasked");
    }

    #[test]
    fn decodes_16_and_64_bit_lengths() {
        let decoder = FrameDecoder { max_frame_payload: 1 << 20 };
        for len in [126usize, 65535, 65536, 100_000] {
            let payload = vec![b'x'; len];
            let mut wire = masked(0x1, true, &payload);
            let h = decoder.decode_header(&wire).unwrap().unwrap();
            assert_eq!(h.payload_start + h.payload_len, wire.len());
            let (frame, _) = decoder.decode(&mut wire, 0).unwrap().unwrap();
            assert_eq!(frame.payload_end - frame.payload_start, len);
            assert!(wire[frame.payload_start..frame.payload_end].iter().all(|&b| b == b'x'));
        }
    }

    #[test]
    fn rejects_what_a_server_must_reject() {
        let decoder = FrameDecoder { max_frame_payload: 1000 };
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert!(matches!(decoder.decode(&mut unmasked, 0), Err(FrameError::Protocol(_))));
        let mut rsv = masked(0x1, true, b"a");
        rsv[0] |= 0x40;
        assert!(matches!(decoder.decode(&mut rsv, 0), Err(FrameError::Protocol(_))));
        let mut reserved_op = masked(0x3, true, b"a");
        assert!(matches!(decoder.decode(&mut reserved_op, 0), Err(FrameError::Protocol(_))));
        let mut fragmented_ping = masked(0x9, false, b"a");
        assert!(matches!(decoder.decode(&mut fragmented_ping, 0), Err(FrameError::Protocol(_))));
        let mut too_big = masked(0x1, true, &[b'a'; 1001]);
        assert_eq!(decoder.decode(&mut too_big, 0), Err(FrameError::TooBig));
        let mut top_bit = vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(decoder.decode(&mut top_bit, 0), Err(FrameError::Protocol(_))));
        let mut non_minimal = vec![0x81, 0xFE, 0x00, 0x05, 1, 2, 3, 4];
        assert!(matches!(decoder.decode(&mut non_minimal, 0), Err(FrameError::Protocol(_))));
    }

    #[test]
    fn server_frames_round_trip_through_tungstenite() {
        let frame = encode_text("{\"a\":1}");
        assert_eq!(&frame[..], b"\x81\x07{\"a\":1}");
        let long = "y".repeat(70_000);
        let frame = encode_text(&long);
        assert_eq!(frame[1], 127);
        assert_eq!(frame.len(), 10 + 70_000);
        let close = encode_close(1013, "slow consumer");
        assert_eq!(&close[..4], &[0x88, 15, 0x03, 0xF5]);
        let long_reason = "é".repeat(100);
        let close = encode_close(1000, &long_reason);
        assert!(close.len() <= 2 + 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }

    #[test]
    fn unmasking_in_two_steps_matches_one() {
        let decoder = FrameDecoder { max_frame_payload: 1 << 20 };
        let text = b"split across reads, unmasked early";
        let wire = masked(0x1, true, text);
        let h = decoder.decode_header(&wire[..9]).unwrap().unwrap();
        let mut buf = wire.clone();
        let early = 7;
        unmask_at(&mut buf[h.payload_start..h.payload_start + early], h.mask, 0);
        let (frame, _) = decoder.decode(&mut buf, early).unwrap().unwrap();
        assert_eq!(&buf[frame.payload_start..frame.payload_end], text);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut fast = original.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = original.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }
}
