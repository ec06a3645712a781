#![no_main]
//! The delimiter framer: 1 to 4 delimiter bytes, max_length 1 to 1023, with or without
//! keeping the delimiter.

use _hamanet::framing::{Framer, FramerSpec};
use hamanet_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = 1 + usize::from(input.byte() % 4);
    let mut delimiter = input.bytes(size).to_vec();
    if delimiter.is_empty() {
        delimiter.push(b'\n');
    }
    let spec = FramerSpec::Delimiter {
        delimiter,
        max_length: 1 + usize::from(input.u16() % 1023),
        keep: input.byte() & 1 == 1,
    };
    let framer = Framer::new(spec).expect("the target builds a valid framer");
    input.check(&framer);
});
