//! Config validation through the binary: `ringlb check --config FILE`
//! accepts a good file and rejects each kind of mistake with exit != 0 and
//! `FILE:LINE:COL: message` naming the mistake; `ringlb --config BAD` never
//! starts listening.

use std::ffi::OsStr;
use std::ops::RangeInclusive;

use crate::harness::{run_to_exit, Finished, TempDir};

/// The contract's example config, with a second backend.
const GOOD: &str = r#"[global]
workers = 2
engine = "epoll"
admin = "off"

[[service]]
name = "web"
listen = ["127.0.0.1:0"]
balance = "maglev"
connect_timeout = "500ms"
idle_timeout = "15m"
max_connections = 100
connect_attempts = 3

[service.health]
kind = "tcp"

[[service.backend]]
name = "b1"
address = "127.0.0.1:34567"
weight = 100

[[service.backend]]
name = "b2"
address = "127.0.0.1:34568"
weight = 100
"#;

/// Where in the file the error must point.
enum At {
    /// This exact line (its text, trimmed).
    Line(&'static str),
    /// Any line from the first text's line through the second's (inclusive;
    /// `None` = end of file): for errors about a whole table.
    Between(&'static str, Option<&'static str>),
}

/// One way to get a config wrong.
struct Mistake {
    /// The config text.
    text: String,
    at: At,
    /// Words the message must contain (case-insensitive); each inner list
    /// is "any of these".
    says: &'static [&'static [&'static str]],
}

fn check(text: &str) -> (Finished, String) {
    let dir = TempDir::new("check");
    let path = dir.write("ringlb.toml", text);
    let finished = run_to_exit(&[
        OsStr::new("check"),
        OsStr::new("--config"),
        path.as_os_str(),
    ]);
    (finished, path.display().to_string())
}

/// 1-based number of the line whose trimmed text is `line`.
fn line_of(text: &str, line: &str) -> usize {
    let found: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == line)
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(found.len(), 1, "test setup: `{line}` must occur once");
    found[0]
}

/// Parses `PATH:LINE:COL: message` out of stderr.
fn located_error(stderr: &str, path: &str) -> Option<(usize, usize, String)> {
    stderr.lines().find_map(|l| {
        let rest = &l[l.find(path)? + path.len()..];
        let mut parts = rest.strip_prefix(':')?.splitn(3, ':');
        let line = parts.next()?.parse().ok()?;
        let col = parts.next()?.parse().ok()?;
        let message = parts.next()?.trim().to_owned();
        Some((line, col, message))
    })
}

fn assert_rejected(kind: &str, mistake: Mistake) {
    let (finished, path) = check(&mistake.text);
    let context = format!(
        "{kind}: `ringlb check` on\n{}\nexit {:?}\nstdout: {}\nstderr: {}",
        mistake.text, finished.status, finished.stdout, finished.stderr
    );
    assert!(
        !finished.status.success(),
        "{context}\nexpected a non-zero exit"
    );
    let Some((line, col, message)) = located_error(&finished.stderr, &path) else {
        panic!("{context}\nexpected `{path}:LINE:COL: message` on stderr")
    };
    let lines: Vec<&str> = mistake.text.lines().collect();
    let expected: RangeInclusive<usize> = match mistake.at {
        At::Line(text) => {
            let n = line_of(&mistake.text, text);
            n..=n
        }
        At::Between(first, last) => {
            line_of(&mistake.text, first)..=last.map_or(lines.len(), |l| line_of(&mistake.text, l))
        }
    };
    assert!(
        expected.contains(&line),
        "{context}\nerror points at line {line}, expected line {expected:?}"
    );
    let line_len = lines[line - 1].chars().count();
    assert!(
        (1..=line_len + 1).contains(&col),
        "{context}\ncolumn {col} is outside line {line} ({line_len} characters)"
    );
    let lower = message.to_lowercase();
    for any_of in mistake.says {
        assert!(
            any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
            "{context}\nmessage `{message}` should mention one of {any_of:?}"
        );
    }
}

/// GOOD with `from` (a whole line) replaced by `to`.
fn replaced(from: &str, to: &str) -> String {
    assert_eq!(
        GOOD.matches(from).count(),
        1,
        "test setup: `{from}` must occur once"
    );
    GOOD.replace(from, to)
}

#[test]
fn check_accepts_a_good_config() {
    let (finished, _) = check(GOOD);
    assert!(
        finished.status.success(),
        "good config rejected: exit {:?}\nstderr: {}",
        finished.status,
        finished.stderr
    );
    assert!(
        finished.stdout.contains("ok"),
        "`ringlb check` on a good config should print ok; stdout: {:?}",
        finished.stdout
    );
}

/// A join key shorter than 16 characters is valid but draws a warning
/// (the config stays good: exit 0); a long one draws none.
#[test]
fn check_warns_about_a_short_join_key() {
    let short = GOOD.replacen("[global]\n", "[global]\njoin_key = \"guessable\"\n", 1);
    let (finished, path) = check(&short);
    assert!(
        finished.status.success(),
        "exit {:?}: {}",
        finished.status,
        finished.stderr
    );
    assert!(
        finished.stderr.contains(&format!(
            "{path}:2:12: warning: the join key is 9 characters long"
        )) && finished.stderr.contains("at least 16"),
        "no warning about the short join key; stderr: {:?}",
        finished.stderr
    );
    let long = GOOD.replacen(
        "[global]\n",
        "[global]\njoin_key = \"3f9a1c0d7e2b4a6f8c1d\"\n",
        1,
    );
    let (finished, _) = check(&long);
    assert!(
        finished.status.success(),
        "exit {:?}: {}",
        finished.status,
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("warning"),
        "a 20-character key drew a warning: {:?}",
        finished.stderr
    );
}

#[test]
fn check_rejects_an_unknown_key() {
    assert_rejected(
        "unknown key",
        Mistake {
            text: replaced(
                "connect_attempts = 3\n",
                "connect_attempts = 3\nbogus_key = 1\n",
            ),
            at: At::Line("bogus_key = 1"),
            says: &[&["bogus_key"], &["unknown"]],
        },
    );
}

#[test]
fn check_rejects_a_bad_backend_address() {
    assert_rejected(
        "bad backend address",
        Mistake {
            text: replaced(
                "address = \"127.0.0.1:34568\"",
                "address = \"127.0.0.1:port\"",
            ),
            at: At::Line("address = \"127.0.0.1:port\""),
            says: &[&["address"]],
        },
    );
}

/// The broadcast address, refused by the join API from the start, is
/// refused by the config file too, in the same words.
#[test]
fn check_rejects_a_broadcast_backend_address() {
    assert_rejected(
        "broadcast backend address",
        Mistake {
            text: replaced(
                "address = \"127.0.0.1:34568\"",
                "address = \"255.255.255.255:34568\"",
            ),
            at: At::Line("address = \"255.255.255.255:34568\""),
            says: &[&["255.255.255.255:34568: the broadcast address cannot be connected to"]],
        },
    );
}

/// An IPv4-mapped IPv6 address is the IPv4 address (as for the join API):
/// written both ways, it is one backend address listed twice.
#[test]
fn check_reads_an_ipv4_mapped_backend_address_as_ipv4() {
    assert_rejected(
        "IPv4-mapped backend address",
        Mistake {
            text: replaced(
                "address = \"127.0.0.1:34568\"",
                "address = \"[::ffff:127.0.0.1]:34567\"",
            ),
            at: At::Line("address = \"[::ffff:127.0.0.1]:34567\""),
            says: &[&["127.0.0.1:34567 is already the address of backend \"b1\""]],
        },
    );
}

#[test]
fn check_rejects_a_bad_listen_address() {
    assert_rejected(
        "bad listen address",
        Mistake {
            text: replaced("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1\"]"),
            at: At::Line("listen = [\"127.0.0.1\"]"),
            says: &[&["address"]],
        },
    );
}

#[test]
fn check_rejects_a_duplicate_backend_name() {
    assert_rejected(
        "duplicate backend name",
        Mistake {
            // The second backend (b2's table) is renamed b1.
            text: replaced(
                "name = \"b2\"\naddress = \"127.0.0.1:34568\"",
                "name = \"b1\"\naddress = \"127.0.0.1:34568\"",
            ),
            at: At::Between("address = \"127.0.0.1:34567\"", None),
            says: &[&["duplicate", "already", "unique"], &["b1"]],
        },
    );
}

#[test]
fn check_rejects_a_maglev_table_size_that_is_not_prime() {
    assert_rejected(
        "non-prime maglev_table_size",
        Mistake {
            text: replaced(
                "connect_attempts = 3\n",
                "connect_attempts = 3\nmaglev_table_size = 65536\n",
            ),
            at: At::Line("maglev_table_size = 65536"),
            says: &[&["prime"], &["65536"]],
        },
    );
}

#[test]
fn check_rejects_a_bad_duration() {
    assert_rejected(
        "bad duration",
        Mistake {
            text: replaced(
                "connect_timeout = \"500ms\"",
                "connect_timeout = \"5 parsecs\"",
            ),
            at: At::Line("connect_timeout = \"5 parsecs\""),
            says: &[&["duration", "connect_timeout"]],
        },
    );
}

#[test]
fn check_rejects_a_bad_balance_policy() {
    assert_rejected(
        "bad enum value (balance)",
        Mistake {
            text: replaced("balance = \"maglev\"", "balance = \"random\""),
            at: At::Line("balance = \"random\""),
            // What was wrong, and what is allowed instead.
            says: &[&["random"], &["maglev", "round-robin", "least-conn", "p2c"]],
        },
    );
}

#[test]
fn check_rejects_a_bad_engine() {
    assert_rejected(
        "bad enum value (engine)",
        Mistake {
            text: replaced("engine = \"epoll\"", "engine = \"turbo\""),
            at: At::Line("engine = \"turbo\""),
            says: &[&["turbo"], &["epoll", "uring", "auto"]],
        },
    );
}

/// GOOD without its `[[service.backend]]` tables.
fn without_backends() -> String {
    let cut = GOOD.find("[[service.backend]]").expect("backends in GOOD");
    GOOD[..cut].trim_end().to_owned() + "\n"
}

#[test]
fn check_rejects_an_empty_backend_list() {
    let text = without_backends().replace(
        "connect_attempts = 3\n",
        "connect_attempts = 3\nbackend = []\n",
    );
    assert_rejected(
        "empty backend list (backend = [])",
        Mistake {
            text,
            at: At::Between("[[service]]", Some("backend = []")),
            says: &[&["backend"]],
        },
    );
}

#[test]
fn check_rejects_a_service_without_backends() {
    assert_rejected(
        "empty backend list (no [[service.backend]])",
        Mistake {
            text: without_backends(),
            at: At::Between("[[service]]", None),
            says: &[&["backend"]],
        },
    );
}

#[test]
fn running_with_a_bad_config_exits_without_listening() {
    let dir = TempDir::new("badrun");
    let text = replaced(
        "connect_attempts = 3\n",
        "connect_attempts = 3\nbogus_key = 1\n",
    );
    let path = dir.write("ringlb.toml", &text);
    let finished = run_to_exit(&[OsStr::new("--config"), path.as_os_str()]);
    assert!(
        !finished.status.success(),
        "ringlb --config with an unknown key: exit {:?}, expected non-zero\nstderr: {}",
        finished.status,
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("listening"),
        "ringlb started listening on a bad config:\n{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("bogus_key"),
        "ringlb should say what is wrong with the config:\n{}",
        finished.stderr
    );
}

/// `-c` naming a FIFO or a device: the old binary opened the FIFO and
/// waited for a writer forever (and would read `/dev/zero` until memory
/// ran out). `check` and start-up both answer at once, saying what to do.
#[test]
fn a_config_path_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = TempDir::new("fifo");
    let fifo = dir.path().join("ringlb.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let zero = std::path::Path::new("/dev/zero");
    for (path, kind) in [(fifo.as_path(), "a FIFO"), (zero, "a character device")] {
        for args in [
            &[
                OsStr::new("check"),
                OsStr::new("--config"),
                path.as_os_str(),
            ][..],
            &[OsStr::new("--config"), path.as_os_str()][..],
        ] {
            let start = std::time::Instant::now();
            let finished = run_to_exit(args);
            assert!(
                !finished.status.success(),
                "ringlb {args:?}: exit {:?}",
                finished.status
            );
            assert!(
                finished.stderr.contains("not a regular file")
                    && finished.stderr.contains(kind)
                    && finished.stderr.contains("point -c at the TOML config file"),
                "ringlb {args:?} should say the path is {kind}:\n{}",
                finished.stderr
            );
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "ringlb {args:?} took {:?}",
                start.elapsed()
            );
        }
    }
}

