//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`, including every crash
//! that was found and fixed) through the same harness bodies the fuzzer runs, so CI
//! catches regressions without running the fuzzer itself (which needs nightly).

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(result.is_ok(), "{target}: input {} fails", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{target}: the corpus is empty");
}

#[test]
fn handshake_corpus() {
    replay("handshake", corecast::fuzz_harness::handshake);
}

#[test]
fn inbound_corpus() {
    replay("inbound", corecast::fuzz_harness::inbound);
}

#[test]
fn command_corpus() {
    replay("command", corecast::fuzz_harness::command);
}

#[test]
fn out_queue_corpus() {
    replay("out_queue", corecast::fuzz_harness::out_queue);
}

#[test]
fn api_body_corpus() {
    replay("api_body", corecast::fuzz_harness::api_body);
}
