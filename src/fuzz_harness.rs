//! Bodies of the fuzz targets, shared by `cargo fuzz` (`fuzz/fuzz_targets/*.rs`) and the
//! corpus regression test (`tests/fuzz_corpus.rs`, which CI runs on every change).
//!
//! Runs on: the calling thread; pure functions over bytes. Each function panics when an
//! invariant breaks; that is what the fuzzer looks for.

use std::{collections::VecDeque, io::IoSlice, rc::Rc};

use bytes::Bytes;

use crate::{
    config::{EchoPath, Origins},
    conn::{
        handshake::{self, ECHO_USER, Policy, Request},
        out_queue::{MAX_IOVECS, OutQueue},
    },
    event::Payload,
    protocol::{command, limits::is_valid_user_id},
    ws::{
        frame::FrameDecoder,
        inbound::{Flow, Inbound, InboundFrame, InboundLimits, Violation},
    },
};

/// The HTTP upgrade parser: never panics, never reports more bytes than it was given, and
/// only upgrades valid user ids (or the echo endpoint).
pub fn handshake(data: &[u8]) {
    let echo = EchoPath(Some("/echo".into()));
    let origins = Origins(vec!["https://app.example".into()]);
    let policy = Policy { echo_path: &echo, allowed_origins: &origins };
    if let Some((request, used)) = handshake::parse_request(data, policy) {
        assert!(used <= data.len());
        match request {
            Request::Upgrade { user, accept_key, .. } => {
                assert!(is_valid_user_id(&user) || user == ECHO_USER, "{user:?}");
                assert_eq!(accept_key.len(), 28);
            }
            Request::Reject(r) => assert!((400..600).contains(&r.status)),
            Request::Health | Request::Ready | Request::Live | Request::Metrics => {}
            Request::Asset { asset, .. } => assert!(!asset.body.is_empty()),
            Request::Api(head) => assert!(!head.endpoint.contains('?'), "{:?}", head.endpoint),
        }
    }
}

/// What the inbound reader produced: messages and control frames, then the verdict.
type Outcome = (Vec<(u8, Vec<u8>)>, Result<(), Violation>);

fn run_inbound(wire: &[u8], chunk: usize) -> Outcome {
    let decoder = FrameDecoder { max_frame_payload: 512 };
    let limits = InboundLimits { max_message: 1024, max_fragments: 16 };
    let mut inbound = Inbound::default();
    let mut events = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        let mut piece = piece.to_vec();
        let result = inbound.feed(&decoder, &limits, &mut piece, &mut |frame| {
            match frame {
                InboundFrame::Message { opcode, payload } => {
                    let code = u8::from(tungstenite::protocol::frame::coding::OpCode::Data(opcode));
                    if code == 1 {
                        assert!(
                            std::str::from_utf8(payload).is_ok(),
                            "text delivered only when UTF-8"
                        );
                    }
                    assert!(payload.len() <= limits.max_message);
                    events.push((code, payload.to_vec()));
                }
                InboundFrame::Ping(p) => events.push((9, p.to_vec())),
                InboundFrame::Pong => events.push((10, Vec::new())),
                InboundFrame::Close(code) => {
                    events.push((8, code.to_be_bytes().to_vec()));
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        });
        if result.is_err() {
            return (events, result);
        }
    }
    (events, Ok(()))
}

/// The inbound reader (frames, reassembly, UTF-8, limits): the first byte picks a read
/// size, the rest is the client's byte stream. Reading it whole or in pieces must give
/// the same messages and the same verdict (fail-fast checks may only find errors sooner,
/// never different ones).
pub fn inbound(data: &[u8]) {
    let Some((&seed, wire)) = data.split_first() else { return };
    let chunk = usize::from(seed % 64) + 1;
    let whole = run_inbound(wire, wire.len().max(1));
    let split = run_inbound(wire, chunk);
    assert_eq!(whole, split, "chunk size {chunk} changed the outcome");
}

/// The v1 command parser: never panics; JSON it accepts as `data` re-parses as JSON.
pub fn command(data: &[u8]) {
    let mut text = data.to_vec();
    let mut buffers = simd_json::Buffers::default();
    let payload = match command::parse(&mut text, &mut buffers) {
        Ok(
            command::Command::Publish { payload, .. } | command::Command::Direct { payload, .. },
        ) => payload,
        Ok(command::Command::Broadcast(payload, _)) => payload,
        Ok(
            command::Command::Subscribe { topic: t, .. }
            | command::Command::Unsubscribe(t)
            | command::Command::Presence(t)
            | command::Command::History { topic: t, .. },
        ) => {
            assert!(crate::protocol::limits::is_valid_topic(&t));
            return;
        }
        Ok(command::Command::Refresh { .. }) => return,
        Err(e) => {
            assert!(!e.code.is_empty());
            return;
        }
    };
    if let Payload::Json(raw) = payload {
        let mut again = raw.clone().into_bytes();
        assert!(simd_json::to_borrowed_value(&mut again).is_ok(), "re-encoded data is JSON: {raw}");
    }
}

/// The server API's body parser: never panics; the first byte picks the endpoint (one of
/// the five, or an unknown one), the rest is the body. Whatever it accepts is a valid
/// call: valid topics, users and senders, batch sizes within the limit, Close codes in
/// 4000–4999, idempotency keys scoped to their endpoint.
pub fn api_body(data: &[u8]) {
    use crate::{
        api::{self, ApiCall, MAX_BATCH},
        ids::Route,
        protocol::limits::{is_valid_topic, is_valid_user_id},
    };
    let Some((&pick, body)) = data.split_first() else { return };
    let endpoint =
        ["publish", "broadcast", "direct", "batch", "disconnect", "nope"][pick as usize % 6];
    let check_publish = |p: &api::ApiPublish| {
        assert!(is_valid_user_id(&p.event.sender), "{:?}", p.event.sender);
        match &p.event.route {
            Route::Topic(t) => assert!(is_valid_topic(t)),
            Route::Direct(u) => assert!(is_valid_user_id(u)),
            Route::Broadcast => {}
        }
        assert!(p.options.ack);
        if let Some(key) = &p.options.idempotency_key {
            assert!(key.starts_with("api."), "{key}");
        }
    };
    match api::parse_call(endpoint, body) {
        Ok(ApiCall::Publish(p)) => check_publish(&p),
        Ok(ApiCall::Batch(calls)) => {
            assert!((1..=MAX_BATCH).contains(&calls.len()));
            for call in calls {
                match call {
                    Ok(p) => check_publish(&p),
                    Err(e) => assert_eq!(e.status, 400),
                }
            }
        }
        Ok(ApiCall::Disconnect(d)) => {
            assert!(is_valid_user_id(&d.user));
            assert!((4000..=4999).contains(&d.code));
            assert!(d.reason.len() <= api::MAX_CLOSE_REASON);
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 404), "{e:?}");
            assert!(serde_json::from_str::<serde_json::Value>(&e.to_body()).is_ok());
        }
    }
}

