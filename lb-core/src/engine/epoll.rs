//! The epoll engine (mio): edge-triggered readiness, bytes moved by inline
//! non-blocking `splice(2)` in the worker's state machine. Runs on its
//! worker thread.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::conn::Readiness;
use crate::engine::Engine;
use crate::worker::{self, Reactor, Worker, WorkerSetup};

/// mio's registry as the worker's [`Reactor`].
pub(crate) struct EpollReactor {
    registry: mio::Registry,
}

impl Reactor for EpollReactor {
    fn add(&mut self, fd: RawFd, token: worker::Token) -> io::Result<()> {
        self.registry.register(
            &mut SourceFd(&fd),
            Token(token.raw() as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn remove(&mut self, fd: RawFd, _token: worker::Token, closing: bool) {
        // A closed fd leaves the epoll set by itself: save the syscall.
        if !closing {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }
}

/// Runs a worker on epoll until it is told to stop.
pub(crate) fn run(setup: WorkerSetup) -> Result<(), crate::Error> {
    let mut poll = Poll::new().map_err(|e| crate::Error::io("creating epoll instance", e))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| crate::Error::io("cloning epoll registry", e))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), Token(worker::Token::WAKE.raw() as usize))
            .map_err(|e| crate::Error::io("creating worker waker", e))?,
    );
    setup.control.set_waker(Box::new(move || {
        let _ = waker.wake();
    }));
    let _ = setup.control.engine.set(Engine::Epoll);
    let mut worker = Worker::new(setup, EpollReactor { registry });
    worker
        .start()
        .map_err(|e| crate::Error::io("registering listeners", e))?;
    let mut events = Events::with_capacity(1024);
    while !worker.should_exit() {
        match poll.poll(&mut events, Some(worker.sleep_budget())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(crate::Error::io("waiting for events", e)),
        }
        worker.begin_turn();
        for ev in events.iter() {
            let read_closed = ev.is_read_closed() || ev.is_error();
            let event = Readiness {
                readable: ev.is_readable() || read_closed,
                writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                read_closed,
            };
            worker.on_event(worker::Token::from_raw(ev.token().0 as u64), event);
        }
        worker.end_turn();
    }
    worker.close_all();
    Ok(())
}
