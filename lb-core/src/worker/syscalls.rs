//! The system calls a worker's decisions hang on, behind a trait so that
//! unit tests can play the kernel.
//!
//! Runs on the worker's thread. [`Kernel`] is the real thing: a zero-sized
//! type the worker takes as a generic parameter (its default), so every call
//! is static and inlined exactly as the direct `sys::` calls were; no
//! pointer, no vtable, no state. Only the calls whose results steer the
//! worker (accept, connect, the outcome of a connect, the reads of a
//! preamble or a ClientHello, the PROXY header that completes a connect,
//! a held ClientHello's copy to a backend, what the kernel
//! still delivers when the idle timeout is due) go through here; the byte
//! pumps and socket options do not decide anything and stay direct.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};

use socket2::Socket;

use crate::config::TcpLiveness;
use crate::sys;

/// Accept, connect and connect outcome, as the worker needs them.
pub(crate) trait Syscalls {
    /// Accepts one connection from the non-blocking `listener`
    /// ([`sys::accept`]).
    fn accept(&mut self, listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)>;
    /// Starts a non-blocking connect ([`sys::start_connect`]).
    fn start_connect(
        &mut self,
        addr: SocketAddr,
        source: Option<IpAddr>,
        liveness: &TcpLiveness,
    ) -> io::Result<Socket>;
    /// The pending error of a socket, cleared ([`sys::take_socket_error`]).
    fn take_socket_error(&mut self, fd: RawFd) -> io::Result<Option<io::Error>>;
    /// Copies what a socket holds without consuming it ([`sys::peek`]): a
    /// preamble or a TLS ClientHello is judged before it is taken, and a
    /// backend's first byte is seen and left for the pumps.
    fn peek(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize>;
    /// Non-blocking read ([`sys::recv`]): takes a judged preamble off the
    /// socket.
    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize>;
    /// The address a client connected to: its socket's local address
    /// ([`sys::local_addr`]), what a PROXY header names as destination.
    fn local_addr(&mut self, client: &OwnedFd) -> io::Result<SocketAddr>;
    /// Writes a PROXY header on a freshly connected backend socket
    /// ([`sys::send`], non-blocking); the bytes written.
    fn send_header(&mut self, fd: RawFd, header: &[u8]) -> io::Result<usize>;
    /// Non-blocking write ([`sys::send`]): a held TLS ClientHello copied
    /// to a backend (`replay.rs`); the bytes written.
    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize>;
    /// What the kernel delivered of a socket's bytes ([`sys::delivery`]);
    /// None where it cannot say (then only ringlb's own reads and writes
    /// count as activity).
    fn delivery(&mut self, _fd: RawFd) -> Option<sys::Delivery> {
        None
    }
}

/// The kernel's own calls.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Kernel;

impl Syscalls for Kernel {
    #[inline]
    fn accept(&mut self, listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
        sys::accept(listener)
    }

    #[inline]
    fn start_connect(
        &mut self,
        addr: SocketAddr,
        source: Option<IpAddr>,
        liveness: &TcpLiveness,
    ) -> io::Result<Socket> {
        sys::start_connect(addr, source, liveness)
    }

    #[inline]
    fn take_socket_error(&mut self, fd: RawFd) -> io::Result<Option<io::Error>> {
        sys::take_socket_error(fd)
    }

    #[inline]
    fn peek(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        sys::peek(fd, buf)
    }

    #[inline]
    fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(fd, buf)
    }

    #[inline]
    fn local_addr(&mut self, client: &OwnedFd) -> io::Result<SocketAddr> {
        sys::local_addr(client)
    }

    #[inline]
    fn send_header(&mut self, fd: RawFd, header: &[u8]) -> io::Result<usize> {
        sys::send(fd, header)
    }

    #[inline]
    fn send(&mut self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        sys::send(fd, buf)
    }

    #[inline]
    fn delivery(&mut self, fd: RawFd) -> Option<sys::Delivery> {
        sys::delivery(fd).ok()
    }
}
