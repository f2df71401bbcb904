//! Pausing, resuming and cancelling a run, and a minimal executor for callers without one.
//!
//! A run is a future that yields every [`YIELD_FUEL`](crate::YIELD_FUEL) units of fuel (at the
//! instrumentation's refuel, or wasmtime's fuel yield under the oracle). [`Controlled`] wraps it:
//! while its [`RunControl`] is paused it returns `Pending` without driving the run (the unit keeps
//! its memory and its progress, and burns no CPU); when cancelled it ends with the `cancelled`
//! abort; when the time it has spent running (paused time not counted) is over the watchdog's
//! limit it ends with the `watchdog` abort. Yields change nothing the unit can observe, so a unit
//! paused and resumed any number of times ends exactly as one run straight through. No timer
//! thread is involved: time is read around each stretch of running.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use herd_protocol::{AbortReason, Outcome};

use crate::Execution;

/// The handle a caller keeps to pause, resume or cancel a running unit.
#[derive(Debug, Default)]
pub struct RunControl {
    paused: AtomicBool,
    cancelled: AtomicBool,
    /// Fuel yields so far: the run has burned about this many times `YIELD_FUEL`.
    yields: std::sync::atomic::AtomicU64,
    /// The task to wake when the run may go on.
    waker: Mutex<Option<Waker>>,
}

impl RunControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stops driving the run at its next yield (within [`YIELD_FUEL`](crate::YIELD_FUEL) fuel).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused run go on.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.wake();
    }

    /// Ends the run at its next yield with the `cancelled` abort, paused or not.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// About how much fuel the unit's code has burned so far (to within
    /// [`YIELD_FUEL`](crate::YIELD_FUEL); fuel charged for host calls shows only in the final
    /// count): its progress, for display only.
    pub fn fuel_so_far(&self) -> u64 {
        self.yields
            .load(Ordering::Relaxed)
            .saturating_mul(crate::YIELD_FUEL)
    }

    fn wake(&self) {
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A run under a [`RunControl`].
pub struct Controlled<F> {
    pub(crate) run: Pin<Box<F>>,
    pub(crate) control: Arc<RunControl>,
    /// Running time allowed before the watchdog aborts the run.
    pub(crate) watchdog: Duration,
    /// Running time so far (paused time not counted).
    pub(crate) ran: Duration,
}

impl<F: Future<Output = Execution>> Future for Controlled<F> {
    type Output = Execution;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Execution> {
        let control = self.control.clone();
        loop {
            if control.cancelled.load(Ordering::SeqCst) {
                return Poll::Ready(Execution {
                    outcome: Outcome::Aborted(AbortReason::Cancelled),
                    output: Vec::new(),
                });
            }
            if self.ran > self.watchdog {
                return Poll::Ready(Execution {
                    outcome: Outcome::Aborted(AbortReason::Watchdog {
                        after_ms: self.watchdog.as_millis() as u64,
                    }),
                    output: Vec::new(),
                });
            }
            if !control.is_paused() {
                let started = Instant::now();
                let polled = self.run.as_mut().poll(cx);
                self.ran += started.elapsed();
                // The run only returns `Pending` at a fuel yield (host calls are synchronous).
                if polled.is_pending() {
                    control.yields.fetch_add(1, Ordering::Relaxed);
                }
                return polled;
            }
            *control.waker.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(cx.waker().clone());
            // Resumed or cancelled between the check and storing the waker: look again.
            if control.is_paused() && !control.cancelled.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future to completion on the current thread, parking while it is pending.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
