//! Zero-downtime binary upgrade: a running ringlb hands its listening
//! sockets (every service's, and the admin API's) to a new ringlb over a
//! Unix socket, then drains and exits.
//!
//! The new process gets the very same sockets (`SCM_RIGHTS`), so
//! connections already queued in them are accepted by the new process:
//! nothing is refused or reset during the switch. The old process keeps
//! serving its established connections until they end (or its
//! `shutdown_timeout`).
//!
//! Protocol, one connection, client = the new process:
//! 1. new → old: `takeover v2\n` (`takeover v1\n` is still answered, for a
//!    new process of the first protocol: the same minus the admin entry);
//! 2. old → new: one message per batch of at most [`FDS_PER_MESSAGE`]
//!    sockets: a JSON body `{"listeners":[{"service":"…","addr":"…"},…],
//!    "more":bool}` with the sockets attached in the same order. v2 adds
//!    the admin API's listener as an entry `{"service":"","addr":"…",
//!    "kind":"admin"}` (entries without `kind` are service listeners, as
//!    in v1);
//! 3. new → old: `ready\n` once it accepts on them; the old process then
//!    stops accepting and drains. If the new process dies before `ready`,
//!    the old one simply goes on serving.
//!
//! A new process speaking v2 to an old one of v1 (which hangs up on the
//! unknown greeting) asks again in v1. Only a peer of the same user (or
//! root) gets the sockets.
//!
//! The old side runs on the control-plane thread's blocking pool (tokio);
//! the new side runs at start-up on the main thread (blocking, with
//! timeouts). Start-up also takes the admin listener out of the inherited
//! sockets ([`take_admin_listener`]) and binds the upgrade socket at a
//! private path, published over the public one only once the new process
//! serves ([`UpgradeSocket`]).

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use serde::{Deserialize, Serialize};
use socket2::Socket;

/// Sockets passed per message (the kernel allows 253).
pub(crate) const FDS_PER_MESSAGE: usize = 128;
/// The greeting of the current protocol, and of the first one.
const HELLO: &str = "takeover v2";
const HELLO_V1: &str = "takeover v1";
const READY: &str = "ready";
/// Room for one message's JSON body.
const BODY_MAX: usize = 64 * 1024;
/// Longest line read from the new process (`takeover v2`, `ready`).
const LINE_MAX: u64 = 64;

/// A listening socket received from another process (upgrade) or from
/// systemd (socket activation).
#[derive(Debug)]
pub struct Inherited {
    /// The service it served, when known (systemd doesn't say; None for
    /// the admin API's listener too).
    pub service: Option<String>,
    /// It is the admin API's listener of the old process (so that the new
    /// one serves the admin API on it instead of binding the busy address).
    pub admin: bool,
    /// Its local address.
    pub addr: SocketAddr,
    pub socket: Socket,
}

/// What a handed-over socket served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// A service's listener (the only kind of protocol v1).
    #[default]
    Service,
    /// The admin API's listener (v2).
    Admin,
}

impl Kind {
    fn is_service(&self) -> bool {
        *self == Kind::Service
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The service's name; empty for the admin listener.
    service: String,
    addr: SocketAddr,
    /// Absent (v1, and services in v2) means a service's listener.
    #[serde(default, skip_serializing_if = "Kind::is_service")]
    kind: Kind,
}

/// The listening sockets the old process offers: every service listener
/// (service, address, fd) and the admin API's (address, fd), if it runs.
#[derive(Debug, Default)]
pub(crate) struct Offer {
    pub(crate) services: Vec<(String, SocketAddr, RawFd)>,
    pub(crate) admin: Option<(SocketAddr, RawFd)>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Batch {
    pub(crate) listeners: Vec<Entry>,
    more: bool,
}

/// [`Batch`] as the old process writes it (borrowing its entries).
#[derive(Debug, Serialize)]
struct BatchRef<'a> {
    listeners: Vec<&'a Entry>,
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
    match take_over_as(path, timeout, HELLO) {
        // A ringlb of protocol v1 hangs up on the v2 greeting before
        // sending anything: ask it again the way it understands.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::info!("the running ringlb speaks takeover protocol v1: it cannot hand over its admin listener");
            take_over_as(path, timeout, HELLO_V1)
        }
        other => other,
    }
}

