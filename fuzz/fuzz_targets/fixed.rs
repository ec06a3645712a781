#![no_main]
//! The fixed-size framer: messages of 1 to 64 bytes.

use _hamanet::framing::{Framer, FramerSpec};
use hamanet_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let spec = FramerSpec::Fixed {
        size: 1 + usize::from(input.byte() % 64),
    };
    let framer = Framer::new(spec).expect("the target builds a valid framer");
    input.check(&framer);
});
