#![no_main]
//! Fuzz target `admin`: see `understudy::fuzzing::admin`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy::fuzzing::admin(data));
