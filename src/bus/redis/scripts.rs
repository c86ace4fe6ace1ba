//! How the bridge's Redis calls send its Lua scripts and read the answers: the scripts'
//! SHA-1s, `EVALSHA` (for pipelines), telling a `NOSCRIPT` answer (Redis restarted and
//! forgot them), seconds for their TTL arguments, and pairing a pipeline's replies with
//! what was queued.
//!
//! Runs on: the bridge thread, for its publisher, reads and presence tasks. The scripts
//! themselves are in [`history`] and `presence::script`; the SHAs and `NOSCRIPT` are
//! pure, [`replies`] sends a pipeline and [`load_scripts`] loads them all.

use std::time::Duration;

use fred::{
    interfaces::LuaInterface,
    prelude::{Client, Error as RedisError},
    types::Value,
};
use tracing::debug;

use super::{
    history::{self, PUBLISH_SCRIPT, READ_SCRIPT, REBASE_SCRIPT},
    presence::script::PRESENCE_SCRIPT,
};

/// The SHA-1s of the scripts (EVALSHA).
pub(super) static PUBLISH_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| history::script_sha(PUBLISH_SCRIPT));
pub(super) static READ_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| history::script_sha(READ_SCRIPT));
pub(super) static REBASE_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| history::script_sha(REBASE_SCRIPT));
pub(super) static PRESENCE_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| history::script_sha(PRESENCE_SCRIPT));

/// Loads every script into Redis's script cache (after every publisher connection: a
/// Redis that restarted has forgotten them).
pub(super) async fn load_scripts(publisher: &Client) {
    for script in [PUBLISH_SCRIPT, READ_SCRIPT, REBASE_SCRIPT, PRESENCE_SCRIPT] {
        if let Err(e) = publisher.script_load::<String, _>(script).await {
            debug!(cause = %e.details(), "SCRIPT LOAD failed (retried on NOSCRIPT)");
        }
    }
}

/// `EVALSHA sha numkeys key... arg...` (fred's pipelines have no Lua interface).
pub(super) fn evalsha() -> fred::types::CustomCommand {
    fred::types::CustomCommand::new_static("EVALSHA", fred::types::ClusterHash::FirstKey, false)
}

/// Whether Redis answered that it does not know the script (it restarted): nothing was
/// executed, so the command can be sent again.
pub(super) fn is_noscript(error: &RedisError) -> bool {
    error.details().starts_with("NOSCRIPT")
}

/// Seconds for an EXPIRE (at least 1).
pub(super) fn seconds(d: Duration) -> String {
    d.as_secs().max(1).to_string()
}

/// Sends `pipeline` and pairs each queued command with its reply, in order: a command
/// that could not be queued keeps its error, a missing reply is an error.
pub(super) async fn replies(
    pipeline: fred::clients::Pipeline<Client>,
    queued: Vec<Result<(), RedisError>>,
) -> Vec<Result<Value, RedisError>> {
    let mut results = pipeline.try_all::<Value>().await.into_iter();
    queued
        .into_iter()
        .map(|queued| match queued {
            Err(e) => Err(e),
            Ok(()) => results.next().unwrap_or_else(|| {
                Err(RedisError::new(fred::error::ErrorKind::Unknown, "no reply"))
            }),
        })
        .collect()
}
