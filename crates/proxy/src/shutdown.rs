//! A worker's shutdown signal, with coarse deadlines for connections that wait idle: one registry
//! per worker in which a connection registers its waker once, the first time it waits; later polls
//! only read a flag. (A `CancellationToken` shared by every connection would take a lock each time
//! a connection's task wakes, and a tokio timer per idle connection costs it more memory than the
//! rest of its state.)
//!
//! The worker triggers the signal once the process is asked to stop; HTTP connections then close
//! when idle and after the response in progress. The worker also sweeps the registry every
//! [`SWEEP`], waking the connections whose deadline passed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use slab::Slab;
use tokio::time::Instant;

/// How often a worker looks for connections whose deadline passed (their precision).
pub const SWEEP: Duration = Duration::from_secs(1);

/// Why a [`ShutdownListener`] completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The worker shuts down.
    Shutdown,
    /// The listener's deadline passed.
    Expired,
}

#[derive(Debug)]
struct Waiter {
    waker: Waker,
    deadline: Option<Instant>,
    expired: bool,
}

/// A listener not registered yet.
const UNREGISTERED: usize = usize::MAX;

/// One worker's signal and the connections waiting on it.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Set once, never cleared.
    triggered: AtomicBool,
    /// Connections waiting.
    waiters: Mutex<Slab<Waiter>>,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether shutdown was triggered.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    /// Triggers it and wakes every waiter.
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for (_, waiter) in waiters {
            waiter.waker.wake();
        }
    }

    /// Wakes the waiters whose deadline is at or before `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut waiters = self.waiters.lock();
        let mut woken = 0;
        for (_, waiter) in waiters.iter_mut() {
            if !waiter.expired && waiter.deadline.is_some_and(|d| d <= now) {
                waiter.expired = true;
                waiter.waker.wake_by_ref();
                woken += 1;
            }
        }
        woken
    }

    /// A future that completes once shutdown is triggered; keep it for a connection's lifetime.
    pub fn listen(self: &Arc<Self>) -> ShutdownListener {
        ShutdownListener {
            shutdown: self.clone(),
            key: UNREGISTERED,
            has_deadline: false,
            waker_set: false,
        }
    }
}

/// Completes when its worker shuts down, or when its deadline (if any) passed. Registers its
/// task's waker on the first pending poll only: it must always be polled from the same task.
#[derive(Debug)]
pub struct ShutdownListener {
    shutdown: Arc<Shutdown>,
    /// Slot in the registry, or [`UNREGISTERED`] (kept small: idle connections hold one).
    key: usize,
    /// A deadline is set (it lives in the registry).
    has_deadline: bool,
    /// The registry holds this task's waker (not the placeholder `set_deadline` registers with).
    waker_set: bool,
}

impl ShutdownListener {
    /// Whether shutdown was triggered.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Sets (or clears) the deadline; it passes at most [`SWEEP`] late. Registers the listener
    /// (with a waker that does nothing until its first poll) if it was not.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.has_deadline = deadline.is_some();
        let mut waiters = self.shutdown.waiters.lock();
        match waiters.get_mut(self.key) {
            Some(waiter) => {
                waiter.deadline = deadline;
                waiter.expired = false;
            }
            None if self.shutdown.is_triggered() || deadline.is_none() => {}
            None => {
                self.key = waiters.insert(Waiter {
                    waker: Waker::noop().clone(),
                    deadline,
                    expired: false,
                });
            }
        }
    }
}

impl Future for ShutdownListener {
    type Output = Wake;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        let this = self.get_mut();
        if this.shutdown.is_triggered() {
            return Poll::Ready(Wake::Shutdown);
        }
        if this.waker_set && !this.has_deadline {
            // Registered with this task's waker already: nothing to update.
            return Poll::Pending;
        }
        let mut waiters = this.shutdown.waiters.lock();
        // Checked again under the lock: `trigger` empties the list after setting the flag.
        if this.shutdown.is_triggered() {
            return Poll::Ready(Wake::Shutdown);
        }
        match waiters.get_mut(this.key) {
            Some(waiter) if waiter.expired => Poll::Ready(Wake::Expired),
            Some(waiter) => {
                if !waiter.waker.will_wake(cx.waker()) {
                    waiter.waker = cx.waker().clone();
                }
                this.waker_set = true;
                Poll::Pending
            }
            None => {
                this.key = waiters.insert(Waiter {
                    waker: cx.waker().clone(),
                    deadline: None,
                    expired: false,
                });
                this.waker_set = true;
                Poll::Pending
            }
        }
    }
}

impl Drop for ShutdownListener {
    fn drop(&mut self) {
        if self.key != UNREGISTERED {
            let mut waiters = self.shutdown.waiters.lock();
            // After a trigger the list was emptied.
            if !self.shutdown.is_triggered() {
                waiters.try_remove(self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_wakes_on_trigger_and_dropped_ones_leave_the_list() {
        let shutdown = Shutdown::new();
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(shutdown.listen())).collect();
        let dropped = shutdown.listen();
        drop(dropped);
        tokio::task::yield_now().await;
        assert_eq!(shutdown.waiters.lock().len(), 3);
        shutdown.trigger();
        for task in waiting {
            let wake = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("woken")
                .unwrap();
            assert_eq!(wake, Wake::Shutdown);
        }
        assert!(shutdown.listen().is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_at_the_first_sweep_after_it() {
        let shutdown = Shutdown::new();
        let start = Instant::now();
        let mut listener = shutdown.listen();
        listener.set_deadline(Some(start + Duration::from_millis(2500)));
        let sweeper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(SWEEP);
                loop {
                    ticks.tick().await;
                    shutdown.expire(Instant::now());
                }
            })
        };
        assert_eq!(listener.await, Wake::Expired);
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        // A listener whose deadline was cleared keeps waiting.
        let mut patient = shutdown.listen();
        patient.set_deadline(Some(Instant::now()));
        patient.set_deadline(None);
        assert!(
            tokio::time::timeout(Duration::from_secs(10), &mut patient)
                .await
                .is_err(),
            "no deadline, no wake"
        );
        sweeper.abort();
    }
}
