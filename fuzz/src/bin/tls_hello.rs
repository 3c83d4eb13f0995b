//! afl target `tls_hello`: each input goes to
//! [`lb_core::fuzz_entry::tls_hello`] (persistent mode, one process).
//! See scripts/fuzz.sh --afl.

fn main() {
    afl::fuzz!(|data: &[u8]| lb_core::fuzz_entry::tls_hello(data));
}
