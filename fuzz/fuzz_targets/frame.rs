#![no_main]
//! Any bytes given to the frame and envelope decoder: never a panic, never
//! an allocation beyond the frame limit, and whatever decodes re-encodes to
//! the same frame.

use libfuzzer_sys::fuzz_target;
use vektagraf_fuzz::proto::wire::{decode_frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_frame::<Request>(data) {
        let again = env.to_frame().expect("a decoded envelope encodes");
        let back = decode_frame::<Request>(&again).expect("and decodes again");
        assert_eq!(back, env);
    }
    let _ = decode_frame::<Response>(data);
});
