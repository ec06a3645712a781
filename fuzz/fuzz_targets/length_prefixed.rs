#![no_main]
//! The length-prefixed framer: every header size and byte order, the length counting the
//! header or not, max_length 1 to 4095.

use _hamanet::framing::{Framer, FramerSpec};
use hamanet_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let spec = FramerSpec::LengthPrefixed {
        header: [1, 2, 4, 8][usize::from(flags % 4)],
        big_endian: flags & 4 != 0,
        includes_header: flags & 8 != 0,
        max_length: 1 + usize::from(input.u16() % 4095),
    };
    let framer = Framer::new(spec).expect("the target builds a valid framer");
    input.check(&framer);
});
