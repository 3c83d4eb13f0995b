//! Building a worker's io_uring, and the one-time check that this kernel
//! (and its sandbox) runs everything the engine uses. Runs on the thread
//! that will drive the ring: with `IORING_SETUP_SINGLE_ISSUER` only the
//! creating thread may submit.
//!
//! Setup tries the best flags first and steps down on `EINVAL` (the kernel
//! does not know a flag): `SINGLE_ISSUER | DEFER_TASKRUN` (6.1: completions
//! are produced only when the worker asks, on its own thread, with no
//! interrupting task work), then `COOP_TASKRUN` (5.19), then none. The
//! first two add `TASKRUN_FLAG` (the kernel flags queued task work in the
//! SQ ring, see `UringReactor::enter`) and `SUBMIT_ALL`. Any other
//! error (`EPERM` from seccomp or `kernel.io_uring_disabled`, `ENOSYS`,
//! `ENOMEM`) ends the attempt: stepping down would not help.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::sys;

/// Submission queue size. The engine submits whenever it fills, so this
/// bounds nothing but the batch of one `io_uring_enter`.
pub(super) const SQ_ENTRIES: u32 = 1024;
/// Completion queue size: room for the completions of several busy turns.
/// Beyond it the kernel keeps completions on its overflow list
/// (`IORING_FEAT_NODROP`, required) until the next enter.
pub(super) const CQ_ENTRIES: u32 = 8192;

/// How a ring was set up: the setup flags of the best tier this kernel
/// took (see the module docs), best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG | SUBMIT_ALL` (6.1+).
    SingleIssuerDeferTaskrun,
    /// `COOP_TASKRUN | TASKRUN_FLAG | SUBMIT_ALL` (5.19+).
    CoopTaskrun,
    /// No setup flags.
    Plain,
}

impl RingMode {
    /// Every tier, best first: the order setup tries them.
    const TIERS: [RingMode; 3] = [
        RingMode::SingleIssuerDeferTaskrun,
        RingMode::CoopTaskrun,
        RingMode::Plain,
    ];

    /// The tier's name in the log (`ring setup: …` in the engine's reason).
    pub const fn name(self) -> &'static str {
        match self {
            RingMode::SingleIssuerDeferTaskrun => "single-issuer+defer-taskrun",
            RingMode::CoopTaskrun => "coop-taskrun",
            RingMode::Plain => "plain",
        }
    }

    /// Completions are made only when the worker enters the ring
    /// (`IORING_SETUP_DEFER_TASKRUN`).
    pub const fn defers_taskrun(self) -> bool {
        matches!(self, RingMode::SingleIssuerDeferTaskrun)
    }

    /// Sets the tier's flags on `builder`.
    fn apply(self, builder: &mut io_uring::Builder) {
        match self {
            RingMode::SingleIssuerDeferTaskrun => {
                builder
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            RingMode::CoopTaskrun => {
                builder
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            // Without SUBMIT_ALL a failing SQE ends its batch; the rest
            // stay queued for the next enter. Slower to recover, still
            // correct.
            RingMode::Plain => {}
        }
    }
}

impl std::fmt::Display for RingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A ring and how it was set up.
pub(crate) struct Ring {
    pub ring: IoUring,
    /// The setup tier (the log names it).
    pub mode: RingMode,
    /// `IOSQE_CQE_SKIP_SUCCESS` works: cancels post a completion only when
    /// they fail.
    pub skip_success: bool,
}

/// Why io_uring can't be used here, in words for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable(pub String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Opcodes the engine submits.
const OPCODES: [(u8, &str); 3] = [
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::AcceptMulti::CODE, "ACCEPT"),
];

/// Builds a ring with the best setup this kernel takes, and checks the
/// features and opcodes the engine needs.
pub(crate) fn build() -> Result<Ring, Unusable> {
    build_from(0)
}

