//! The last hop: a flush pass writing one 66-byte frame to each of N loopback TCP sockets,
//! with one `sendmsg(2)` per socket vs one `io_uring_enter` per 256 sends
//! ([`corecast::sys::SendRing`] with the sockets in its registered-file table, what a
//! shard does with `--send-batch 256`).
//!
//! Measures the sender's CPU for N = 100 and 1,000 sockets, which on loopback includes
//! the receiver's TCP processing (it runs in the sender's softirq). Leaves out: the
//! receiver's `recv` (the sockets are drained outside the timed part, on the same thread,
//! so no reader is ever woken across cores), fan-out and queueing (`hub_fanout`), and
//! corking several frames into one write (the load tool shows that under load).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::{
    io::{IoSlice, Read},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use corecast::testing::{self as sys, SendRing};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// N connected pairs: (server side we write to, client side we drain).
fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            server.set_nodelay(true).expect("nodelay");
            client.set_nonblocking(true).expect("nonblocking");
            (server, client)
        })
        .collect()
}

fn drain(pairs: &mut [(TcpStream, TcpStream)]) {
    let mut buf = [0u8; 4096];
    for (_, client) in pairs.iter_mut() {
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
    }
}

fn flush_pass(c: &mut Criterion) {
    let frame = corecast::testing::encode_text(&"x".repeat(64));
    let mut group = c.benchmark_group("flush_pass");
    group.measurement_time(Duration::from_secs(4));
    for n in [100usize, 1000] {
        let mut socks = pairs(n);
        let fds: Vec<RawFd> = socks.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let slice = [IoSlice::new(&frame)];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("sendmsg", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for &fd in &fds {
                        sys::send_vectored(fd, &slice).expect("send");
                    }
                    timed += start.elapsed();
                    drain(&mut socks);
                }
                timed
            })
        });
        let mut ring = SendRing::new(256, u32::MAX).expect("io_uring");
        for &fd in &fds {
            ring.register_socket(fd);
        }
        let jobs: Vec<sys::SendJob<'_>> = fds.iter().map(|&fd| (fd, &slice[..])).collect();
        let mut results = Vec::with_capacity(n);
        group.bench_with_input(BenchmarkId::new("io_uring_256", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for chunk in jobs.chunks(256) {
                        ring.send_all(chunk, &mut results).expect("submit");
                    }
                    timed += start.elapsed();
                    assert!(results.iter().all(|r| r.is_ok()), "every send completed");
                    drain(&mut socks);
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, flush_pass);
criterion_main!(benches);
