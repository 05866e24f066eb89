//! Holding every port's connection thread still, for an in-place upgrade (`--takeover`).
//!
//! A vhost-user connection can be handed to another process only between two messages: a
//! message read but not answered would be lost to both. So each connection thread waits in
//! `poll()` on its socket and on the pause eventfd; when a pause is requested it parks at
//! that message boundary and deposits what it serves (listener, connection, device
//! handler). The new process is handed those; until it has taken over, the old one can
//! resume as if nothing happened. The [`Gate`] is the other side: the new process's adopted
//! connections wait on it until the old process is gone.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::backend::DeviceHandler;
use super::{Link, Port};

/// What a parked connection thread serves, as it left it.
pub struct Parked {
    pub port: Arc<Port>,
    /// A server-mode port's listening socket (a duplicate).
    pub listener: Option<UnixListener>,
    /// The connected frontend, if one is.
    pub session: Option<ParkedSession>,
    /// Why a socket could not be duplicated (out of fds): the takeover must not go on.
    pub problem: Option<String>,
}

/// A connected frontend at a message boundary.
pub struct ParkedSession {
    /// A duplicate of the vhost-user socket.
    pub stream: UnixStream,
    pub handler: Arc<Mutex<DeviceHandler>>,
    pub link: Arc<Link>,
}

#[derive(Default)]
struct State {
    requested: bool,
    committed: bool,
    /// Connection threads running (each registered with [`Pause::enter`]).
    threads: usize,
    parked: Vec<Parked>,
}

/// The switch-wide pause of connection threads.
pub struct Pause {
    /// Readable while a pause is requested (level-triggered: nobody reads it but `resume`).
    event: EventFd,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, thiserror::Error)]
#[error("{parked} of {threads} port connection threads paused within {waited:?} (one is busy with a vhost-user message)")]
pub struct PauseTimeout {
    pub parked: usize,
    pub threads: usize,
    pub waited: Duration,
}

/// A connection thread's registration; unregisters when dropped (the thread ends).
pub struct Registration<'a>(&'a Pause);

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.0.lock().threads -= 1;
        self.0.changed.notify_all();
    }
}

impl Pause {
    pub fn new() -> std::io::Result<Pause> {
        let event =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)?;
        Ok(Pause {
            event,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fd to poll beside a socket: readable while a pause is requested.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }

    /// Counts a connection thread in, for as long as the registration lives.
    pub fn enter(&self) -> Registration<'_> {
        self.lock().threads += 1;
        Registration(self)
    }

    pub fn requested(&self) -> bool {
        self.lock().requested
    }

    /// Parks the calling connection thread with what it serves, until the pause ends. Once
    /// the pause is committed (another process serves the sockets now) it never returns: the
    /// process is about to exit, and the thread must not touch its sockets again.
    pub fn park(&self, parked: Parked) {
        let mut state = self.lock();
        if !state.requested {
            return;
        }
        state.parked.push(parked);
        self.changed.notify_all();
        while state.requested || state.committed {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Asks every connection thread to park and waits until all have (or `timeout`); returns
    /// what they serve. On a timeout the pause is lifted again.
    pub fn pause_all(&self, timeout: Duration) -> Result<Vec<Parked>, PauseTimeout> {
        let start = Instant::now();
        let mut state = self.lock();
        state.requested = true;
        let _ = self.event.write(1);
        while state.parked.len() < state.threads {
            let waited = start.elapsed();
            if waited >= timeout {
                let err = PauseTimeout {
                    parked: state.parked.len(),
                    threads: state.threads,
                    waited,
                };
                drop(state);
                self.resume();
                return Err(err);
            }
            state = self
                .changed
                .wait_timeout(state, timeout - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(state.parked.drain(..).collect())
    }

    /// Lets every parked thread go on as before.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.requested = false;
        state.parked.clear();
        let _ = self.event.read();
        drop(state);
        self.changed.notify_all();
    }

    /// The sockets belong to another process now: parked threads stay parked for good.
    pub fn commit(&self) {
        self.lock().committed = true;
    }
}

/// Closed until the process may serve the connections it adopted (the old process is gone).
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    pub fn open() -> Gate {
        Gate {
            open: Mutex::new(true),
            opened: Condvar::new(),
        }
    }

    pub fn closed() -> Gate {
        Gate::default()
    }

    pub fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn let_through(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }
}