/// [`build`], skipping the first `first_tier` setup tiers (tests use it to
/// run the fallbacks on a kernel that takes the best).
fn build_from(first_tier: usize) -> Result<Ring, Unusable> {
    let mut last = None;
    for mode in RingMode::TIERS.into_iter().skip(first_tier) {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES).setup_clamp();
        mode.apply(&mut builder);
        match builder.build(SQ_ENTRIES) {
            Ok(ring) => return finish(ring, mode),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(Unusable(describe_setup_error(&e))),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
    Err(Unusable(describe_setup_error(&e)))
}

fn finish(ring: IoUring, mode: RingMode) -> Result<Ring, Unusable> {
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err(Unusable(
            "the kernel's io_uring lacks IORING_FEAT_EXT_ARG (timed waits; Linux 5.11+)".into(),
        ));
    }
    if !params.is_feature_nodrop() {
        return Err(Unusable(
            "the kernel's io_uring lacks IORING_FEAT_NODROP (Linux 5.5+)".into(),
        ));
    }
    let skip_success = params.is_feature_skip_cqe_on_success();
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| Unusable(format!("io_uring opcode probe failed: {e}")))?;
    let missing: Vec<&str> = OPCODES
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(Unusable(format!(
            "the kernel's io_uring lacks opcode(s) {} (blocked, or a kernel older than 5.19)",
            missing.join(", ")
        )));
    }
    Ok(Ring {
        ring,
        mode,
        skip_success,
    })
}

fn describe_setup_error(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (blocked by a seccomp profile such as Docker's default, or by sysctl \
             kernel.io_uring_disabled; allow io_uring or use engine = \"epoll\")"
        }
        Some(libc::ENOSYS) => " (kernel built without io_uring, or a sandbox such as gVisor)",
        Some(libc::ENOMEM) => " (locked-memory limit too low? raise RLIMIT_MEMLOCK)",
        _ => "",
    };
    format!("io_uring_setup failed: {e}{hint}")
}

/// Builds a ring and runs what the engine relies on once, for real:
/// a multishot poll that stays armed across a wake-up and is cancelled by
/// user_data, a multishot accept that accepts and stays armed, and a timed
/// wait. Opcode probes can't tell multishot support (5.13 for poll, 5.19
/// for accept) from the plain opcode. Uses an abstract unix socket, so it
/// needs no network. Returns the setup tier.
///
/// Runs on a short-lived thread of its own: tearing a ring down queues task
/// work (`TWA_SIGNAL`) to the thread that created it, and that makes the
/// creator's next blocking socket call with a timeout fail with `EINTR`
/// (seen in tests that probe and then read). The helper thread takes that
/// hit as it exits.
pub fn self_test() -> Result<RingMode, Unusable> {
    std::thread::Builder::new()
        .name("ringlb-uring-probe".into())
        .spawn(|| self_test_from(0))
        .map_err(|e| Unusable(format!("cannot start the io_uring probe thread: {e}")))?
        .join()
        .map_err(|_| Unusable("the io_uring probe thread panicked".into()))?
}

fn self_test_from(first_tier: usize) -> Result<RingMode, Unusable> {
    let mut ring = build_from(first_tier)?;
    let mode = ring.mode;
    run_self_test(&mut ring.ring).map_err(|e| Unusable(format!("io_uring self-test: {e}")))?;
    Ok(mode)
}

const TEST_POLL: u64 = 1;
const TEST_ACCEPT: u64 = 2;
const TEST_CANCEL: u64 = 3;