/// A join key file holding a control character (here a NUL before the
/// newline) is refused by `check` and at start-up, pointing at the key;
/// the old binary took the NUL as part of the key.
#[test]
fn a_join_key_file_with_a_control_character_is_refused() {
    let dir = TempDir::new("ctlkey");
    let key = dir.path().join("join.key");
    std::fs::write(&key, b"3f9a1c0d7e2b4a6f8c1d\x00\n").expect("write the key file");
    let text = GOOD.replacen("[global]\n", "[global]\njoin_key_file = \"join.key\"\n", 1);
    let path = dir.write("ringlb.toml", &text);
    for args in [
        &[
            OsStr::new("check"),
            OsStr::new("--config"),
            path.as_os_str(),
        ][..],
        &[OsStr::new("--config"), path.as_os_str()][..],
    ] {
        let finished = run_to_exit(args);
        assert!(
            !finished.status.success(),
            "ringlb {args:?} took a key with a NUL: exit {:?}\nstderr: {}",
            finished.status,
            finished.stderr
        );
        let shown = path.display().to_string();
        let (line, col, message) = located_error(&finished.stderr, &shown)
            .unwrap_or_else(|| panic!("no located error:\n{}", finished.stderr));
        assert_eq!((line, col), (2, 17), "{message}");
        assert!(
            message.contains("control character (U+0000") && message.contains("HTTP header"),
            "{message}"
        );
        assert!(
            !finished.stderr.contains("listening"),
            "ringlb started listening:\n{}",
            finished.stderr
        );
    }
}

