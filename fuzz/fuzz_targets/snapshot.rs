//! Local snapshot files (see `supplystream_fuzz::snapshot`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| supplystream_fuzz::snapshot(data));