fn run_self_test(ring: &mut IoUring) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let efd = std::fs::File::from(sys::eventfd()?);
    let listener = unix_listener()?;
    let addr = listener.local_addr()?;
    let _client = UnixStream::connect_addr(&addr)?;

    let poll = opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(TEST_POLL);
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        .build()
        .user_data(TEST_ACCEPT);
    push(ring, &poll)?;
    push(ring, &accept)?;
    (&efd).write_all(&1u64.to_ne_bytes())?;
    // Both must report once and say they stay armed.
    let (mut polled, mut accepted) = (false, false);
    while !(polled && accepted) {
        for cqe in wait(ring, deadline)? {
            match cqe.user_data() {
                TEST_POLL => {
                    expect_more("multishot poll", &cqe)?;
                    polled = true;
                }
                TEST_ACCEPT => {
                    expect_more("multishot accept", &cqe)?;
                    // SAFETY: a successful accept completion's result is a
                    // new descriptor the kernel installed for us; nobody
                    // else owns it.
                    drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
                    accepted = true;
                }
                _ => {}
            }
        }
    }
    let mut counter = [0u8; 8];
    let _ = (&efd).read(&mut counter);
    // Cancel both by user_data; their final completions must say so.
    push(
        ring,
        &opcode::AsyncCancel::new(TEST_POLL)
            .build()
            .user_data(TEST_CANCEL),
    )?;
    push(
        ring,
        &opcode::AsyncCancel::new(TEST_ACCEPT)
            .build()
            .user_data(TEST_CANCEL),
    )?;
    let (mut poll_done, mut accept_done) = (false, false);
    while !(poll_done && accept_done) {
        for cqe in wait(ring, deadline)? {
            let ended = !cqueue::more(cqe.flags());
            match cqe.user_data() {
                TEST_POLL if ended => poll_done = true,
                TEST_ACCEPT if ended => {
                    if cqe.result() >= 0 {
                        // SAFETY: as above, a fresh descriptor of ours.
                        drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
                    }
                    accept_done = true;
                }
                TEST_CANCEL if cqe.result() < 0 => {
                    return Err(io::Error::other(format!(
                        "cancel by user_data failed: {}",
                        io::Error::from_raw_os_error(-cqe.result())
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn expect_more(what: &str, cqe: &cqueue::Entry) -> io::Result<()> {
    if cqe.result() < 0 {
        return Err(io::Error::other(format!(
            "{what} failed: {}",
            io::Error::from_raw_os_error(-cqe.result())
        )));
    }
    if !cqueue::more(cqe.flags()) {
        return Err(io::Error::other(format!(
            "{what} did not stay armed (kernel too old?)"
        )));
    }
    Ok(())
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: the self-test's requests reference no user memory (poll,
    // accept without an address, cancels by user_data). An fd closed while
    // its request is armed is no memory hazard: the request holds its own
    // file reference until the ring, dropped right after, cancels it.
    unsafe { ring.submission().push(entry) }.map_err(|_| io::Error::other("submission queue full"))
}

/// Submits and waits for at least one completion, until `deadline`.
fn wait(ring: &mut IoUring, deadline: Instant) -> io::Result<Vec<cqueue::Entry>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no completion within 2s",
            ));
        }
        let ts = Timespec::from(left);
        let args = SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        let got: Vec<cqueue::Entry> = ring.completion().collect();
        if !got.is_empty() {
            return Ok(got);
        }
    }
}

/// A listening unix socket at a fresh abstract address (no file, no
/// network namespace needs).
fn unix_listener() -> io::Result<UnixListener> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "ringlb-uring-self-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    );
    use std::os::linux::net::SocketAddrExt;
    UnixListener::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes())?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_setup_tier_passes_the_self_test_on_a_kernel_that_has_it() {
        // This machine's kernel (6.1+) takes the best tier; the others are
        // what older kernels get.
        let modes: Vec<_> = (0..3).map(|t| self_test_from(t).unwrap()).collect();
        if modes[0] == RingMode::SingleIssuerDeferTaskrun {
            assert_eq!(modes, RingMode::TIERS);
        }
    }

    #[test]
    fn ring_modes_keep_their_names_in_the_log() {
        let names = RingMode::TIERS.map(|m| m.to_string());
        assert_eq!(
            names,
            ["single-issuer+defer-taskrun", "coop-taskrun", "plain"]
        );
        let deferred = RingMode::TIERS.map(RingMode::defers_taskrun);
        assert_eq!(deferred, [true, false, false]);
    }

    #[test]
    fn setup_errors_say_what_to_do() {
        let eperm = describe_setup_error(&io::Error::from_raw_os_error(libc::EPERM));
        assert!(
            eperm.contains("seccomp") && eperm.contains("engine = \"epoll\""),
            "{eperm}"
        );
        let enosys = describe_setup_error(&io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(enosys.contains("without io_uring"), "{enosys}");
    }
}
