//! The ClientHello reader on real hellos (the committed captures, and
//! fresh ones from openssl and curl at test time, each cross-checked with
//! rustls's own parser) and on every way a first flight can be wrong.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

const OPENSSL_SNI: &[u8] = include_bytes!("../fuzz/corpus/tls_hello/openssl_sni.bin");
const OPENSSL_NO_SNI: &[u8] = include_bytes!("../fuzz/corpus/tls_hello/openssl_no_sni.bin");
const OPENSSL_TLS12: &[u8] = include_bytes!("../fuzz/corpus/tls_hello/openssl_tls12.bin");
const CURL_SNI: &[u8] = include_bytes!("../fuzz/corpus/tls_hello/curl_sni.bin");

fn name_of(data: &[u8]) -> Option<String> {
    match scan(data) {
        Scan::Complete { server_name, .. } => server_name.map(|n| n.as_str().to_owned()),
        other => panic!("not a complete hello: {other:?}"),
    }
}

fn len_of(data: &[u8]) -> usize {
    match scan(data) {
        Scan::Complete { len, .. } => len,
        other => panic!("not a complete hello: {other:?}"),
    }
}

/// The handshake bytes of a one-record hello, put back into records of
/// at most `size` bytes each.
fn rerecord(hello: &[u8], size: usize) -> Vec<u8> {
    let version = [hello[1], hello[2]];
    let mut out = Vec::new();
    for chunk in hello[RECORD_HEADER..].chunks(size) {
        out.push(HANDSHAKE);
        out.extend_from_slice(&version);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A ClientHello record built from its parts (for the malformed cases):
/// `extensions` is the extensions block without its length.
fn hello_with(session_id: &[u8], suites: &[u8], extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]);
    if let Some(ext) = extensions {
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(ext);
    }
    let mut msg = vec![CLIENT_HELLO];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut record = vec![HANDSHAKE, 3, 1];
    record.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    record.extend_from_slice(&msg);
    record
}

/// A server_name extension holding `names` as host_name entries.
fn sni_extension(names: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.push(0);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    ext
}

#[test]
fn the_captured_hellos_are_read_whole_with_their_names() {
    assert_eq!(name_of(OPENSSL_SNI).as_deref(), Some("art.example.com"));
    assert_eq!(name_of(OPENSSL_NO_SNI), None);
    assert_eq!(name_of(OPENSSL_TLS12).as_deref(), Some("xray.example.com"));
    assert_eq!(name_of(CURL_SNI).as_deref(), Some("art.example.com"));
    for hello in [OPENSSL_SNI, OPENSSL_NO_SNI, OPENSSL_TLS12, CURL_SNI] {
        assert_eq!(len_of(hello), hello.len());
        assert_eq!(rustls_name(hello), name_of(hello));
    }
}

#[test]
fn every_prefix_is_incomplete_and_what_follows_is_not_part_of_it() {
    for hello in [OPENSSL_SNI, CURL_SNI] {
        for n in 0..hello.len() {
            assert_eq!(scan(&hello[..n]), Scan::Incomplete, "at {n} bytes");
        }
        let mut more = hello.to_vec();
        more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01application data");
        assert_eq!(scan(&more), scan(hello));
    }
}

#[test]
fn a_hello_split_over_many_records_reads_the_same() {
    for size in [1, 2, 7, 100] {
        let split = rerecord(CURL_SNI, size);
        assert_eq!(len_of(&split), split.len(), "records of {size}");
        assert_eq!(name_of(&split).as_deref(), Some("art.example.com"));
        assert_eq!(rustls_name(&split).as_deref(), Some("art.example.com"));
    }
    // One byte a record: 6 bytes on the wire per handshake byte.
    assert_eq!(
        scan(&rerecord(&hello_with(&[], &[0, 0x2f], None), 1)),
        Scan::Complete {
            len: 6 * (4 + 2 + 32 + 1 + 2 + 2 + 2),
            server_name: None
        }
    );
}

#[test]
fn what_is_not_tls_is_refused_at_its_first_bytes() {
    for first in [
        &b"G"[..],
        b"SSH-2.0-",
        b"\x80\x2e\x01",
        b"\x16\x02",
        b"\x17\x03\x03",
    ] {
        assert_eq!(scan(first), Scan::Refused(Refusal::NotTls), "{first:?}");
    }
    assert_eq!(scan(b""), Scan::Incomplete);
    assert_eq!(scan(b"\x16\x03"), Scan::Incomplete);
}