/// The outbound queue (the single writer per socket): a random sequence of pushes,
/// partial writes and slow-consumer drops, checked against a plain byte model. The
/// bytes that leave must be exactly whole frames in order, except that a drop only
/// removes frames that have not started.
pub fn out_queue(data: &[u8]) {
    let mut queue = OutQueue::default();
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut model_head_written = 0usize;
    let mut next_byte = 0u8;
    for op in data.chunks(2) {
        let arg = usize::from(*op.get(1).unwrap_or(&0));
        match op[0] % 3 {
            0 => {
                let frame: Vec<u8> = (0..arg + 1)
                    .map(|_| {
                        next_byte = next_byte.wrapping_add(1);
                        next_byte
                    })
                    .collect();
                queue.push(Rc::new(Bytes::from(frame.clone())));
                model.push_back(frame);
            }
            1 => {
                let pending: usize = model.iter().map(Vec::len).sum::<usize>() - model_head_written;
                let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                let n = queue.iovecs(&mut iov);
                let offered: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
                let expected: Vec<u8> = model
                    .iter()
                    .take(MAX_IOVECS)
                    .enumerate()
                    .flat_map(|(i, f)| {
                        f[if i == 0 { model_head_written } else { 0 }..].iter().copied()
                    })
                    .collect();
                assert_eq!(offered, expected, "iovecs carry the unwritten bytes in order");
                let written = arg.min(offered.len());
                queue.advance(written);
                let mut left = written;
                while left > 0 {
                    let head_left = model[0].len() - model_head_written;
                    if left >= head_left {
                        left -= head_left;
                        model.pop_front();
                        model_head_written = 0;
                    } else {
                        model_head_written += left;
                        left = 0;
                    }
                }
                assert_eq!(queue.bytes(), pending - written);
            }
            _ => {
                queue.drop_unstarted();
                let keep = usize::from(model_head_written > 0);
                model.truncate(keep);
            }
        }
        let pending: usize = model.iter().map(Vec::len).sum::<usize>() - model_head_written;
        assert_eq!(queue.bytes(), pending);
        assert_eq!(queue.is_empty(), model.is_empty());
    }
}
