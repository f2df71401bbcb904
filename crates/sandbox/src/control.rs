//! Pausing, resuming and cancelling a run, and a minimal executor for callers without one.
//!
//! A run is a future that wasmtime makes yield every [`YIELD_FUEL`](crate::YIELD_FUEL) units of
//! fuel. [`Controlled`] wraps it: while its [`RunControl`] is paused it returns `Pending` without
//! driving the run (the unit keeps its memory and its progress, and burns no CPU); when cancelled it
//! ends with the `cancelled` abort. Yields change nothing the unit can observe, so a unit paused and
//! resumed any number of times ends exactly as one run straight through.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

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
    pub(crate) clock: Arc<WatchdogClock>,
}

/// Whether any unit is executing now, so the watchdog's clock ticks only then: an idle worker
/// (no unit, or every unit paused) has no thread waking a hundred times a second.
#[derive(Debug, Default)]
pub(crate) struct WatchdogClock {
    executing: std::sync::atomic::AtomicUsize,
    thread: Mutex<Option<Thread>>,
}

impl WatchdogClock {
    pub(crate) fn set_thread(&self, thread: Thread) {
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.executing.load(Ordering::SeqCst) == 0
    }

    pub(crate) fn wake(&self) {
        if let Some(thread) = &*self.thread.lock().unwrap_or_else(PoisonError::into_inner) {
            thread.unpark();
        }
    }

    /// Counts a stretch of execution (one poll of a run) for as long as the guard lives.
    fn executing(&self) -> Executing<'_> {
        if self.executing.fetch_add(1, Ordering::SeqCst) == 0 {
            self.wake();
        }
        Executing(self)
    }
}

struct Executing<'a>(&'a WatchdogClock);

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        self.0.executing.fetch_sub(1, Ordering::SeqCst);
    }
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
            if !control.is_paused() {
                let clock = self.clock.clone();
                let _executing = clock.executing();
                let polled = self.run.as_mut().poll(cx);
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
