//! The PROXY protocol (HAProxy's specification, versions 1 and 2): the
//! header ringlb writes to a backend before any client byte (`send_proxy`,
//! `encode.rs`) and the one it reads from a trusted balancer in front of
//! it (`accept_proxy`, `parse.rs`). Pure: no I/O; a worker thread (and the
//! control plane's health probes) call it.

mod encode;
mod parse;

pub(crate) use encode::{probe as probe_header, relayed as relayed_header};
pub(crate) use parse::{parse, Parsed, Refusal, MAX_HEADER};

/// Which header ringlb writes to a backend (`send_proxy = "v1" | "v2"`;
/// `"off"` is `None` where this is held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text form: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary form: a 16-byte preamble and the addresses.
    V2,
}
