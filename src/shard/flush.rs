//! The flush pass: writes every dirty connection's queue, all its frames in one send,
//! through the shard's io_uring in batches (or one `sendmsg` each).
//!
//! Runs on: its shard (the ring is set up on the shard's thread, its only submitter).
//! Upstream: the dirty list in the shard's context, filled by whoever queued frames (the
//! inbox's fan-out, the heartbeat, replies). Downstream: the sockets; what a batch does
//! not finish (a full socket, a closing connection) is handed to the connection itself
//! (`Conn::flush_now`).

use std::{cell::RefCell, os::fd::RawFd, rc::Rc};

use tracing::warn;

use crate::{
    conn::{Conn, ShardContext},
    stats::ShardStats,
    sys,
};

/// Largest queue that a batch copies into one contiguous buffer: a few small frames are
/// cheaper to copy once and hand the kernel as one `send` than as a `sendmsg` with an
/// iovec per frame (the kernel copies the bytes either way).
const COALESCE_MAX_BYTES: usize = 16 << 10;

/// The shard's writer of flush passes.
#[derive(Debug, Default)]
pub(super) struct Flusher {
    /// The io_uring that carries a flush pass's sends in batches (`None`: one `sendmsg`
    /// per socket, by configuration or because io_uring could not be set up or failed).
    ring: RefCell<Option<sys::SendRing>>,
    /// Where a flush pass coalesces each socket's small frames into one buffer.
    staging: RefCell<Vec<u8>>,
}

impl Flusher {
    /// Sets up the send ring when `send_batch > 0`. Must run on the shard's thread.
    pub(super) fn start_ring(&self, ctx: &ShardContext) {
        if ctx.cfg.send_batch == 0 {
            return;
        }
        // Every fd below the open-files limit gets a registered-file slot.
        match sys::SendRing::new(ctx.cfg.send_batch as u32, u32::MAX) {
            Ok(ring) => *self.ring.borrow_mut() = Some(ring),
            Err(e) => {
                warn!(shard = %ctx.id, cause = %e, "io_uring unavailable; one sendmsg per socket")
            }
        }
    }

    /// Puts a new connection's socket in the ring's file table.
    pub(super) fn register_socket(&self, fd: RawFd) {
        if fd >= 0
            && let Some(ring) = self.ring.borrow_mut().as_mut()
        {
            ring.register_socket(fd);
        }
    }

    /// Takes a socket out of the ring's file table (before it is closed).
    pub(super) fn unregister_socket(&self, fd: RawFd) {
        if let Some(ring) = self.ring.borrow_mut().as_mut() {
            ring.unregister_socket(fd);
        }
    }

    /// Writes the first `max` connections of the dirty list (all queued frames of each in
    /// one send): through the shard's io_uring, `send_batch` sockets per
    /// `io_uring_enter`, or with one `sendmsg` each. Returns whether connections are
    /// still waiting.
    pub(super) fn flush_some(&self, ctx: &ShardContext, max: usize) -> bool {
        let slice: Vec<Rc<Conn>> = {
            let mut list = ctx.dirty.borrow_mut();
            let n = max.min(list.len());
            list.drain(..n).collect()
        };
        let mut ring = self.ring.borrow_mut();
        if let Some(r) = ring.as_mut()
            && let Err(e) = flush_batched(r, &mut self.staging.borrow_mut(), &slice, ctx.stats())
        {
            // The ring refuses further use after a failure: fall back for good.
            warn!(shard = %ctx.id, cause = %e, "io_uring send batch failed; using sendmsg from now on");
            *ring = None;
        }
        drop(ring);
        for conn in &slice {
            if conn.is_dirty() {
                conn.flush_now();
            }
        }
        let mut list = ctx.dirty.borrow_mut();
        if list.is_empty() && list.capacity() > 1 << 16 {
            // A one-off burst must not pin a large list for the shard's lifetime.
            *list = std::collections::VecDeque::new();
        }
        !list.is_empty()
    }
}

/// Writes the dirty connections' queues through `ring` in batches and records what each
/// send wrote; [`Conn::flush_now`] then finishes each one's job. Connections the batch
/// skips (their task waits for the socket) stay marked dirty.
///
/// A queue of several frames, up to [`COALESCE_MAX_BYTES`], is copied into `staging` so
/// that every socket gets a single-buffer send, as uWebSockets' cork buffer does.
fn flush_batched(
    ring: &mut sys::SendRing,
    staging: &mut Vec<u8>,
    dirty: &[Rc<Conn>],
    stats: &ShardStats,
) -> std::io::Result<()> {
    let mut results = Vec::new();
    for chunk in dirty.chunks(ring.capacity()) {
        // A connection can be on the list twice (flushed by its task, then dirtied
        // again): clearing `dirty` as it is picked keeps it to one send per pass.
        let ready: Vec<&Rc<Conn>> =
            chunk.iter().filter(|c| c.batch_writable()).inspect(|c| c.clear_dirty()).collect();
        if ready.is_empty() {
            continue;
        }
        let states: Vec<_> = ready.iter().map(|c| c.state()).collect();
        // First every copy (the staging buffer must not move once slices point into it).
        staging.clear();
        let staged: Vec<Option<std::ops::Range<usize>>> = states
            .iter()
            .map(|s| {
                let q = s.out();
                (q.frame_count() > 1 && q.bytes() <= COALESCE_MAX_BYTES).then(|| {
                    let start = staging.len();
                    q.copy_into(staging);
                    start..staging.len()
                })
            })
            .collect();
        let mut slices = Vec::with_capacity(states.len());
        let mut spans = Vec::with_capacity(states.len());
        for (s, staged) in states.iter().zip(&staged) {
            let start = slices.len();
            match staged {
                Some(range) => slices.push(std::io::IoSlice::new(&staging[range.clone()])),
                None => s.out().extend_iovecs(&mut slices),
            }
            spans.push(start..slices.len());
        }
        let jobs: Vec<sys::SendJob<'_>> =
            ready.iter().zip(&spans).map(|(c, span)| (c.fd(), &slices[span.clone()])).collect();
        let outcome = ring.send_all(&jobs, &mut results);
        ShardStats::add(&stats.batched_sends, jobs.len() as u64);
        // A chunk is at most the ring's capacity: one `io_uring_enter`.
        ShardStats::add(&stats.send_batches, 1);
        drop(jobs);
        drop(slices);
        drop(states);
        for (conn, result) in ready.iter().zip(&results) {
            if let Ok(written) = result {
                conn.record_written(*written);
            }
        }
        // What the batch did not finish: a closing connection whose queue is now empty,
        // a short write, `EAGAIN` or an error; `flush_now` handles each (a syscall only
        // where bytes remain).
        for conn in &ready {
            conn.flush_now();
        }
        outcome?;
    }
    // A burst of large queues must not pin a large buffer for the shard's lifetime.
    if staging.capacity() > 4 << 20 {
        *staging = Vec::new();
    }
    Ok(())
}
