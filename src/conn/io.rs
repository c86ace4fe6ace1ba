//! The socket side of a connection's task: one poll reacts to readability (frames are
//! read into the shard's scratch buffer, so an idle connection owns no read buffer), to
//! writability when the queue could not be flushed at once, and to the close deadline.
//! Also the connection's own synchronous write ([`write_queue_now`]), which
//! [`Conn::flush_now`] uses outside a flush pass.
//!
//! Runs on: the connection's shard, inside its task (`shard::session` drives the loop and
//! acts on what a step produced: events for the bus).

use std::{
    future::{Future, poll_fn},
    io::{self, IoSlice},
    os::fd::RawFd,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Instant,
};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::{net::TcpStream, timer::Timer};

use super::{
    Conn, ShardContext, Subscriptions, dispatch,
    out_queue::{MAX_IOVECS, OutQueue},
    state::Phase,
};
use crate::sys;

/// What one step of the serve loop produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Input was handled; events may wait in the connection ([`Conn::take_events`]).
    Progress,
    /// The connection is finished: drop it.
    Done,
}

/// The task's own I/O state between steps.
#[derive(Debug, Default)]
pub(crate) struct IoState {
    /// Armed once a close has a deadline.
    close_timer: Option<Timer>,
    /// FIN sent after our Close.
    half_closed: bool,
}

/// Waits for the next thing to do on the socket and does it.
///
/// # Cancel safety
/// Cancel-safe: input is handled inside the poll that read it.
pub(crate) async fn next_step(
    ctx: &ShardContext,
    conn: &Rc<Conn>,
    subs: &dyn Subscriptions,
    stream: &mut TcpStream,
    io: &mut IoState,
) -> Step {
    poll_fn(|cx| poll_step(ctx, conn, subs, stream, cx, io)).await
}

fn poll_step(
    ctx: &ShardContext,
    conn: &Rc<Conn>,
    subs: &dyn Subscriptions,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    io: &mut IoState,
) -> Poll<Step> {
    conn.register_waker(cx);
    if conn.phase() == Phase::Abort {
        return Poll::Ready(Step::Done);
    }
    if conn.write_blocked.get() {
        match poll_write_queue(conn, stream, cx) {
            Poll::Ready(Ok(())) => conn.write_blocked.set(false),
            Poll::Ready(Err(_)) => return Poll::Ready(Step::Done),
            Poll::Pending => {}
        }
    }
    let phase = conn.phase();
    if phase != Phase::Open {
        if !io.half_closed && !conn.write_blocked.get() && conn.state().ready_to_half_close() {
            // Our Close is on the wire: send FIN after it, keep reading until the
            // client's Close/EOF so that unread input never turns our close into a RST.
            let _ = stream.poll_shutdown(cx, std::net::Shutdown::Write);
            io.half_closed = true;
        }
        if phase == Phase::PeerClosed && io.half_closed {
            return Poll::Ready(Step::Done);
        }
        if let Some(deadline) = conn.state().close_deadline() {
            let timer = io.close_timer.get_or_insert_with(|| {
                Timer::new(deadline.saturating_duration_since(Instant::now()))
            });
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Step::Done);
            }
        }
    }
    let mut scratch = ctx.scratch.borrow_mut();
    match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Step::Done),
        Poll::Ready(Ok(n)) => {
            if matches!(conn.phase(), Phase::Open | Phase::Closing) {
                dispatch::handle_input(ctx, conn, subs, &mut scratch[..n]);
            }
            Poll::Ready(Step::Progress)
        }
        Poll::Pending => Poll::Pending,
    }
}

/// Writes the queue through glommio, which registers for writability when the socket
/// is full (the shard's non-blocking pass handed over to us).
fn poll_write_queue(
    conn: &Conn,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let mut state = conn.state.borrow_mut();
        let out = state.out_mut();
        if out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        let n = out.iovecs(&mut iov);
        match Pin::new(&mut *stream).poll_write_vectored(cx, &iov[..n]) {
            Poll::Ready(Ok(written)) => out.advance(written),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Writes as much of `out` to socket `fd` as it takes without blocking (`sendmsg`, one
/// iovec per frame).
///
/// Returns `Ok(true)` when the queue is empty, `Ok(false)` when the socket is full.
///
/// # Errors
/// The socket error (peer gone).
pub(crate) fn write_queue_now(out: &mut OutQueue, fd: RawFd) -> io::Result<bool> {
    loop {
        if out.is_empty() {
            return Ok(true);
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        let n = out.iovecs(&mut iov);
        match sys::send_vectored(fd, &iov[..n]) {
            Ok(written) => out.advance(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn writes_to_a_real_socket() {
        use std::{io::Read, os::fd::AsRawFd};
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut q = OutQueue::default();
        q.push(Rc::new(Bytes::from_static(b"hello ")));
        q.push(Rc::new(Bytes::from_static(b"world")));
        assert!(write_queue_now(&mut q, a.as_raw_fd()).unwrap());
        let mut got = [0u8; 11];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
    }
}
