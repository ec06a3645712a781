#![no_main]
//! The delimiter framer: 1 to 4 delimiter bytes, max_length below 1024, with or without
//! keeping the delimiter.

use _hamanet::framing::Framer;
use hamanet_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = 1 + usize::from(input.byte() % 4);
    let mut delimiter = input.bytes(size).to_vec();
    if delimiter.is_empty() {
        delimiter.push(b'\n');
    }
    let framer = Framer::Delimiter {
        delimiter,
        max_length: usize::from(input.u16() % 1024),
        keep: input.byte() & 1 == 1,
    };
    input.check(&framer);
});
