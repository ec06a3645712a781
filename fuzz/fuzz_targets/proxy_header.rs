#![no_main]
//! The PROXY protocol header parser: any bytes, however they arrive, never panic and
//! never change their verdict as more come (`_hamanet::proxy::properties`).

use _hamanet::proxy::properties::arrival_does_not_matter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Every prefix is parsed: cut to keep that quadratic check fast. A v2 header's
    // length field still says anything up to 64 KiB, so the large ones are refused here
    // as they would be in full.
    arrival_does_not_matter(&data[..data.len().min(1024)]);
});
