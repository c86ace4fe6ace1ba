//! Fuzz target: `corecast::fuzz_harness::inbound` (see that function for the invariants).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corecast::fuzz_harness::inbound(data));
