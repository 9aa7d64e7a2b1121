#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msgio::fuzz::nats(data));
