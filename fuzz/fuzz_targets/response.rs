//! Fuzz target: the HTTP/1.1 response decoder of the streaming upstream leg, on
//! arbitrary bytes cut into arbitrary reads, then the connection's close.
//!
//! Checks: never a panic; any cutting gives the same head status, body and ending as
//! the whole input in one read; body pieces are never empty and never add up to more
//! than the input; nothing is decoded after the end (`tests/framing/read_response.rs`,
//! shared with the tests).
//!
//! Input layout: byte 0 says whether the request was `HEAD` (low bit), bytes 1..9 seed
//! the read sizes, the rest is what the upstream sent.
//!
//! Run from the crate root: `RUSTC_BOOTSTRAP=1 cargo fuzz run response -- -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/framing/read_response.rs"]
mod read_response;

use read_response::read;

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let head_request = input[0] & 1 == 1;
    let seeds = &input[1..9];
    let wire = &input[9..];
    let whole = read(wire, head_request, &mut std::iter::empty());
    let mut sizes = seeds.iter().cycle().map(|b| usize::from(*b % 64) + 1);
    let cut = read(wire, head_request, &mut sizes);
    assert_eq!(cut, whole, "the cutting changed what was read");
});
