//! Configuration: one flat table of documented options.
//!
//! Runs on: the main thread, once at start-up. [`Config`] is then cloned into every
//! shard (it is `Send + Clone`, plain data).
//!
//! Every option comes, in increasing precedence, from its default, the TOML file named
//! by `--config` / `CORECAST_CONFIG`, the environment (`CORECAST_<NAME>`), and the
//! command line (`--<name>`). [`Config::validate`] checks values and cross-field
//! invariants with messages that name the option. It builds nothing: it reads the secret
//! and key files to check them and keeps none of it.
//!
//! The files, one concern each:
//! - `options`: the table of every option (name, type, default, environment variable,
//!   `--help` text) — the single source of the [`Config`] struct, the CLI flags
//!   ([`ConfigArgs`]), the TOML keys and `--check-config`'s output;
//! - `values` and `endpoints`: the option value types (how each is written and shown);
//!   numbers, choices, names, paths and secrets in the first, addresses and URLs in the
//!   second;
//! - `validate`: the range and cross-field checks;
//! - `secrets`: reading secrets inline or from their files, and the JWT key file;
//! - `cli`: the entry points from a command line ([`Config::from_args`],
//!   [`Config::from_arg_list`], [`fold_repeated_flag`]).
//!
//! Depends only on leaf modules (`duration`, `redis_url`, `error`), `auth` and
//! `history::retention`: the modules above them may all read the configuration.

mod cli;
mod endpoints;
mod options;
mod secrets;
mod validate;
mod values;

// Option types defined beside the code that interprets them, named here too because they
// are the types of public `Config` fields.
pub use crate::auth::permissions::DefaultPermissions;
pub use crate::duration::HumanDuration;
pub use crate::history::retention::HistoryRules;
pub use cli::fold_repeated_flag;
pub use endpoints::{EchoPath, ListenAddr, OptionalAddr, Origins, RedisUrl, UrlList};
pub use options::{Config, ConfigArgs};
pub use values::{
    AutoLimit, ByteSize, Count, CpuChoice, DeliveryMode, Name, OptionalPath, Secret, ShardCount,
};
