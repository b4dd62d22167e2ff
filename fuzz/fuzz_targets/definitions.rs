//! Pipeline definition files (see `supplystream_fuzz::definitions`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| supplystream_fuzz::definitions(data));
