//! The wall clock, read in the units the protocol speaks: Unix seconds (token `exp` and
//! `nbf`, connect-rate seconds) and Unix milliseconds (blocks, presence and stats
//! timestamps, user-count leases).
//!
//! Runs on: any thread. Reads the system clock, nothing else; depends on nothing else in
//! the crate. Pure code takes `now` as an argument and its callers read it here.

/// The current time in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// The current time in Unix milliseconds.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
