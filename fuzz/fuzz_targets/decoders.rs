//! AFL++ target: arbitrary bytes into `Transaction::decode` and `Label::decode`.
//!
//! Outside AFL the binary reads one input from stdin, which is how a crash is
//! replayed: `fuzz/target/release/decoders < crash-file`.

fn main() {
    afl::fuzz!(|data: &[u8]| riskstream_fuzz::check(data));
}
