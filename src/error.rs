//! The crate's error type, grouped by who is at fault.
//!
//! Runs on: any thread (`Send + Sync`). Connection-level problems never become an
//! [`Error`]: they end one connection with an HTTP status or close code and are logged
//! there (`conn`). This type is for what stops a node from starting or running.

use std::io;

/// What went wrong starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option has a bad value or the config file is unreadable. Fix the
    /// configuration; the node did not start.
    #[error("configuration: {0}")]
    Config(String),

    /// The machine cannot host the node as configured (locked memory, CPUs, open-file
    /// limit). The message says which limit and how to raise it (see `tuning/`).
    #[error("system limit: {0}")]
    System(String),

    /// Binding the listen address failed (in use, not permitted, not local).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `--listen`.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: io::Error,
    },

    /// Starting a shard's executor failed (glommio/io_uring setup).
    #[error("shard {shard} failed to start: {message}")]
    ShardStart {
        /// The shard index.
        shard: usize,
        /// glommio's error text.
        message: String,
    },

    /// A shard thread panicked. This is a bug in corecast; the node stops.
    #[error("shard {0} panicked")]
    ShardPanicked(usize),

    /// Any other I/O failure at the process level.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
