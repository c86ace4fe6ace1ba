//! `corecast-sim`: runs the deterministic simulation (`corecast::sim`) over many seeds, or
//! replays one.
//!
//! ```text
//! corecast-sim --seeds 10000              # seeds 0..10000
//! corecast-sim --for 30m --from 1000000   # an open-ended search, from seed 1000000 on
//! corecast-sim --seed 4711                # one run, replayed exactly
//! ```
//!
//! A broken guarantee prints the seed, what broke, the run's last steps and the command
//! that replays it, and exits 1.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use corecast::sim::{SimConfig, run};

#[derive(Debug, Parser)]
#[command(about = "Deterministic simulation of corecast's stream delivery under faults")]
struct Args {
    /// Replay this one seed (with a longer trace).
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to run, from `--from`.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Run seeds for this long instead of a count (`30m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    r#for: Option<Duration>,
    /// Scheduler steps per run.
    #[arg(long, default_value_t = SimConfig::default().steps)]
    steps: usize,
    /// Nodes per run.
    #[arg(long, default_value_t = SimConfig::default().nodes)]
    nodes: usize,
    /// Percent of steps that inject a fault.
    #[arg(long, default_value_t = SimConfig::default().fault_percent)]
    fault_percent: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut config = SimConfig {
        steps: args.steps,
        nodes: args.nodes.max(1),
        fault_percent: args.fault_percent,
        ..SimConfig::default()
    };
    if let Some(seed) = args.seed {
        config.trace_len = 400;
        return match run(seed, &config) {
            Ok(outcome) => {
                println!("seed {seed}: ok {outcome:?}");
                Ok(())
            }
            Err(violation) => {
                eprintln!("{violation}");
                std::process::exit(1);
            }
        };
    }
    let started = Instant::now();
    let (mut runs, mut steps, mut published, mut reused) = (0u64, 0u64, 0u64, 0u64);
    let mut seed = args.from;
    loop {
        let done = match args.r#for {
            Some(limit) => started.elapsed() >= limit,
            None => seed >= args.from + args.seeds,
        };
        if done {
            break;
        }
        match run(seed, &config) {
            Ok(outcome) => {
                runs += 1;
                steps += outcome.steps;
                published += outcome.published;
                reused += outcome.reused;
            }
            Err(violation) => {
                eprintln!("{violation}");
                std::process::exit(1);
            }
        }
        seed += 1;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{runs} seeds ({}..{seed}) ok in {secs:.1} s: {:.0} seeds/min, {:.0} steps/s, {:.0} simulated events stored/s; {reused} ids handed out again to a publisher that could not know (the documented limit of G5)",
        args.from,
        runs as f64 * 60.0 / secs,
        steps as f64 / secs,
        published as f64 / secs,
    );
    Ok(())
}