fn take_over_as(
    path: &Path,
    timeout: Duration,
    hello: &str,
) -> io::Result<(Vec<Inherited>, Takeover)> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("{hello}\n").as_bytes())?;
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let (body, fds) = match recv_batch(stream.as_raw_fd()) {
            Ok(got) => got,
            // Only a hang-up before the first message means "another
            // protocol"; later it is a failed handover.
            Err(e) if !first && e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("the old process closed the handover midway: {e}"),
                ))
            }
            Err(e) => return Err(e),
        };
        first = false;
        let batch = decode_batch(&body, fds.len())?;
        for (entry, fd) in batch.listeners.into_iter().zip(fds) {
            let admin = entry.kind == Kind::Admin;
            out.push(Inherited {
                service: (!admin).then_some(entry.service),
                admin,
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
pub(crate) fn decode_batch(body: &[u8], fds: usize) -> io::Result<Batch> {
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
/// the sockets of `offer`, then waits for `ready`. Blocking with timeouts;
/// returns the new process's pid once it said it is ready (then drain),
/// Err otherwise (then keep serving: nothing changed).
pub(crate) fn serve_takeover(
    stream: UnixStream,
    offer: &Offer,
    timeout: Duration,
) -> io::Result<u32> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let peer = getsockopt(&stream, sockopt::PeerCredentials).map_err(io::Error::from)?;
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let me = unsafe { libc::geteuid() };
    if peer.uid() != me && peer.uid() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "takeover asked by pid {} of uid {}, not ours ({me}) nor root: refused",
                peer.pid(),
                peer.uid()
            ),
        ));
    }
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    // Lines are read bounded: whoever can reach the socket could
    // otherwise send one endless line into memory.
    (&mut reader).take(LINE_MAX).read_line(&mut line)?;
    let with_admin = match line.trim_end() {
        HELLO => true,
        HELLO_V1 => false,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected request {other:?}"),
            ))
        }
    };
    let mut entries: Vec<(Entry, RawFd)> = offer
        .services
        .iter()
        .map(|(service, addr, fd)| {
            let entry = Entry {
                service: service.clone(),
                addr: *addr,
                kind: Kind::Service,
            };
            (entry, *fd)
        })
        .collect();
    if let Some((addr, fd)) = offer.admin.filter(|_| with_admin) {
        let entry = Entry {
            service: String::new(),
            addr,
            kind: Kind::Admin,
        };
        entries.push((entry, fd));
    }
    let chunks: Vec<&[(Entry, RawFd)]> = entries.chunks(FDS_PER_MESSAGE).collect();
    let count = chunks.len().max(1);
    for i in 0..count {
        let chunk = chunks.get(i).copied().unwrap_or(&[]);
        let batch = BatchRef {
            listeners: chunk.iter().map(|(e, _)| e).collect(),
            more: i + 1 < count,
        };
        let body = serde_json::to_vec(&batch).map_err(io::Error::other)?;
        let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| *fd).collect();
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
        Ok(peer.pid() as u32)
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the new process went away before it was ready",
        ))
    }
}

/// The upgrade socket of a server while it starts: bound at a private path
/// (`<path>.<pid>.new`) and moved over `<path>` by [`UpgradeSocket::publish`]
/// once the server serves. Dropped unpublished (a failed start), it
/// removes its private path and leaves `<path>` (the running ringlb's) alone.
pub(crate) struct UpgradeSocket {
    listener: std::os::unix::net::UnixListener,
    /// Where it is bound until published.
    private: PathBuf,
    /// Where newer ringlbs look for it.
    path: PathBuf,
    published: bool,
}

impl UpgradeSocket {
    pub(crate) fn bind(path: &Path) -> crate::Result<UpgradeSocket> {
        let mut private = path.as_os_str().to_owned();
        private.push(format!(".{}.new", std::process::id()));
        let private = PathBuf::from(private);
        // A leftover of an earlier process that had our pid.
        let _ = std::fs::remove_file(&private);
        let listener = std::os::unix::net::UnixListener::bind(&private).map_err(|e| {
            crate::Error::io(
                format!(
                    "binding the upgrade socket {} (is its directory there and writable?)",
                    private.display()
                ),
                e,
            )
        })?;
        let socket = UpgradeSocket {
            listener,
            private,
            path: path.to_path_buf(),
            published: false,
        };
        socket
            .listener
            .set_nonblocking(true)
            .map_err(|e| crate::Error::io("making the upgrade socket non-blocking", e))?;
        Ok(socket)
    }

