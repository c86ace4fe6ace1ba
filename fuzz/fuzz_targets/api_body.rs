//! Fuzz target: `corecast::fuzz_harness::api_body` (see that function for the invariants).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corecast::fuzz_harness::api_body(data));
