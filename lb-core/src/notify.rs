//! systemd glue: `sd_notify` readiness and watchdog messages over
//! `$NOTIFY_SOCKET`, and socket activation (`$LISTEN_FDS`). Called from the
//! binary's main thread (ready, listen_fds, and the watchdog pings from
//! `Server::wait`, which decides them with `supervisor::watchdog_verdict`)
//! and the control-plane thread (reloading, stopping). Without systemd
//! every call is a no-op.
//!
//! The protocol is the one of `sd_notify(3)` and `sd_listen_fds(3)`, spoken
//! directly (no libsystemd): one datagram of `KEY=VALUE` lines to the unix
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); passed sockets are fds 3, 4, … when `LISTEN_PID` is ours.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Where notifications go: the socket named by `NOTIFY_SOCKET`.
#[derive(Debug)]
pub(crate) struct Notifier {
    addr: UnixAddr,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`; None when it is unset (not run by
    /// systemd, or `Type=` is not notify).
    pub(crate) fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(s) => Notifier::new(&s).map(Some),
        }
    }

    /// A notifier for a socket given as `NOTIFY_SOCKET` spells it: an
    /// absolute path, or `@name` for the abstract namespace.
    pub(crate) fn new(socket: &OsStr) -> io::Result<Notifier> {
        let bytes = socket.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => UnixAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => UnixAddr::from_pathname(socket)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "NOTIFY_SOCKET={socket:?} is neither an absolute path nor @abstract (vsock is not supported)"
                    ),
                ))
            }
        };
        Ok(Notifier { addr })
    }

    /// Sends one message (newline-separated `KEY=VALUE` lines).
    pub(crate) fn send(&self, message: &str) -> io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let sent = socket.send_to_addr(message.as_bytes(), &self.addr)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notify datagram was truncated",
            ));
        }
        Ok(())
    }
}

/// Sends `message` to `$NOTIFY_SOCKET`; Ok(false) when it is unset.
pub(crate) fn notify(message: &str) -> io::Result<bool> {
    match Notifier::from_env()? {
        Some(n) => n.send(message).map(|()| true),
        None => Ok(false),
    }
}

/// `READY=1`: start-up finished (or a reload finished), serving.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `RELOADING=1` with the monotonic time systemd asks for; send
/// [`ready`] when the reload is done (applied or rejected).
pub(crate) fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_micros()?))
}

/// `MAINPID=<pid>` and `READY=1`: a new ringlb took over (binary upgrade)
/// and serves; it is the service's main process from now on. Sent by the
/// old main process, as `NotifyAccess=main` requires.
/// From then on this process pings the watchdog no more: the new one does.
pub(crate) fn main_pid(pid: u32) -> io::Result<bool> {
    HANDED_OVER.store(true, Relaxed);
    notify(&main_pid_message(pid))
}

/// Set once a new ringlb is the service's main process (binary upgrade).
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

fn main_pid_message(pid: u32) -> String {
    format!("MAINPID={pid}\nREADY=1")
}

/// `STOPPING=1`: shutdown began.
pub(crate) fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: still alive. Not sent once a new ringlb took over
/// ([`main_pid`]): systemd watches that one now.
pub(crate) fn watchdog() -> io::Result<bool> {
    if HANDED_OVER.load(Relaxed) {
        return Ok(false);
    }
    notify("WATCHDOG=1")
}

/// `STATUS=<line>`: the one line `systemctl status` shows. Not sent once
/// a new ringlb took over ([`main_pid`]): its line is the one that counts.
pub(crate) fn status(line: &str) -> io::Result<bool> {
    if HANDED_OVER.load(Relaxed) {
        return Ok(false);
    }
    notify(&status_message(line))
}

/// One line, at most [`STATUS_MAX`] bytes (cut at a character boundary).
fn status_message(line: &str) -> String {
    let mut line = line.replace(['\n', '\r'], " ");
    if line.len() > STATUS_MAX {
        let mut cut = STATUS_MAX;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    format!("STATUS={line}")
}

/// Longest `STATUS=` text sent: one terminal line's worth and a bit.
const STATUS_MAX: usize = 240;

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares it.
fn monotonic_micros() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000)
}

/// How often systemd expects `WATCHDOG=1` (`WatchdogSec=`), if it does and
/// the request is for this process. Ping at half of it.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A socket systemd passed (socket activation).
#[derive(Debug)]
pub struct ListenFd {
    pub fd: OwnedFd,
    /// From `LISTEN_FDNAMES` (`FileDescriptorName=` in the .socket unit).
    pub name: Option<String>,
    /// The address it is bound to, when it is an IP socket.
    pub local: Option<SocketAddr>,
}

/// Takes the sockets systemd passed to this process, and removes
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment so
/// no child claims them. Call once, early, before other threads start
/// (changing the environment is not thread-safe). Empty without socket
/// activation. Each fd is set close-on-exec.
pub fn listen_fds() -> io::Result<Vec<ListenFd>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let count = parse_listen_fds(pid.as_deref(), count.as_deref(), std::process::id())?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: systemd hands fds LISTEN_FDS_START.. to the process named by
    // LISTEN_PID, which was checked to be this one, and the variables were
    // just removed so nothing else in the process adopts them again.
    unsafe { adopt(LISTEN_FDS_START, count, names.as_deref()) }
}

/// The number of passed fds: 0 when they are not for this process (or
/// there are none).
fn parse_listen_fds(pid: Option<&str>, count: Option<&str>, my_pid: u32) -> io::Result<usize> {
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(0);
    };
    let bad = |what: &str, value: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}={value:?} is not a number"),
        )
    };
    let pid: u32 = pid.trim().parse().map_err(|_| bad("LISTEN_PID", pid))?;
    if pid != my_pid {
        return Ok(0);
    }
    let count: usize = count.trim().parse().map_err(|_| bad("LISTEN_FDS", count))?;
    if count > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LISTEN_FDS={count} is implausibly large"),
        ));
    }
    Ok(count)
}

/// `LISTEN_FDNAMES` split per fd; all None when absent or when the count
/// does not match (systemd always sends one name per fd).
fn split_names(names: Option<&str>, count: usize) -> Vec<Option<String>> {
    match names.map(|n| n.split(':').collect::<Vec<_>>()) {
        Some(list) if list.len() == count => list
            .into_iter()
            .map(|n| (!n.is_empty()).then(|| n.to_owned()))
            .collect(),
        _ => vec![None; count],
    }
}

/// Takes ownership of `count` fds from `first` on.
///
/// # Safety
/// The fds `first..first + count` must be open and owned by nobody else in
/// the process: each becomes an `OwnedFd` that closes it on drop.
unsafe fn adopt(first: RawFd, count: usize, names: Option<&str>) -> io::Result<Vec<ListenFd>> {
    let names = split_names(names, count);
    let mut out = Vec::with_capacity(count);
    for (i, name) in names.into_iter().enumerate() {
        let fd = first + i as RawFd;
        // SAFETY: F_SETFD on an fd number has no memory effects; an fd that
        // is not open fails with EBADF, which is reported.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("passed fd {fd} is not usable: {e}"),
            ));
        }
        // SAFETY: the caller guarantees fd is open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let local = socket2::SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        out.push(ListenFd { fd, name, local });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::sync::Mutex;

    /// Tests that change the environment take turns.
    static ENV: Mutex<()> = Mutex::new(());

    fn temp_socket_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ringlb-notify-{tag}-{}", std::process::id()))
    }

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn sends_to_a_path_socket() {
        let path = temp_socket_path("path");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(path.as_os_str()).expect("notifier");
        n.send("READY=1").expect("send");
        assert_eq!(recv(&server), "READY=1");
        n.send("STATUS=serving 2 services").expect("send");
        assert_eq!(recv(&server), "STATUS=serving 2 services");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("ringlb-notify-test-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let server = UnixDatagram::bind_addr(&addr).expect("bind");
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).expect("notifier");
        n.send("WATCHDOG=1").expect("send");
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    #[test]
    fn rejects_unusable_socket_names() {
        assert!(Notifier::new(OsStr::new("relative/path")).is_err());
        assert!(Notifier::new(OsStr::new("")).is_err());
        assert!(Notifier::new(OsStr::new("vsock:2:1234")).is_err());
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let a = monotonic_micros().expect("clock");
        let b = monotonic_micros().expect("clock");
        assert!(b >= a && a > 0);
        assert_eq!(reloading_message(1234), "RELOADING=1\nMONOTONIC_USEC=1234");
        assert_eq!(main_pid_message(42), "MAINPID=42\nREADY=1");
    }

    #[test]
    fn environment_functions_use_notify_socket_or_do_nothing() {
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!ready().expect("no-op"));
        assert!(!watchdog().expect("no-op"));

        let path = temp_socket_path("env");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(ready().expect("sent"));
        assert_eq!(recv(&server), "READY=1");
        assert!(reloading().expect("sent"));
        let msg = recv(&server);
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        let usec: u64 = msg
            .rsplit('=')
            .next()
            .expect("value")
            .parse()
            .expect("number");
        assert!(usec > 0);
        assert!(stopping().expect("sent"));
        assert_eq!(recv(&server), "STOPPING=1");
        assert!(watchdog().expect("sent"));
        assert_eq!(recv(&server), "WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(status_message("serving 1"), "STATUS=serving 1");
        assert_eq!(status_message("a\nb\rc"), "STATUS=a b c");
        let long = "é".repeat(200);
        let m = status_message(&long);
        assert!(m.len() <= "STATUS=".len() + STATUS_MAX, "{}", m.len());
        assert!(m.ends_with('é'));
    }

    #[test]
    fn watchdog_interval_parsing() {
        assert_eq!(
            parse_watchdog(Some("10000000"), None, 7),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_watchdog(Some("500000"), Some("7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_watchdog(Some("500000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
        assert_eq!(parse_watchdog(Some("5"), Some("x"), 7), None);
    }

    #[test]
    fn listen_fds_parsing() {
        assert_eq!(parse_listen_fds(None, None, 7).expect("ok"), 0);
        assert_eq!(parse_listen_fds(Some("7"), None, 7).expect("ok"), 0);
        assert_eq!(parse_listen_fds(Some("7"), Some("2"), 7).expect("ok"), 2);
        assert_eq!(parse_listen_fds(Some("8"), Some("2"), 7).expect("ok"), 0);
        assert!(parse_listen_fds(Some("7"), Some("two"), 7).is_err());
        assert!(parse_listen_fds(Some("x"), Some("2"), 7).is_err());
        assert!(parse_listen_fds(Some("7"), Some("99999"), 7).is_err());
        assert_eq!(
            split_names(Some("web:admin"), 2),
            vec![Some("web".to_string()), Some("admin".to_string())]
        );
        assert_eq!(split_names(Some("web"), 2), vec![None, None]);
        assert_eq!(split_names(None, 1), vec![None]);
        assert_eq!(
            split_names(Some(":x"), 2),
            vec![None, Some("x".to_string())]
        );
    }

    #[test]
    fn listen_fds_without_activation_is_empty() {
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        assert!(listen_fds().expect("ok").is_empty());
        // Variables meant for another process are ignored and removed.
        std::env::set_var("LISTEN_PID", "1");
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_FDNAMES", "web");
        assert!(listen_fds().expect("ok").is_empty());
        assert!(std::env::var_os("LISTEN_PID").is_none());
        assert!(std::env::var_os("LISTEN_FDS").is_none());
        assert!(std::env::var_os("LISTEN_FDNAMES").is_none());
    }

    #[test]
    fn adopts_passed_sockets_with_names_and_addresses() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (addr_a, addr_b) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        // Put them on two consecutive high fd numbers, as systemd would on 3, 4.
        let first: RawFd = 900;
        for (listener, target) in [(a, first), (b, first + 1)] {
            let fd = listener.into_raw_fd();
            // SAFETY: dup2 onto an fd number this test reserves; `fd` is ours
            // and closed right after.
            assert_eq!(unsafe { libc::dup2(fd, target) }, target);
            // SAFETY: `fd` came from into_raw_fd and is closed once.
            unsafe { libc::close(fd) };
        }
        // SAFETY: fds 900 and 901 were just made by dup2 and nothing else owns them.
        let fds = unsafe { adopt(first, 2, Some("web:admin")) }.expect("adopt");
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[0].fd.as_raw_fd(), first);
        assert_eq!(fds[0].name.as_deref(), Some("web"));
        assert_eq!(fds[0].local, Some(addr_a));
        assert_eq!(fds[1].name.as_deref(), Some("admin"));
        assert_eq!(fds[1].local, Some(addr_b));
        // SAFETY: F_GETFD on an fd we own.
        let flags = unsafe { libc::fcntl(first, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // A closed fd number is an error, not an adoption.
        drop(fds);
        // SAFETY: 900 was closed by the drop above; adopt must fail on it.
        assert!(unsafe { adopt(first, 1, None) }.is_err());
    }
}
