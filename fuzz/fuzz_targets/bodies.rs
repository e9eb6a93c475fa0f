#![no_main]
//! Fuzz target `bodies`: see `understudy::fuzzing::bodies`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy::fuzzing::bodies(data));
