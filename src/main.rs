//! The `corecast` binary: parse options, set up logging, run a node until SIGTERM/SIGINT.
//!
//! Runs on: the main thread, which only waits for signals; the shards run on their own
//! pinned threads.

use std::{io::IsTerminal, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser};
use corecast::config::{Config, ConfigArgs};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};
use tracing::{error, info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corecast: thread-per-core WebSocket fan-out server.
///
/// Starts a node on the embedded bus (single node, no Redis). Every option can also be
/// set with its CORECAST_* environment variable or in the TOML file given by --config;
/// precedence is defaults < file < environment < flags. Logging: RUST_LOG (default info).
#[derive(Debug, Parser)]
#[command(name = "corecast", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // Logs go to stderr; colour only when a person reads them (a terminal), never into a
    // file or a journal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("corecast: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = corecast::config::fold_repeated_flag(std::env::args().collect(), "--webhook-url");
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches)?;
    let cfg = Config::from_args(&cli.config, &matches)?;
    if cli.check_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let server = corecast::start(cfg)?;
    println!("corecast listening on ws://{}/ws/{{user_id}}", server.local_addr());
    if let Some(signal) = signals.forever().next() {
        info!(
            signal,
            "shutdown requested: /readyz answers 503; closing connections with 1012 over the drain period"
        );
    }
    server.shutdown();
    let drain = server.drain_handle();
    std::thread::spawn(move || {
        let mut more = signals.forever();
        if more.next().is_some() {
            warn!("second signal: closing the remaining connections at once");
            drain.close_rest_now();
        }
        if more.next().is_some() {
            warn!("third signal: exiting without draining");
            std::process::exit(130);
        }
    });
    server.join()?;
    info!("stopped cleanly");
    Ok(())
}
