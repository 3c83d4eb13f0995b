//! Zero-downtime binary upgrade: a running ringlb hands its listening
//! sockets to a new ringlb over a Unix socket, then drains and exits.
//!
//! The new process gets the very same sockets (`SCM_RIGHTS`), so
//! connections already queued in them are accepted by the new process:
//! nothing is refused or reset during the switch. The old process keeps
//! serving its established connections until they end (or its
//! `shutdown_timeout`).
//!
//! Protocol, one connection, client = the new process:
//! 1. new → old: `takeover v1\n`
//! 2. old → new: one message per batch of at most [`FDS_PER_MESSAGE`]
//!    sockets: a JSON body `{"listeners":[{"service":"…","addr":"…"},…],
//!    "more":bool}` with the sockets attached in the same order;
//! 3. new → old: `ready\n` once it accepts on them; the old process then
//!    stops accepting and drains. If the new process dies before `ready`,
//!    the old one simply goes on serving.
//!
//! The old side runs on the control-plane thread (tokio); the new side runs
//! at start-up on the main thread (blocking, with timeouts).

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use socket2::Socket;

/// Sockets passed per message (the kernel allows 253).
pub(crate) const FDS_PER_MESSAGE: usize = 128;
const HELLO: &str = "takeover v1";
const READY: &str = "ready";
/// Room for one message's JSON body.
const BODY_MAX: usize = 64 * 1024;
/// Longest line read from the new process (`takeover v1`, `ready`).
const LINE_MAX: u64 = 64;

/// A listening socket received from another process (upgrade) or from
/// systemd (socket activation).
#[derive(Debug)]
pub struct Inherited {
    /// The service it served, when known (systemd doesn't say).
    pub service: Option<String>,
    /// Its local address.
    pub addr: SocketAddr,
    pub socket: Socket,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    service: String,
    addr: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    listeners: Vec<Entry>,
    more: bool,
}

/// The new process's side after receiving the sockets: tell the old
/// process to drain with [`Takeover::release`].
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
}

impl Takeover {
    /// Tells the old process we accept on its sockets: it drains and exits.
    pub fn release(mut self) -> io::Result<()> {
        self.stream.write_all(format!("{READY}\n").as_bytes())
    }
}

/// Asks the ringlb serving `path` for its listening sockets.
/// `Err` with `ConnectionRefused`/`NotFound` means nobody serves there.
pub fn take_over(path: &Path, timeout: Duration) -> io::Result<(Vec<Inherited>, Takeover)> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{HELLO}\n").as_bytes())?;
    let mut out = Vec::new();
    loop {
        let (body, fds) = recv_batch(stream.as_raw_fd())?;
        let batch = decode_batch(&body, fds.len())?;
        for (entry, fd) in batch.listeners.into_iter().zip(fds) {
            out.push(Inherited {
                service: Some(entry.service),
                addr: entry.addr,
                socket: Socket::from(fd),
            });
        }
        if !batch.more {
            break;
        }
    }
    Ok((out, Takeover { stream }))
}

/// Reads one message's JSON body, which must list as many sockets as it
/// carries (`fds`).
fn decode_batch(body: &[u8], fds: usize) -> io::Result<Batch> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad handover message: {}", crate::excerpt::json_error(&e)),
        )
    })?;
    if batch.listeners.len() != fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "handover message lists {} sockets but carries {fds}",
                batch.listeners.len(),
            ),
        ));
    }
    Ok(batch)
}

fn recv_batch(fd: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut body = vec![0u8; BODY_MAX];
    let mut cmsg = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(&mut body)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us (SCM_RIGHTS); nobody else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handover message truncated",
        ));
    }
    let n = msg.bytes;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the old process closed the handover",
        ));
    }
    body.truncate(n);
    Ok((body, fds))
}

/// The old process's side: answers one takeover request on `stream` with
/// `listeners`, then waits for `ready`. Blocking with timeouts; returns Ok
/// once the new process said it is ready (then drain), Err otherwise (then
/// keep serving: nothing changed).
pub(crate) fn serve_takeover(
    stream: UnixStream,
    listeners: &[(String, SocketAddr, RawFd)],
    timeout: Duration,
) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    // Lines are read bounded: whoever can reach the socket could
    // otherwise send one endless line into memory.
    (&mut reader).take(LINE_MAX).read_line(&mut line)?;
    if line.trim_end() != HELLO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected request {:?}", line.trim_end()),
        ));
    }
    let chunks: Vec<&[(String, SocketAddr, RawFd)]> = listeners.chunks(FDS_PER_MESSAGE).collect();
    let count = chunks.len().max(1);
    for i in 0..count {
        let chunk = chunks.get(i).copied().unwrap_or(&[]);
        let batch = Batch {
            listeners: chunk
                .iter()
                .map(|(s, a, _)| Entry {
                    service: s.clone(),
                    addr: *a,
                })
                .collect(),
            more: i + 1 < count,
        };
        let body = serde_json::to_vec(&batch).map_err(io::Error::other)?;
        let fds: Vec<RawFd> = chunk.iter().map(|(_, _, fd)| *fd).collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&body)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
    }
    line.clear();
    (&mut reader).take(LINE_MAX).read_line(&mut line)?;
    if line.trim_end() == READY {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the new process went away before it was ready",
        ))
    }
}

// Hostile-input property tests (src/fuzz.rs).
#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sockets_pass_between_processes_with_their_queued_connections() {
        let dir = std::env::temp_dir().join(format!("ringlb-handover-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("up.sock");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let a1 = l1.local_addr().unwrap();
        // A client already waiting in the old socket's queue.
        let mut queued = TcpStream::connect(a1).unwrap();
        let old = std::thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            serve_takeover(
                s,
                &[("web".into(), a1, l1.as_raw_fd())],
                Duration::from_secs(5),
            )
            .map(|()| l1)
        });
        let (got, takeover) = take_over(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].service.as_deref(), got[0].addr), (Some("web"), a1));
        takeover.release().unwrap();
        let l1_old = old.join().unwrap().unwrap();
        drop(l1_old); // the old process closes its copy: the socket lives on
        let new: TcpListener = got.into_iter().next().unwrap().socket.into();
        let (mut accepted, _) = new.accept().unwrap();
        queued.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nobody_serving_the_path_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("ringlb-none-{}.sock", std::process::id()));
        let e = take_over(&path, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
