//! The fixed set of seeds `cargo test` runs: the simulation with its default faults must
//! keep every guarantee on each of them. An open-ended search is `corecast-sim --for 30m`.

use corecast::sim::{SimConfig, run};

/// Seeds 0..1000 with the default shape (3 nodes, 6 clients, 2 topics, 400 steps, 4 %
/// faults): every run keeps the contract.
#[test]
fn a_thousand_seeds_keep_the_contract() {
    let config = SimConfig::default();
    for seed in 0..1000 {
        if let Err(violation) = run(seed, &config) {
            panic!("{violation}");
        }
    }
}

/// A run with faults is replayed exactly by its seed (what makes a failure reproducible).
#[test]
fn a_seed_replays_its_run() {
    let config = SimConfig::default();
    let a = run(4711, &config).map(|o| format!("{o:?}")).map_err(|v| v.to_string());
    let b = run(4711, &config).map(|o| format!("{o:?}")).map_err(|v| v.to_string());
    assert_eq!(a, b);
}
