//! Kernel-facing helpers: socket options, `splice(2)`, pipes, rlimits.
//!
//! Called from worker threads (sockets, splice, pipes) and from start-up
//! (rlimits, listeners). This module and the engines are the only places
//! with `unsafe`; every block says why it is sound.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::TcpLiveness;

/// Turns a libc return value into `io::Result`, reading errno on -1.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Returns (old, new).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit read just above.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok((old, lim.rlim_cur))
}

/// The open-files limit now: (soft, hard).
pub(crate) fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// A `sysconf(3)` value; None when the system does not say.
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a system constant; it takes no pointers.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of CPU times in
/// `/proc/PID/stat`.
pub(crate) fn clock_ticks() -> Option<u64> {
    sysconf(libc::_SC_CLK_TCK)
}

/// The memory page size in bytes (the unit of `/proc/PID/statm`).
pub(crate) fn page_size() -> Option<u64> {
    sysconf(libc::_SC_PAGESIZE)
}

/// TCP_NODELAY and SO_KEEPALIVE on a listener: Linux copies both to every
/// socket it accepts, which saves two setsockopt calls per connection.
pub(crate) fn set_accepted_defaults(listener: &Socket) -> io::Result<()> {
    listener.set_tcp_nodelay(true)?;
    listener.set_keepalive(true)
}

/// Listen backlog of every listener.
pub(crate) const BACKLOG: i32 = 4096;

/// A non-blocking listening socket with SO_REUSEPORT, so each worker can own
/// one for the same address and the kernel spreads connections over them.
/// With `freebind` the address need not be on this host yet
/// (IP_FREEBIND / IPV6_FREEBIND: a floating address that arrives later).
pub(crate) fn reuseport_listener(
    addr: SocketAddr,
    backlog: i32,
    freebind: bool,
) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // "[::]:p" and "0.0.0.0:p" may both be configured: keep them apart.
        sock.set_only_v6(true)?;
        if freebind {
            sock.set_freebind_v6(true)?;
        }
    } else if freebind {
        sock.set_freebind_v4(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    set_accepted_defaults(&sock)?;
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(backlog)?;
    Ok(sock)
}

/// Starts a non-blocking connect to `addr` (from `source` if given).
/// Returns the socket; completion is signalled by writability.
pub(crate) fn start_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    liveness: &TcpLiveness,
) -> io::Result<Socket> {
    // Non-blocking and close-on-exec from socket(2) itself (socket2 adds
    // SOCK_CLOEXEC): no fcntl calls per connection.
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    set_liveness(&sock, liveness)?;
    if let Some(src) = source {
        // Let connect() pick the port: without this, bind() reserves a port
        // per source address and the ephemeral range runs out much sooner.
        set_bind_address_no_port(&sock)?;
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    match sock.connect(&SockAddr::from(addr)) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e),
    }
}

/// SO_KEEPALIVE with the service's probe timing, and TCP_USER_TIMEOUT
/// (left at the kernel's when zero): a peer that vanished without a reset
/// ends the connection in a bounded time ([`TcpLiveness`]).
pub(crate) fn set_liveness(sock: &Socket, liveness: &TcpLiveness) -> io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(liveness.keepalive_idle)
        .with_interval(liveness.keepalive_interval)
        .with_retries(liveness.keepalive_count);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_keepalive(true)?;
    if !liveness.user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(liveness.user_timeout))?;
    }
    Ok(())
}

fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value points at a live c_int of the given size.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Accepts one connection, non-blocking and close-on-exec (accept4).
pub(crate) fn accept(listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: the closure hands accept4 the storage and length socket2
    // prepared (zeroed, sized for any address) and reports errors; socket2
    // then trusts `len` as written by the kernel.
    let (fd, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            check(libc::accept4(
                listener,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            ))
        })
    }?;
    // SAFETY: accept4 succeeded: `fd` is a new descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP socket"))?;
    Ok((owned, peer))
}

/// The peer address of a connected socket (for connections the io_uring
/// engine accepted: multishot accept returns no address).
pub(crate) fn peer_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    socket2::SockRef::from(fd)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP socket"))
}

/// The local address of a connected socket (getsockname): for a client,
/// the address it connected to.
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    socket2::SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a non-IP socket"))
}

/// A non-blocking, close-on-exec eventfd (an engine's wake-up source).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with no pointers.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: eventfd succeeded: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel did with a TCP socket's bytes after ringlb handed them
/// over (TCP_INFO): the idle timeout asks it before closing a connection
/// ringlb itself moved nothing on, since a send buffer of a MiB or more
/// still drains to a slow peer for seconds after ringlb's last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Bytes the peer acknowledged since the connection opened: they grow
    /// only when bytes really reached it (not on keepalive or window-probe
    /// answers).
    pub(crate) acked: u64,
    /// Time since the peer's last ACK.
    pub(crate) since_ack: std::time::Duration,
    /// Bytes ringlb wrote are still on their way (sent and unacknowledged,
    /// or not sent yet): only then can the kernel be moving bytes for it.
    pub(crate) queued: bool,
}