/// `ringlb check FILE`, `ringlb check -c FILE` and `ringlb -c FILE check`
/// are the same command (the first two were "unexpected argument" and
/// "--config required" before); the summary counts in words ("1 service").
#[test]
fn check_takes_the_file_in_every_spelling() {
    let dir = TempDir::new("checkargs");
    let path = dir.write("ringlb.toml", GOOD);
    let p = path.as_os_str();
    for args in [
        &[OsStr::new("check"), p][..],
        &[OsStr::new("check"), OsStr::new("-c"), p][..],
        &[OsStr::new("-c"), p, OsStr::new("check")][..],
        &[OsStr::new("--config"), p, OsStr::new("check")][..],
    ] {
        let finished = run_to_exit(args);
        assert!(
            finished.status.success(),
            "ringlb {args:?}: exit {:?}\nstderr: {}",
            finished.status,
            finished.stderr
        );
        assert!(
            finished.stdout.contains(": ok (1 service, 2 backends)"),
            "ringlb {args:?}: {:?}",
            finished.stdout
        );
    }
    let none = run_to_exit(&[OsStr::new("check")]);
    assert!(!none.status.success());
    assert!(
        none.stderr
            .contains("check needs the config file: ringlb check FILE"),
        "{}",
        none.stderr
    );
}

