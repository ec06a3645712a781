#![no_main]
//! The fixed-size framer: messages of 1 to 64 bytes.

use _hamanet::framing::Framer;
use hamanet_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let framer = Framer::Fixed {
        size: 1 + usize::from(input.byte() % 64),
    };
    input.check(&framer);
});