/// [`Delivery`] of the TCP socket `fd`; Err on a kernel older than 4.6
/// (no `tcpi_notsent_bytes`) or a socket that is not TCP.
pub(crate) fn delivery(fd: RawFd) -> io::Result<Delivery> {
    // SAFETY: tcp_info is plain integers, for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd; the kernel writes at most `len` bytes into `info`,
    // a live, writable tcp_info of that size, and stores the length used.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    })?;
    if (len as usize) < std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO without tcpi_notsent_bytes (kernel older than 4.6)",
        ));
    }
    Ok(Delivery {
        acked: info.tcpi_bytes_acked,
        since_ack: std::time::Duration::from_millis(info.tcpi_last_ack_recv.into()),
        queued: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
    })
}

/// SO_LINGER {on, 0}: the next close() sends RST instead of FIN (or, in
/// TIME_WAIT, just frees the socket).
pub(crate) fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, option value points at a live linger of the given size.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The pending error of a socket (SO_ERROR), e.g. the result of a connect.
pub(crate) fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; `err`/`len` are live and sized for SO_ERROR.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// shutdown(fd, SHUT_WR): sends FIN, keeps the read side open.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on an fd the caller owns.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
}

/// Non-blocking `splice(2)` of up to `len` bytes; `Ok(0)` is end of input.
pub(crate) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are allowed for pipes and sockets; fds are owned
    // by the caller for the duration of the call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking `recv(2)` into `buf`.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live writable region of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking `recv(2)` with MSG_PEEK: copies what the socket holds, up
/// to `buf.len()` bytes, and leaves it there.
pub(crate) fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live writable region of buf.len() bytes.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking `send(2)` of `buf` (no SIGPIPE).
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live readable region of buf.len() bytes.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// F_SETPIPE_SZ; returns the capacity the kernel granted (it rounds up to a
/// power of two of pages, and may refuse above `pipe-max-size` or the
/// per-user `pipe-user-pages-soft` budget, in which case the old size stays).
pub(crate) fn set_pipe_size(fd: RawFd, size: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: plain fcntl on an fd the caller owns.
    match check(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, want) }) {
        Ok(n) => Ok(n as usize),
        Err(_) => {
            // SAFETY: plain fcntl on an fd the caller owns.
            let n = check(unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) })?;
            Ok(n as usize)
        }
    }
}

/// Clears O_NONBLOCK (a file opened non-blocking so that opening a FIFO
/// without a reader fails instead of waiting, written blocking after).
pub(crate) fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd the caller owns.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: plain fcntl on an fd the caller owns.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// Whether an I/O error means "try again later" on a non-blocking fd.
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    // A failed unwrap in a test is a failed test.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_sockets::tcp_pair;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn splice_moves_bytes_socket_to_pipe_to_socket() {
        // Bytes go in at a, out of b (ringlb's side) into the pipe, into c
        // (ringlb's side again) and out at d.
        let (mut a, b) = tcp_pair();
        let (mut d, c) = tcp_pair();
        a.write_all(b"hello splice").unwrap();
        let (r, w) = pipe().unwrap();
        let cap = set_pipe_size(w.as_raw_fd(), 1 << 16).unwrap();
        assert!(cap >= 1 << 16);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut n = 0;
        while n < 12 && std::time::Instant::now() < deadline {
            match splice(b.as_raw_fd(), w.as_raw_fd(), 64) {
                Ok(k) => n += k,
                Err(e) if would_block(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(splice(r.as_raw_fd(), c.as_raw_fd(), n).unwrap(), 12);
        let mut buf = [0u8; 12];
        d.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello splice");
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let l = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (fd, _) = loop {
            match accept(l.as_raw_fd()) {
                Ok(a) => break a,
                Err(e) if would_block(&e) && std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("{e}"),
            }
        };
        let s = Socket::from(fd);
        assert!(s.tcp_nodelay().unwrap(), "TCP_NODELAY not inherited");
        assert!(s.keepalive().unwrap(), "SO_KEEPALIVE not inherited");
    }

    #[test]
    fn connect_error_is_reported_through_so_error() {
        // A port nobody listens on: bind, take the port, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = start_connect(
            SocketAddr::from(([127, 0, 0, 1], port)),
            None,
            &TcpLiveness::default(),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(e) = take_socket_error(s.as_raw_fd()).unwrap() {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no connect error reported"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn backend_sockets_carry_the_services_user_timeout_and_keepalive() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let liveness = TcpLiveness {
            user_timeout: std::time::Duration::from_millis(2500),
            keepalive_idle: std::time::Duration::from_secs(7),
            keepalive_interval: std::time::Duration::from_secs(3),
            keepalive_count: 4,
        };
        let s = start_connect(l.local_addr().unwrap(), None, &liveness).unwrap();
        assert!(s.keepalive().unwrap());
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(s.tcp_keepalive_time().unwrap().as_secs(), 7);
        assert_eq!(s.tcp_keepalive_interval().unwrap().as_secs(), 3);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        let off = TcpLiveness {
            user_timeout: std::time::Duration::ZERO,
            ..liveness
        };
        let s = start_connect(l.local_addr().unwrap(), None, &off).unwrap();
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
    }
}
