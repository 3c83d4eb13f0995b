//! afl target `join`: each input goes to [`lb_core::fuzz_entry::join`]
//! (persistent mode, one process). See scripts/fuzz.sh --afl.

fn main() {
    afl::fuzz!(|data: &[u8]| lb_core::fuzz_entry::join(data));
}
