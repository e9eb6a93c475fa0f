#![no_main]
//! Fuzz target `server`: see `understudy::fuzzing::server`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy::fuzzing::server(data));
