//! Confluent-framed Avro as the changelogs topics carry it (see `supplystream_fuzz::decode`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| supplystream_fuzz::decode(
    supplystream_fuzz::Group::Changelogs,
    data
));
