//! Operating-system facts and calls: resource limits, CPU sets, socket options, the
//! non-blocking `sendmsg` and the io_uring batch of sends ([`SendRing`]). The only
//! module allowed `unsafe`.
//!
//! Runs on: the main thread at start-up (limits, CPU set, SIGPIPE) and on shard threads
//! ([`send_vectored`], [`SendRing`], [`process_rss_bytes`]). Only a [`SendRing`] holds
//! state, and it belongs to one shard thread.

use std::{io, io::IoSlice, os::fd::RawFd};

/// The open-files limit after [`raise_nofile_limit`]: `(soft, hard)`.
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
pub(crate) fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = get_rlimit(libc::RLIMIT_NOFILE)?;
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
pub(crate) fn memlock_limit() -> io::Result<u64> {
    let lim = get_rlimit(libc::RLIMIT_MEMLOCK)?;
    Ok(if lim.rlim_cur == libc::RLIM_INFINITY { u64::MAX } else { lim.rlim_cur })
}

/// Makes writes to a closed socket return `EPIPE` instead of killing the process.
/// glommio's own `send` does not pass `MSG_NOSIGNAL`, so this must be process-wide.
pub(crate) fn ignore_sigpipe() {
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

/// One socket's part of a [`SendRing::send_all`] batch: its fd and the bytes to write.
pub type SendJob<'a> = (RawFd, &'a [IoSlice<'a>]);

/// A small io_uring owned by one shard thread, used only to hand the kernel many
/// non-blocking sends in one `io_uring_enter` instead of one `sendmsg` syscall each.
///
/// Every send carries `MSG_DONTWAIT | MSG_NOSIGNAL`, so the kernel completes it during
/// the submission (bytes written or `EAGAIN`, never parked on the socket): when
/// [`send_all`](Self::send_all) returns, every buffer it was given is released.
pub struct SendRing {
    ring: io_uring::IoUring,
    /// One `msghdr` per multi-slice job of the current batch; never reallocated while
    /// the kernel may read it.
    headers: Vec<libc::msghdr>,
    /// Which fds are in the ring's registered-file table, at the slot of the same
    /// number (empty when the kernel refused the table): their sends skip the per-call
    /// file lookup and reference count.
    registered: Vec<bool>,
    /// A submission failed part-way: entries may still point at buffers the caller has
    /// since released, so the ring refuses every further [`send_all`](Self::send_all).
    poisoned: bool,
}

impl std::fmt::Debug for SendRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRing").field("entries", &self.capacity()).finish()
    }
}

impl SendRing {
    /// A ring with room for `entries` sends per submission (rounded up to a power of two
    /// by the kernel). Set up for a single issuer thread; needs no locked memory.
    ///
    /// # Errors
    /// `io_uring_setup` failed (old kernel, `kernel.io_uring_disabled`, seccomp).
    ///
    /// `files` slots are reserved for [`register_socket`](Self::register_socket) (fds
    /// below that number; capped by the open-files limit). 0, or a kernel that refuses
    /// the table, means every send looks its fd up.
    pub fn new(entries: u32, files: u32) -> io::Result<SendRing> {
        let ring = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_submit_all()
            .build(entries.max(1))?;
        let files = u64::from(files).min(open_files_limit()) as u32;
        let registered = if files > 0 && ring.submitter().register_files_sparse(files).is_ok() {
            vec![false; files as usize]
        } else {
            Vec::new()
        };
        Ok(SendRing { ring, headers: Vec::new(), registered, poisoned: false })
    }

    /// Puts a socket in the registered-file table (slot = its fd number). Returns false
    /// when it stays a plain fd (no table, fd beyond it, or the kernel refused). The
    /// table holds a reference to the socket: [`unregister_socket`](Self::unregister_socket)
    /// must run before the fd is closed, or the socket outlives its close.
    pub fn register_socket(&mut self, fd: RawFd) -> bool {
        let Some(slot) = usize::try_from(fd).ok().filter(|&i| i < self.registered.len()) else {
            return false;
        };
        if !self.registered[slot] {
            self.registered[slot] =
                self.ring.submitter().register_files_update(slot as u32, &[fd]).is_ok();
        }
        self.registered[slot]
    }

