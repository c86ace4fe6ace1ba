//! Operating-system facts and calls: resource limits, CPU sets, socket options and the
//! batched non-blocking `sendmsg`. The only module allowed `unsafe`.
//!
//! Runs on: the main thread at start-up (limits, CPU set, SIGPIPE) and on shard threads
//! ([`send_vectored`], [`process_rss_bytes`]). Nothing here holds state.

use std::{io, io::IoSlice, os::fd::RawFd};

/// The open-files limit after [`raise_nofile_limit`]: `(soft, hard)`.
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid `rlimit`; raising the soft limit up to the hard limit
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The soft locked-memory limit in bytes (`u64::MAX` when unlimited).
///
/// # Errors
/// The `getrlimit` error.
pub fn memlock_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if lim.rlim_cur == libc::RLIM_INFINITY { u64::MAX } else { lim.rlim_cur })
}

/// Makes writes to a closed socket return `EPIPE` instead of killing the process.
/// glommio's own `send` does not pass `MSG_NOSIGNAL`, so this must be process-wide.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions and no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// One non-blocking `sendmsg(fd, bufs, MSG_DONTWAIT | MSG_NOSIGNAL)`.
///
/// Returns the bytes written, or `WouldBlock` when the socket buffer is full.
/// At most `UIO_MAXIOV` slices are passed; the caller loops on a short write.
///
/// # Errors
/// The socket error (`EPIPE`, `ECONNRESET`, …) or `WouldBlock`.
pub fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let iovlen = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: all-zero is a valid `msghdr` (null name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is documented to be ABI-compatible with `struct iovec` on Unix; the
    // kernel only reads through these pointers during the call.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovlen as _;
    // SAFETY: `msg` points at `iovlen` valid iovecs borrowed for the duration of the call;
    // `fd` is owned by the caller's connection, which is still registered (not closed).
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Sets `SO_SNDBUF` on an accepted socket (the kernel doubles the value).
///
/// # Errors
/// The `setsockopt` error.
pub fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: `value` is a live c_int and its size is passed; `fd` is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Resident set size of this process in bytes (from `/proc/self/statm`).
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// The CPUs this process may run on, in order (respects cpusets and `taskset`,
/// which glommio's own topology ignores).
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

/// Wraps a bound, listening socket in a glommio listener. Must run inside the shard's
/// executor (glommio attaches it to the current reactor).
pub fn glommio_listener(fd: std::os::fd::OwnedFd) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `fd` is an owned, open, listening TCP socket (built by `server`); ownership
    // moves into the listener, which closes it on drop. Nothing else holds the number.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// The CPU this thread is running on right now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Hands a connected std `TcpStream` to the current glommio executor (the load tool binds
/// source addresses with socket2, which glommio's own `connect` cannot). Must run inside
/// a glommio executor.
pub fn glommio_stream(stream: std::net::TcpStream) -> std::io::Result<glommio::net::TcpStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    stream.set_nonblocking(true)?;
    // SAFETY: `stream` is an owned, open, connected TCP socket; `into_raw_fd` gives up
    // ownership, which the glommio stream takes over (it closes the fd on drop).
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(stream.into_raw_fd()) })
}