/// Risky but valid settings draw `file:line:col: warning: …` and exit 0;
/// `--strict` makes them fail the check.
#[test]
fn check_warns_about_risky_settings_and_strict_refuses_them() {
    let risky = GOOD
        .replace(
            "admin = \"off\"",
            "admin = \"0.0.0.0:9090\"\nadmin_allow = [\"0.0.0.0/0\"]",
        )
        .replace(
            "kind = \"tcp\"",
            "kind = \"https\"\ninsecure_skip_verify = true",
        );
    let (finished, path) = check(&risky);
    assert!(
        finished.status.success(),
        "warnings failed the check: exit {:?}\n{}",
        finished.status,
        finished.stderr
    );
    let admin = line_of(&risky, "admin = \"0.0.0.0:9090\"");
    let tls = line_of(&risky, "insecure_skip_verify = true");
    for (line, col, words) in [
        (admin, 9, "the admin API listens on 0.0.0.0:9090, admin_allow lets every address in and there is no admin_token"),
        (tls, 24, "service web: the backends' certificates are not verified (insecure_skip_verify = true)"),
    ] {
        let want = format!("{path}:{line}:{col}: warning: {words}");
        assert!(
            finished.stderr.contains(&want),
            "no {want:?} in\n{}",
            finished.stderr
        );
    }
    assert!(
        finished.stdout.contains("2 warnings"),
        "{:?}",
        finished.stdout
    );
    let dir = TempDir::new("strict");
    let kept = dir.write("ringlb.toml", &risky);
    let strict = run_to_exit(&[
        OsStr::new("check"),
        OsStr::new("--strict"),
        kept.as_os_str(),
    ]);
    assert!(
        !strict.status.success(),
        "--strict passed a file with warnings:\n{}",
        strict.stderr
    );
    assert!(
        strict.stderr.contains("2 warnings refused by --strict"),
        "{}",
        strict.stderr
    );
    // The good file passes --strict.
    let good = dir.write("good.toml", GOOD);
    let finished = run_to_exit(&[
        OsStr::new("check"),
        OsStr::new("--strict"),
        good.as_os_str(),
    ]);
    assert!(
        finished.status.success() && !finished.stderr.contains("warning"),
        "exit {:?}\n{}",
        finished.status,
        finished.stderr
    );
}

