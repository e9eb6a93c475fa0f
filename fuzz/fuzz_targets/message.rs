#![no_main]
//! Fuzz target `message`: see `understudy::fuzzing::message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy::fuzzing::message(data));
