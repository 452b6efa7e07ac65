//! Fuzz target: arbitrary text as `gateway.yaml`. Loading must never panic, and every
//! rejection must say where (a line and column, or a key path) and what.
//!
//! Run from the crate root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run config_load fuzz/corpus/config_load tests/fixtures/configs -- -max_total_time=300`
#![no_main]

use sse_gateway::config::GatewayConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env = |name: &str| (name == "SET").then(|| "value".to_owned());
    if let Err(errors) = GatewayConfig::parse(&text, "fuzz.yaml", &env) {
        assert!(!errors.errors.is_empty(), "a rejection lists its problems");
        for error in &errors.errors {
            assert!(
                !error.message.is_empty(),
                "every problem says what is wrong"
            );
        }
        // Display must not panic either: it is what operators read.
        let _ = errors.to_string();
    }
});
