//! Half-close: a FIN from one side becomes a shutdown(WR) to the other, and
//! the other direction keeps flowing until its own FIN (DESIGN.md, "TCP
//! semantics are preserved").

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{
    self, client_sources, connect_from, for_each_variant, read_outcome, seeded_bytes, Backend,
    LbConfig, ReadOutcome, Ringlb, LOCALHOST,
};

const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client half-closes after its request; the backend answers only once
/// it has seen that EOF. The whole 1 MiB answer must reach the client,
/// followed by an orderly EOF (not an RST, not a hang).
#[test]
fn backend_replies_after_client_half_closes() {
    let _shared = harness::shared();
    for_each_variant("half_close::client_first", |engine| {
        let request = seeded_bytes(1, 100 * 1024);
        let reply = Arc::new(seeded_bytes(2, 1024 * 1024));
        let (requests_tx, requests) = mpsc::channel();
        let backend = Backend::reply_after_eof("late", Arc::clone(&reply), requests_tx);
        let lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));

        let mut client = connect_from(client_sources()[0], lb.addr()).expect("connect");
        client.write_all(&request).expect("send request");
        client
            .shutdown(Shutdown::Write)
            .expect("client shutdown(Write)");

        let got = requests.recv_timeout(REPORT_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "[{engine}] backend never saw EOF: ringlb did not pass the client's FIN on as \
                 shutdown(WR)"
            )
        });
        assert_eq!(
            got.len(),
            request.len(),
            "[{engine}] backend got {} request bytes before EOF, client sent {}",
            got.len(),
            request.len()
        );
        assert!(got == request, "[{engine}] request bytes corrupted");

        let mut answer = Vec::new();
        let result = client.read_to_end(&mut answer);
        assert!(
            result.is_ok(),
            "[{engine}] client read failed after {} of {} reply bytes: {:?} (expected all \
             bytes, then EOF)",
            answer.len(),
            reply.len(),
            result
        );
        assert_eq!(
            answer.len(),
            reply.len(),
            "[{engine}] reply truncated or padded"
        );
        assert!(answer == *reply, "[{engine}] reply bytes corrupted");
    });
}

/// The backend sends a greeting and shuts down its write side first. The
/// client must see that EOF, yet keep sending; the backend must still
/// receive every byte the client sends afterwards.
#[test]
fn client_keeps_sending_after_backend_half_closes() {
    let _shared = harness::shared();
    for_each_variant("half_close::backend_first", |engine| {
        let (got_tx, got) = mpsc::channel();
        let backend = Backend::spawn("early", LOCALHOST, move |mut s| {
            if s.write_all(b"hello\n").is_err() || s.shutdown(Shutdown::Write).is_err() {
                return;
            }
            let mut received = Vec::new();
            let result = s.read_to_end(&mut received).map(|_| received);
            let _ = got_tx.send(result.map_err(|e| e.kind()));
        });
        let lb = Ringlb::start(&LbConfig::over(engine, &[&backend]));

        let mut client = connect_from(client_sources()[1], lb.addr()).expect("connect");
        let mut greeting = [0u8; 6];
        client.read_exact(&mut greeting).expect("read greeting");
        assert_eq!(&greeting, b"hello\n");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let after_greeting = read_outcome(&mut client, &mut [0u8; 16]);
        assert_eq!(
            after_greeting,
            ReadOutcome::Eof,
            "[{engine}] expected the backend's FIN as EOF right after the greeting"
        );

        // The client's direction is still open: send after seeing EOF.
        let upload = seeded_bytes(3, 256 * 1024);
        for (i, chunk) in upload.chunks(16 * 1024).enumerate() {
            client.write_all(chunk).unwrap_or_else(|e| {
                panic!(
                    "[{engine}] write {i} after the backend's half-close failed: {e}; ringlb \
                     closed the client's still-open direction"
                )
            });
        }
        client
            .shutdown(Shutdown::Write)
            .expect("client shutdown(Write)");

        let received = got
            .recv_timeout(REPORT_TIMEOUT)
            .unwrap_or_else(|_| panic!("[{engine}] backend never saw the client's EOF"))
            .unwrap_or_else(|kind| {
                panic!("[{engine}] backend's read after its half-close failed: {kind:?}")
            });
        assert_eq!(
            received.len(),
            upload.len(),
            "[{engine}] backend received {} of {} bytes sent after its half-close",
            received.len(),
            upload.len()
        );
        assert!(received == upload, "[{engine}] upload corrupted");
        // Both directions are done: the connection ends in order.
        assert_eq!(read_outcome(&mut client, &mut [0u8; 16]), ReadOutcome::Eof);
    });
}
