//! afl target `admin`: each input goes to [`lb_core::fuzz_entry::admin`]
//! (persistent mode, one process). See scripts/fuzz.sh --afl.

fn main() {
    afl::fuzz!(|data: &[u8]| lb_core::fuzz_entry::admin(data));
}