    /// Takes a socket out of the registered-file table (before its fd is closed).
    pub fn unregister_socket(&mut self, fd: RawFd) {
        if is_registered(&self.registered, fd) {
            // On failure the slot keeps its reference until the ring is dropped; it is
            // not used for sends again.
            let _ = self.ring.submitter().register_files_update(fd as u32, &[-1]);
            self.registered[fd as usize] = false;
        }
    }

    /// Sends per submission.
    pub fn capacity(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Writes each job as one non-blocking send (`send` for one slice, `sendmsg` for
    /// several), at most [`capacity`](Self::capacity) per `io_uring_enter`, and returns
    /// each job's result in `results`, in job order: bytes written, or the error
    /// (`WouldBlock` when the socket is full).
    ///
    /// # Errors
    /// `io_uring_enter` itself failed; `results` then holds what completed. The ring is
    /// then unusable: every later call fails at once without touching the kernel (entries
    /// left in it could point at buffers released since), so the caller falls back to
    /// plain `sendmsg`.
    pub fn send_all(
        &mut self,
        jobs: &[SendJob<'_>],
        results: &mut Vec<io::Result<usize>>,
    ) -> io::Result<()> {
        results.clear();
        if self.poisoned {
            return Err(io::Error::other("io_uring send ring unusable after an earlier failure"));
        }
        // Cleared only when every chunk completed.
        self.poisoned = true;
        self.submit_chunks(jobs, results)?;
        self.poisoned = false;
        Ok(())
    }

    /// The body of [`send_all`](Self::send_all).
    fn submit_chunks(
        &mut self,
        jobs: &[SendJob<'_>],
        results: &mut Vec<io::Result<usize>>,
    ) -> io::Result<()> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let capacity = self.capacity();
        for (chunk_no, chunk) in jobs.chunks(capacity).enumerate() {
            let base = chunk_no * capacity;
            self.headers.clear();
            self.headers.reserve(chunk.len());
            results.extend((0..chunk.len()).map(|_| Err(io::ErrorKind::Interrupted.into())));
            {
                let mut sq = self.ring.submission();
                for (i, (fd, bufs)) in chunk.iter().enumerate() {
                    // One entry shape for a registered slot and for a plain fd (two types).
                    macro_rules! entry_for {
                        ($target:expr) => {
                            if let [one] = bufs {
                                io_uring::opcode::Send::new(
                                    $target,
                                    one.as_ptr(),
                                    one.len().min(u32::MAX as usize) as u32,
                                )
                                .flags(flags)
                                .build()
                            } else {
                                // SAFETY: all-zero is a valid `msghdr` (null name, no
                                // control data).
                                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                                msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                                msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
                                self.headers.push(msg);
                                let header =
                                    self.headers.last().map_or(std::ptr::null(), |h| h as *const _);
                                io_uring::opcode::SendMsg::new($target, header)
                                    .flags(flags as u32)
                                    .build()
                            }
                        };
                    }
                    let entry = if is_registered(&self.registered, *fd) {
                        entry_for!(io_uring::types::Fixed(*fd as u32))
                    } else {
                        entry_for!(io_uring::types::Fd(*fd))
                    };
                    // SAFETY: the entry points at `bufs` (IoSlice is ABI-compatible with
                    // iovec) and at `self.headers`, which was reserved for the whole chunk
                    // so it does not move; both outlive the submission below, and every
                    // send completes during it (MSG_DONTWAIT: no send is parked), which
                    // is checked by waiting for all completions before returning.
                    unsafe { sq.push(&entry.user_data(i as u64)) }
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                }
            }
            let mut done = 0;
            while done < chunk.len() {
                match self.ring.submit_and_wait(chunk.len() - done) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                for cqe in self.ring.completion() {
                    let i = cqe.user_data() as usize;
                    let r = cqe.result();
                    if let Some(slot) = results.get_mut(base + i) {
                        *slot = if r < 0 {
                            Err(io::Error::from_raw_os_error(-r))
                        } else {
                            Ok(r as usize)
                        };
                    }
                    done += 1;
                }
            }
        }
        Ok(())
    }
}

/// Whether `fd` has a slot in a [`SendRing`]'s registered-file table.
fn is_registered(registered: &[bool], fd: RawFd) -> bool {
    usize::try_from(fd).ok().and_then(|i| registered.get(i)).copied().unwrap_or(false)
}

/// The soft open-files limit (file descriptors are below it); 1024 if it cannot be read.
fn open_files_limit() -> u64 {
    get_rlimit(libc::RLIMIT_NOFILE).map_or(1024, |lim| lim.rlim_cur)
}

/// One resource limit of this process.
fn get_rlimit(resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// Sets `SO_SNDBUF` on an accepted socket (the kernel doubles the value).
///
/// # Errors
/// The `setsockopt` error.
pub(crate) fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
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
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

/// Wraps a bound, listening socket in a glommio listener. Must run inside the shard's
/// executor (glommio attaches it to the current reactor).
pub(crate) fn glommio_listener(fd: std::os::fd::OwnedFd) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `fd` is an owned, open, listening TCP socket (built by `server`); ownership
    // moves into the listener, which closes it on drop. Nothing else holds the number.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// The CPU this thread is running on right now.
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Read, os::fd::AsRawFd, os::unix::net::UnixStream};

    #[test]
    fn send_ring_reports_each_job_in_order() {
        let mut ring = SendRing::new(2, 1 << 14).unwrap();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        assert!(ring.register_socket(b.as_raw_fd()), "one of them sends through a fixed slot");
        let (gone, gone_peer) = UnixStream::pair().unwrap();
        drop(gone_peer);
        let (full, _full_peer) = UnixStream::pair().unwrap();
        full.set_nonblocking(true).unwrap();
        let filler = [0u8; 4096];
        while std::io::Write::write(&mut &full, &filler).is_ok() {}

        let one = [IoSlice::new(b"hello")];
        let three = [IoSlice::new(b"a"), IoSlice::new(b"bc"), IoSlice::new(b"def")];
        let jobs: [SendJob<'_>; 4] = [
            (a.as_raw_fd(), &one),
            (b.as_raw_fd(), &three),
            (gone.as_raw_fd(), &one),
            (full.as_raw_fd(), &one),
        ];
        let mut results = Vec::new();
        // Four jobs through a ring of two entries: two submissions.
        ring.send_all(&jobs, &mut results).unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[0].as_ref().unwrap(), &5);
        assert_eq!(results[1].as_ref().unwrap(), &6);
        assert_eq!(results[2].as_ref().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(results[3].as_ref().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let mut got = [0u8; 6];
        a_peer.read_exact(&mut got[..5]).unwrap();
        assert_eq!(&got[..5], b"hello");
        b_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcdef");

        // Unregistered before it is closed, the socket really closes: the peer sees EOF.
        ring.unregister_socket(b.as_raw_fd());
        drop(b);
        b_peer.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        assert_eq!(b_peer.read(&mut got).unwrap(), 0, "EOF after unregister + close");
    }

    /// After `io_uring_enter` fails, the ring refuses to be used again (its queue may
    /// still hold entries pointing at buffers the caller released).
    #[test]
    fn a_failed_ring_refuses_further_batches() {
        use std::os::fd::AsRawFd as _;
        let mut ring = SendRing::new(2, 0).unwrap();
        let (a, _a_peer) = UnixStream::pair().unwrap();
        let one = [IoSlice::new(b"x")];
        let jobs: [SendJob<'_>; 1] = [(a.as_raw_fd(), &one)];
        // Point the ring's descriptor at /dev/null: io_uring_enter then fails.
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: both descriptors are open and owned by this test; dup2 atomically makes
        // the ring's number refer to /dev/null (the ring's mappings stay valid).
        assert!(unsafe { libc::dup2(null.as_raw_fd(), ring.ring.as_raw_fd()) } >= 0);
        let mut results = Vec::new();
        assert!(ring.send_all(&jobs, &mut results).is_err(), "enter on /dev/null fails");
        let again = ring.send_all(&jobs, &mut results).unwrap_err();
        assert!(again.to_string().contains("unusable"), "{again}");
        assert!(results.is_empty(), "nothing was attempted");
    }
}
