#![no_main]
//! Any bytes given to the frame and envelope decoder: never a panic, never
//! a stack overflow on a stack the size of the server's worker threads,
//! never an allocation beyond the decode limits, and whatever decodes
//! re-encodes to the same frame.

use libfuzzer_sys::fuzz_target;
use vektagraf_fuzz::proto::wire::{decode_frame, Request, Response};

/// Tokio's worker threads run with 2 MiB stacks; the server decodes there.
const SERVER_STACK: usize = 2 << 20;

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    std::thread::Builder::new()
        .stack_size(SERVER_STACK)
        .spawn(move || {
            if let Ok(env) = decode_frame::<Request>(&data) {
                let again = env.to_frame().expect("a decoded envelope encodes");
                let back = decode_frame::<Request>(&again).expect("and decodes again");
                assert_eq!(back, env);
            }
            let _ = decode_frame::<Response>(&data);
        })
        .expect("spawn")
        .join()
        .expect("decoder thread panicked");
});
