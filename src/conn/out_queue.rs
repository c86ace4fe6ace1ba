//! The outbound queue of one connection: the shared frames waiting for its socket, in
//! order, and how much of the first one already went out. Sans-I/O: it hands out the
//! unwritten bytes (as iovecs, or copied) and is told how many were written.
//!
//! Runs on: the connection's shard. `!Send` (`Rc` frames).
//!
//! There is exactly one writer per socket: every byte a connection sends (fan-out
//! frames, replies, pongs, pings, Close) goes through its [`OutQueue`], so frames can
//! never interleave mid-frame. (Writing pre-encoded frames beside a WebSocket library's
//! own writer corrupts streams unless writes are arbitrated at frame boundaries: its read
//! path also writes pongs and close replies, and can leave a half-written frame on
//! `EAGAIN`. One queue per socket is that arbitration.)
//!
//! Frames queued for a socket during one pass of the shard leave in one send (corking, as
//! uWebSockets does). The sends themselves are elsewhere, one place each: the shard's
//! flush pass (`shard::flush`) hands many sockets' sends to the kernel in one
//! `io_uring_enter`, a socket's small frames copied into one buffer;
//! [`io::write_queue_now`](super::io::write_queue_now) (`sendmsg`, one iovec per frame)
//! finishes what a batch left and serves nodes without io_uring; the connection's task
//! writes through glommio when the socket was full. The cost of a send hardly depends on
//! how many frames it carries.
//!
//! Policy: the queue holds at most `outbound_queue_limit` bytes. A frame that would pass
//! it marks the client as a slow consumer (`conn::state`: `Close::SLOW_CONSUMER`).

use std::{collections::VecDeque, io::IoSlice, rc::Rc};

use crate::ws::frame::SharedFrame;

thread_local! {
    /// Bytes every queue of this thread (one shard) wrote: one plain add per write, no
    /// atomic. The shard's heartbeat tick moves it into its `bytes_out` counter.
    static BYTES_WRITTEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The bytes this thread's queues wrote since the last call.
pub(crate) fn take_bytes_written() -> u64 {
    BYTES_WRITTEN.with(|total| total.replace(0))
}

/// Most iovecs handed to one `sendmsg` (far below `UIO_MAXIOV`; enough to carry a
/// whole burst, small enough to live on the stack).
pub(crate) const MAX_IOVECS: usize = 64;

/// Frames waiting to be written to one socket. `repr(C)`: what the fan-out touches per
/// frame (the deque and the byte count) comes first, in one cache line with the
/// connection's other hot fields (see `Conn`).
#[derive(Debug, Default)]
#[repr(C)]
pub struct OutQueue {
    /// Frames in order; the first may be partly written.
    frames: VecDeque<Rc<SharedFrame>>,
    /// Bytes queued and not yet written (the backpressure measure).
    bytes: usize,
    /// Bytes of `frames[0]` already written.
    head_written: usize,
}

impl OutQueue {
    /// Bytes not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// No bytes pending.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Appends a frame.
    pub fn push(&mut self, frame: Rc<SharedFrame>) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops every frame that has not started going out. A partly written head frame
    /// stays: cutting it would corrupt the stream for the Close that follows.
    pub fn drop_unstarted(&mut self) {
        let keep = usize::from(self.head_written > 0);
        while self.frames.len() > keep {
            if let Some(f) = self.frames.pop_back() {
                self.bytes -= f.len();
            }
        }
        self.release_if_idle();
    }

    /// The unwritten bytes of the first [`MAX_IOVECS`] frames, in order (the head frame
    /// without what already went out).
    fn unwritten(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().take(MAX_IOVECS).enumerate().map(|(i, frame)| {
            let start = if i == 0 { self.head_written } else { 0 };
            &frame[start..]
        })
    }

    /// Fills `iov` with the unwritten bytes, in order; returns how many slices it used.
    pub fn iovecs<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (slot, bytes) in iov.iter_mut().zip(self.unwritten()) {
            *slot = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// Frames queued (the first may be partly written).
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Appends a copy of the unwritten bytes (at most [`MAX_IOVECS`] frames) to `out`.
    pub fn copy_into(&self, out: &mut Vec<u8>) {
        self.unwritten().for_each(|bytes| out.extend_from_slice(bytes));
    }

    /// Appends the unwritten bytes to `out` as slices, in order (at most [`MAX_IOVECS`]).
    pub fn extend_iovecs<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        out.extend(self.unwritten().map(IoSlice::new));
    }

    /// Records that `written` bytes went out.
    pub fn advance(&mut self, mut written: usize) {
        BYTES_WRITTEN.with(|total| total.set(total.get() + written as u64));
        self.bytes -= written;
        while written > 0 {
            let Some(head) = self.frames.front() else { break };
            let left = head.len() - self.head_written;
            if written >= left {
                written -= left;
                self.frames.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += written;
                written = 0;
            }
        }
        self.release_if_idle();
    }

    /// An idle connection keeps no queue allocation (idle memory is the product).
    fn release_if_idle(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            self.frames = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(s: &'static str) -> Rc<SharedFrame> {
        Rc::new(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn advance_across_frames_and_partial_head() {
        let mut q = OutQueue::default();
        q.push(frame("abc"));
        q.push(frame("defg"));
        q.push(frame("h"));
        assert_eq!(q.bytes(), 8);
        q.advance(4);
        assert_eq!(q.bytes(), 4);
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        let n = q.iovecs(&mut iov);
        let pending: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(pending, b"efgh");
        q.drop_unstarted();
        assert_eq!(q.bytes(), 3, "partly written head frame is kept");
        q.advance(3);
        assert!(q.is_empty());
    }
}