#[test]
fn malformed_hellos_are_refused() {
    let suites = [0x13, 0x01];
    let good = hello_with(&[], &suites, Some(&sni_extension(&[b"a.example"])));
    assert_eq!(name_of(&good).as_deref(), Some("a.example"));
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("session id of 33", hello_with(&[1; 33], &suites, None)),
        ("odd cipher suites", hello_with(&[], &[1, 2, 3], None)),
        ("no cipher suite", hello_with(&[], &[], None)),
        (
            "a space in the name",
            hello_with(&[], &suites, Some(&sni_extension(&[b"a example"]))),
        ),
        (
            "a trailing dot",
            hello_with(&[], &suites, Some(&sni_extension(&[b"a.example."]))),
        ),
        (
            "an empty name",
            hello_with(&[], &suites, Some(&sni_extension(&[b""]))),
        ),
        (
            "two server_name extensions",
            hello_with(
                &[],
                &suites,
                Some(&[sni_extension(&[b"a"]), sni_extension(&[b"b"])].concat()),
            ),
        ),
        (
            "an extension longer than the block",
            hello_with(&[], &suites, Some(&[0, 0x10, 0, 9, 1])),
        ),
        (
            "a name of 256 bytes",
            hello_with(&[], &suites, Some(&sni_extension(&[&[b'a'; 256]]))),
        ),
    ];
    let mut wrong_type = good.clone();
    wrong_type[RECORD_HEADER] = 2;
    cases.push(("a ServerHello", wrong_type));
    let mut zero_record = good.clone();
    zero_record[3..5].copy_from_slice(&[0, 0]);
    cases.push(("an empty record", zero_record));
    let mut version = good.clone();
    version[2] = 9;
    cases.push(("record version 3.9", version));
    let mut ext_len = good.clone();
    let at = good.len() - sni_extension(&[b"a.example"]).len() - 2;
    ext_len[at + 1] += 1;
    cases.push(("extensions longer than the message", ext_len));
    let mut alert = rerecord(&good, 20);
    alert[25] = 21;
    cases.push(("an alert inside the hello", alert));
    for (what, bytes) in cases {
        assert_eq!(scan(&bytes), Scan::Refused(Refusal::Malformed), "{what}");
    }
    // The first host name is the name; later ones are skipped.
    let two = hello_with(&[], &suites, Some(&sni_extension(&[b"first", b"second"])));
    assert_eq!(name_of(&two).as_deref(), Some("first"));
    // Upper case comes out lower-cased.
    let upper = hello_with(&[], &suites, Some(&sni_extension(&[b"Art.EXAMPLE.com"])));
    assert_eq!(name_of(&upper).as_deref(), Some("art.example.com"));
}

#[test]
fn oversized_hellos_are_refused_from_their_declared_lengths() {
    // A message declared longer than the cap: refused at its header.
    let header = [HANDSHAKE, 3, 1, 0x40, 0x00, CLIENT_HELLO, 0, 0x40, 0x00];
    assert_eq!(scan(&header), Scan::Refused(Refusal::Oversized));
    // Records whose headers run past the cap: a 3 KiB hello (padding
    // extension) one byte a record.
    let mut padding = vec![0, 21, 0x0b, 0xb8];
    padding.resize(4 + 3000, 0);
    let padded = hello_with(&[], &[0x13, 0x01], Some(&padding));
    assert_eq!(len_of(&padded), padded.len());
    let many = rerecord(&padded, 1);
    assert_eq!(scan(&many), Scan::Refused(Refusal::Oversized));
    assert_eq!(
        scan(&many[..MAX_HELLO + 10]),
        Scan::Refused(Refusal::Oversized)
    );
    assert_eq!(scan(&many[..MAX_HELLO - 10]), Scan::Incomplete);
}

/// What rustls's own ClientHello reader finds as the server name.
fn rustls_name(data: &[u8]) -> Option<String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    while !rest.is_empty() {
        acceptor
            .read_tls(&mut rest)
            .expect("rustls reads the records");
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => accepted.client_hello().server_name().map(str::to_owned),
        Ok(None) => panic!("rustls wants more than {} bytes", data.len()),
        Err((e, _)) => panic!("rustls refuses the hello: {e}"),
    }
}

/// Runs `client` against a listener of ours and returns its first
/// flight: what it sent until rustls's reader had a whole ClientHello.
fn capture(client: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Vec<u8>> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let child = Command::new(client)
        .args(args(port))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: {client} is not installed (apt-get install {client})");
        return None;
    };
    let (mut stream, _) = listener.accept().expect("the client connects");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{client}: no whole ClientHello in 10 s");
        stream.set_read_timeout(Some(left)).expect("timeout");
        let n = stream.read(&mut buf).expect("read the first flight");
        assert!(n > 0, "{client} closed after {} bytes", seen.len());
        seen.extend_from_slice(&buf[..n]);
        acceptor.read_tls(&mut &buf[..n]).expect("rustls reads");
        if let Ok(Some(_)) = acceptor.accept() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Some(seen)
}

#[test]
fn hellos_from_openssl_and_curl_at_test_time_agree_with_rustls() {
    let openssl = |extra: &'static [&'static str]| {
        move |port: u16| {
            let mut args = vec![
                "s_client".to_owned(),
                "-connect".to_owned(),
                format!("127.0.0.1:{port}"),
            ];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        }
    };
    // (what, its captured hello if the client is installed, the name).
    type Case<'a> = (&'a str, Option<Vec<u8>>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "openssl, a name",
            capture("openssl", openssl(&["-servername", "Jfrog.Example.COM"])),
            Some("jfrog.example.com"),
        ),
        (
            "openssl, no name",
            capture("openssl", openssl(&["-noservername"])),
            None,
        ),
        (
            "openssl, TLS 1.2 only",
            capture("openssl", openssl(&["-tls1_2", "-servername", "a.b"])),
            Some("a.b"),
        ),
        (
            "curl",
            capture("curl", |port| {
                vec![
                    "-sk".to_owned(),
                    "--max-time".to_owned(),
                    "10".to_owned(),
                    "--resolve".to_owned(),
                    format!("xray.example.com:{port}:127.0.0.1"),
                    format!("https://xray.example.com:{port}/"),
                ]
            }),
            Some("xray.example.com"),
        ),
    ];
    for (what, hello, expected) in cases {
        let Some(hello) = hello else { continue };
        assert_eq!(len_of(&hello), hello.len(), "{what}");
        assert_eq!(name_of(&hello).as_deref(), expected, "{what}");
        let theirs = rustls_name(&hello).map(|n| n.to_ascii_lowercase());
        assert_eq!(theirs.as_deref(), expected, "{what}: rustls");
    }
}
