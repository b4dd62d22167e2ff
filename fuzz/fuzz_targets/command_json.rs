//! The HTTP API's JSON commands (see `supplystream_fuzz::command_json`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| supplystream_fuzz::command_json(data));