/// The messages the issue found misleading say what is wrong and what to
/// write instead.
#[test]
fn check_says_what_to_write_instead() {
    /// The file, where the error points, words it must say, words it
    /// must no longer say.
    type Case = (
        String,
        (usize, usize),
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            GOOD.replace("connect_timeout = \"500ms\"", "connect_timeout = \"1.5s\""),
            (line_of(GOOD, "connect_timeout = \"500ms\""), 19),
            &["fractions are not accepted (write \"1500ms\")"],
            &["unit is missing"],
        ),
        (
            // The backends moved above their service.
            format!(
                "[[service.backend]]\nname = \"b1\"\naddress = \"127.0.0.1:34567\"\n\n{}",
                GOOD.replace("[global]\nworkers = 2\nengine = \"epoll\"\nadmin = \"off\"\n", "")
            ),
            (1, 1),
            &["[[service.backend]] comes before any [[service]]", "must follow the [[service]] it belongs to"],
            &["duplicate key", "invalid type"],
        ),
        (
            "[global]\nworkers = 1\n\n[[service.backend]]\nname = \"b1\"\naddress = \"127.0.0.1:1\"\n"
                .to_owned(),
            (4, 1),
            &["must follow the [[service]] it belongs to"],
            &["expected a sequence", "expected an array"],
        ),
        (
            GOOD.replace("address = \"127.0.0.1:34567\"", "address = \"localhost\""),
            (line_of(GOOD, "address = \"127.0.0.1:34567\""), 11),
            &["has no port: write \"localhost:PORT\"", "\"host:port\""],
            &["not a socket address"],
        ),
    ];
    for (text, (line, col), says, not) in cases {
        let (finished, path) = check(&text);
        assert!(!finished.status.success(), "accepted:\n{text}");
        let (l, c, message) = located_error(&finished.stderr, &path)
            .unwrap_or_else(|| panic!("no located error:\n{}", finished.stderr));
        assert_eq!((l, c), (line, col), "{message}");
        for word in says {
            assert!(message.contains(word), "{message:?} does not say {word:?}");
        }
        for word in not {
            assert!(!message.contains(word), "{message:?} still says {word:?}");
        }
    }
}

/// `--help` describes the tool, not the crate (its doc comment said "the
/// ringlb binary: command line, logging, systemd glue").
#[test]
fn help_describes_the_tool() {
    let help = run_to_exit(&[OsStr::new("--help")]);
    assert!(help.status.success(), "{}", help.stderr);
    assert!(
        help.stdout
            .starts_with("ringlb: a sticky layer-4 TCP load balancer for Linux"),
        "{}",
        help.stdout
    );
    assert!(!help.stdout.contains("systemd glue"), "{}", help.stdout);
    for sub in ["check", "demo", "ctl"] {
        assert!(
            help.stdout.contains(&format!("\n  {sub} ")),
            "--help lists no {sub}:\n{}",
            help.stdout
        );
    }
}
