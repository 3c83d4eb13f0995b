//! Hostile input, target `config`: [`Config::parse`] on mutated TOML.
//! Holds: no panic, an answer in bounded time, and every error that has a
//! position points inside the text (line:col); the errors without one are
//! counted and must be about the file as a whole. Test-only (see
//! `src/fuzz.rs`).

use proptest::prelude::*;

use super::Config;
use crate::fuzz::{config, inputs, position_inside, timed};

/// The valid configs of the corpus.
static VALID: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/config/minimal.toml"),
    include_bytes!("../fuzz/corpus/config/full.toml"),
];

/// [`VALID`] and what afl found (`afl-*`: the queue entries that added
/// the most coverage over the valid ones; `scripts/fuzz.sh --afl`).
static SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/config/minimal.toml"),
    include_bytes!("../fuzz/corpus/config/full.toml"),
    include_bytes!("../fuzz/corpus/config/afl-1.toml"),
    include_bytes!("../fuzz/corpus/config/afl-2.toml"),
    include_bytes!("../fuzz/corpus/config/afl-3.toml"),
    include_bytes!("../fuzz/corpus/config/afl-4.toml"),
    include_bytes!("../fuzz/corpus/config/afl-5.toml"),
    include_bytes!("../fuzz/corpus/config/afl-6.toml"),
];

/// Words the mutator splices in: TOML syntax, the config's keys and the
/// values that reach the file system or the clock.
static DICT: &[&[u8]] = &[
    b"\n[global]\n",
    b"\n[[service]]\n",
    b"\n[[service.backend]]\n",
    b"\n[service.health]\n",
    b"\n[service.health.proxy]\n",
    b"=",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"#",
    b"\\u0000",
    b"\\uD800",
    b"\r\n",
    b"\t",
    b"\xc3\xa9",
    b"\xff",
    b"1e400",
    b"-0",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"nan",
    b"inf",
    b"1979-05-27T07:32:00Z",
    b"\"0s\"",
    b"\"99999999999h\"",
    b"\"1ns\"",
    b"\"1 TiB\"",
    b"\"0.0.0.0:0\"",
    b"\"[::]:65535\"",
    b"\"255.255.255.255:1\"",
    b"\"127.0.0.1:99999\"",
    b"\"::ffff:10.0.0.1\"",
    b"\"0.0.0.0/0\"",
    b"\"10.0.0.0/33\"",
    b"join_key_file = \"/dev/zero\"\n",
    b"join_key_file = \"/dev/null\"\n",
    b"join_key_file = \"/proc/self/mem\"\n",
    b"ca_file = \"/dev/zero\"\n",
    b"workers = ",
    b"pipe_size = ",
    b"weight = ",
    b"state = ",
    b"balance = ",
    b"http_proxy = ",
    b"no_proxy = ",
    b"bounded_load = ",
    b"slow_start = ",
    b"engine = ",
    b"address = ",
    b"listen = ",
    b"kind = \"https\"\n",
    b"kind = \"http\"\n",
    b"rise = ",
    b"fall = ",
    b"max_body = ",
    b"interval = ",
    b"timeout = ",
    b"admin_allow = ",
    b"admin_token = ",
    b"join_key = ",
    b"name = ",
    b"host = ",
    b"sni = ",
    b"path = ",
    b"maglev_table_size = ",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_parse_answers_in_time_and_points_inside(input in inputs(SEEDS, DICT)) {
        let text = String::from_utf8_lossy(&input);
        let parsed = timed("Config::parse", || Config::parse(&text, None))?;
        if let Err(e) = parsed {
            prop_assert!(!e.message.is_empty(), "an empty config error");
            let chars = e.message.chars().count();
            prop_assert!(chars <= 600, "a config error of {chars} characters");
            match (e.line, e.col) {
                (Some(line), Some(col)) => prop_assert!(
                    position_inside(text.as_bytes(), line, col),
                    "{e} points outside the {}-line text", text.lines().count()
                ),
                (None, None) => {}
                _ => prop_assert!(false, "a line without a column or the reverse: {e:?}"),
            }
        }
    }
}

#[test]
fn the_seeds_are_valid_configs() {
    for seed in VALID {
        let text = std::str::from_utf8(seed).expect("seed is UTF-8");
        if let Err(e) = Config::parse(text, None) {
            panic!("seed does not parse: {e}\n{text}");
        }
    }
}

/// Found by the `config` target's dictionary (`join_key_file =
/// "/dev/zero"`): the key file was read whole, so a device or a huge file
/// took all memory. A 64 MiB sparse file stands in for the device: the
/// old code read it and took 64 MiB of NULs as the key.
#[test]
fn a_huge_join_key_file_is_refused_without_reading_it_all() {
    let dir = std::env::temp_dir().join(format!("ringlb-fuzz-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("huge.key");
    let file = std::fs::File::create(&key).expect("create the key file");
    file.set_len(64 << 20).expect("a sparse 64 MiB file");
    let text = format!(
        "[global]\njoin_key_file = {:?}\n\n[[service]]\nname = \"web\"\n\
         listen = [\"127.0.0.1:8080\"]\n\n[[service.backend]]\nname = \"b1\"\n\
         address = \"127.0.0.1:9001\"\n",
        key.display().to_string()
    );
    let parsed = Config::parse(&text, None);
    let _ = std::fs::remove_dir_all(&dir);
    let e = match parsed {
        Ok(c) => panic!(
            "a 64 MiB join key file must be refused; it was taken as a key of {} bytes",
            c.global.join_key.map_or(0, |k| k.len())
        ),
        Err(e) => e,
    };
    assert_eq!((e.line, e.col), (Some(2), Some(17)), "{e}");
    assert!(e.message.contains("longer than 4096 bytes"), "{e}");
}

/// Found by the `config` target (a health `path` of 4 KiB): an error
/// quoted the whole value; line:col locates it, so the message is cut in
/// the middle, keeping the key and the hint.
#[test]
fn an_error_about_a_long_value_is_cut_in_the_middle() {
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\n\n[service.health]\n\
         kind = \"http\"\npath = \"{}\"\n\n[[service.backend]]\nname = \"b1\"\n\
         address = \"127.0.0.1:9001\"\n",
        " /router".repeat(1000)
    );
    let e = match Config::parse(&text, None) {
        Ok(_) => panic!("a path not starting with / is refused"),
        Err(e) => e,
    };
    let chars = e.message.chars().count();
    assert!(
        chars <= 600,
        "an error of {chars} characters: {:.200}",
        e.message
    );
    assert_eq!((e.line, e.col), (Some(7), Some(8)), "{e:.200}");
    assert!(
        e.message.starts_with("services[0].health.path"),
        "{:.200}",
        e.message
    );
}
