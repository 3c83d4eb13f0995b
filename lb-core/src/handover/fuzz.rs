//! Hostile input, target `handover`: the upgrade protocol's messages. The
//! new process reads the old one's JSON batches ([`decode_batch`]); the
//! old process reads the new one's lines (`takeover v1`, `ready`) in
//! [`serve_takeover`], here over a real Unix socket pair. Holds: no panic,
//! an answer within the handover timeout, short errors, a batch that lists
//! exactly the sockets it carries. Test-only (see `src/fuzz.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{decode_batch, serve_takeover, Offer};
use crate::fuzz::{check_message, config, inputs, timed, MAX_MESSAGE};

static SEEDS: &[&[u8]] = &[
    include_bytes!("../fuzz/corpus/handover/batch.json"),
    include_bytes!("../fuzz/corpus/handover/hello.txt"),
    // What afl found (`afl-*`: the queue entries that added the most
    // coverage over the seeds; `scripts/fuzz.sh --afl handover`).
    include_bytes!("../fuzz/corpus/handover/afl-1.txt"),
    include_bytes!("../fuzz/corpus/handover/afl-2.txt"),
    include_bytes!("../fuzz/corpus/handover/afl-3.txt"),
    include_bytes!("../fuzz/corpus/handover/afl-4.txt"),
    include_bytes!("../fuzz/corpus/handover/afl-5.txt"),
];

static DICT: &[&[u8]] = &[
    b"takeover v1\n",
    b"ready\n",
    b"\n",
    b"\r\n",
    b"{\"service\":\"web\",\"addr\":\"127.0.0.1:1\"}",
    b",",
    b"[",
    b"]",
    b"\"more\":true",
    b"\"more\":false",
    b"\"addr\":\"[::1]:0\"",
    b"\"addr\":\"[fe80::1%1]:80\"",
    b"\"addr\":\"1.2.3.4:99999\"",
    b"\\u0000",
    b"\xff",
    b"null",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn batches_list_exactly_the_sockets_they_carry(body in inputs(SEEDS, DICT), fds in 0..4usize) {
        match timed("decode_batch", || decode_batch(&body, fds))? {
            Ok(batch) => prop_assert_eq!(batch.listeners.len(), fds),
            Err(e) => check_message(&e.to_string(), &body)?,
        }
    }
}

proptest! {
    #![proptest_config({
        // Two threads and a socket pair per case: a quarter of the cases.
        let mut c = config();
        c.cases = (c.cases / 4).max(1);
        c
    })]

    #[test]
    fn the_old_side_answers_any_lines_in_time(sent in inputs(SEEDS, DICT)) {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        let peer = std::thread::spawn(move || {
            let mut theirs = theirs;
            let _ = theirs.write_all(&sent);
            let _ = theirs.shutdown(std::net::Shutdown::Write);
            // Drain whatever the old side sends, until it closes.
            let mut sink = Vec::new();
            let _ = theirs.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = theirs.read_to_end(&mut sink);
        });
        let served = timed("serve_takeover", || {
            serve_takeover(ours, &Offer::default(), Duration::from_secs(1))
        })?;
        peer.join().expect("the peer thread");
        if let Err(e) = served {
            let message = e.to_string();
            prop_assert!(message.len() <= MAX_MESSAGE, "an error of {} bytes", message.len());
        }
    }
}

/// Found by the `handover` target: the old process read the first line
/// unbounded and quoted all of it in its error, so whoever could reach the
/// upgrade socket could send one endless line into its memory (and its
/// log). Now a line is at most 64 bytes. The peer offers 16 MiB without a
/// newline; the old code read all of it.
#[test]
fn an_endless_first_line_is_cut_short() {
    let (ours, theirs) = UnixStream::pair().expect("a socket pair");
    let peer = std::thread::spawn(move || {
        let mut theirs = theirs;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 16 << 20 {
            match theirs.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let start = Instant::now();
    let served = serve_takeover(ours, &Offer::default(), Duration::from_secs(2));
    let took = start.elapsed();
    let sent = peer.join().expect("the peer thread");
    let e = served.expect_err("garbage is not a takeover request");
    let message = e.to_string();
    assert!(
        message.len() <= 200,
        "an error of {} bytes after reading {sent} bytes",
        message.len()
    );
    assert!(sent < 16 << 20, "the old side read all {sent} bytes");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// A bad batch's error quoted the message (up to 64 KiB) too.
#[test]
fn a_bad_batch_error_is_short() {
    let body = format!("{{\"listeners\": \"{}\"}}", "z".repeat(60_000));
    let e = decode_batch(body.as_bytes(), 0).expect_err("not a batch");
    assert!(
        e.to_string().len() <= 300,
        "an error of {} bytes",
        e.to_string().len()
    );
}
