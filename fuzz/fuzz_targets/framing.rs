#![no_main]
//! Fuzz target `framing`: see `understudy::fuzzing::framing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy::fuzzing::framing(data));
