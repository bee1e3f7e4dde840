//! A worker's shutdown signal, cheap enough to sit in every connection's wait: a connection
//! registers its waker once, the first time it waits, and later polls only read a flag. (A
//! `CancellationToken` shared by every connection would take a lock each time a connection's
//! task wakes.) The worker triggers it once the process is asked to stop; HTTP connections then
//! close when idle and after the response in progress.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use slab::Slab;

/// One worker's signal.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Set once, never cleared.
    triggered: AtomicBool,
    /// Connections waiting for it.
    waiters: Mutex<Slab<Waker>>,
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
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// A future that completes once shutdown is triggered; keep it for a connection's lifetime.
    pub fn listen(self: &Arc<Self>) -> ShutdownListener {
        ShutdownListener {
            shutdown: self.clone(),
            key: None,
        }
    }
}

/// Completes when its worker shuts down. Registers its task's waker on the first pending poll
/// only: it must always be polled from the same task.
#[derive(Debug)]
pub struct ShutdownListener {
    shutdown: Arc<Shutdown>,
    key: Option<usize>,
}

impl ShutdownListener {
    /// Whether shutdown was triggered.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.shutdown.is_triggered()
    }
}

impl Future for ShutdownListener {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        if this.key.is_none() {
            let mut waiters = this.shutdown.waiters.lock();
            // Checked again under the lock: `trigger` empties the list after setting the flag.
            if this.shutdown.is_triggered() {
                return Poll::Ready(());
            }
            this.key = Some(waiters.insert(cx.waker().clone()));
        }
        Poll::Pending
    }
}

impl Drop for ShutdownListener {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut waiters = self.shutdown.waiters.lock();
            // After a trigger the list was emptied (and the key may be reused by nobody).
            if !self.shutdown.is_triggered() {
                waiters.try_remove(key);
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
        let waiting: Vec<_> = (0..3)
            .map(|_| tokio::spawn(shutdown.listen()))
            .collect();
        let dropped = shutdown.listen();
        drop(dropped);
        tokio::task::yield_now().await;
        assert_eq!(shutdown.waiters.lock().len(), 3);
        shutdown.trigger();
        for task in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .expect("woken")
                .unwrap();
        }
        assert!(shutdown.listen().is_triggered());
    }
}