    /// A copy of the listener, for the control plane.
    pub(crate) fn listener(&self) -> crate::Result<std::os::unix::net::UnixListener> {
        self.listener
            .try_clone()
            .map_err(|e| crate::Error::io("copying the upgrade socket", e))
    }

    /// Moves the socket over the public path (atomically replacing the old
    /// process's, or a stale file).
    pub(crate) fn publish(mut self) -> crate::Result<()> {
        std::fs::rename(&self.private, &self.path).map_err(|e| {
            crate::Error::io(
                format!(
                    "moving the upgrade socket {} to {}",
                    self.private.display(),
                    self.path.display()
                ),
                e,
            )
        })?;
        self.published = true;
        Ok(())
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.private);
        }
    }
}

/// The admin API's listener among the inherited sockets: the old process's
/// (handed over on upgrade; a port of 0 in the config takes it whatever its
/// port), or one systemd passed for exactly `addr`.
pub(crate) fn take_admin_listener(
    addr: SocketAddr,
    inherited: &mut Vec<Inherited>,
) -> Option<socket2::Socket> {
    let pos = inherited.iter().position(|i| {
        if i.admin {
            i.addr == addr || (addr.port() == 0 && i.addr.ip() == addr.ip())
        } else {
            i.service.is_none() && addr.port() != 0 && i.addr == addr
        }
    })?;
    let found = inherited.swap_remove(pos);
    tracing::info!(admin = %found.addr, "using the inherited admin listener");
    Some(found.socket)
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
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin_addr = admin.local_addr().unwrap();
        // A client already waiting in the old socket's queue.
        let mut queued = TcpStream::connect(a1).unwrap();
        let old = std::thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            let offer = Offer {
                services: vec![("web".into(), a1, l1.as_raw_fd())],
                admin: Some((admin_addr, admin.as_raw_fd())),
            };
            serve_takeover(s, &offer, Duration::from_secs(5)).map(|pid| (pid, l1))
        });
        let (got, takeover) = take_over(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].service.as_deref(), got[0].admin, got[0].addr),
            (Some("web"), false, a1)
        );
        assert_eq!(
            (got[1].service.as_deref(), got[1].admin, got[1].addr),
            (None, true, admin_addr)
        );
        takeover.release().unwrap();
        let (pid, l1_old) = old.join().unwrap().unwrap();
        assert_eq!(pid, std::process::id(), "the peer's pid, for MAINPID=");
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
    fn a_v1_client_gets_the_service_listeners_without_the_admin_entry() {
        let dir = std::env::temp_dir().join(format!("ringlb-handover-v1-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("up.sock");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let offer = Offer {
            services: vec![("web".into(), l1.local_addr().unwrap(), l1.as_raw_fd())],
            admin: Some((admin.local_addr().unwrap(), admin.as_raw_fd())),
        };
        let old = std::thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            serve_takeover(s, &offer, Duration::from_secs(5))
        });
        let (got, takeover) = take_over_as(&path, Duration::from_secs(5), HELLO_V1).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(!got[0].admin);
        takeover.release().unwrap();
        old.join().unwrap().unwrap();
        drop((l1, admin));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_v2_client_falls_back_to_v1_when_the_old_process_hangs_up() {
        let dir = std::env::temp_dir().join(format!("ringlb-handover-fb-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("up.sock");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let a1 = l1.local_addr().unwrap();
        // A v1 server: hangs up on anything but `takeover v1`.
        let old = std::thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(line, "takeover v2\n");
            drop(s);
            let (s, _) = server.accept().unwrap();
            let offer = Offer {
                services: vec![("web".into(), a1, l1.as_raw_fd())],
                admin: None,
            };
            serve_takeover(s, &offer, Duration::from_secs(5)).map(|_| l1)
        });
        let (got, takeover) = take_over(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].addr, a1);
        takeover.release().unwrap();
        old.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nobody_serving_the_path_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("ringlb-none-{}.sock", std::process::id()));
        let e = take_over(&path, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
