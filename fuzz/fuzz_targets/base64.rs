#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msgio::fuzz::base64(data));
