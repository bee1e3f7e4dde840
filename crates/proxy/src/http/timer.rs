//! One timer per client connection for all its deadlines (waiting for a request, waiting for a
//! response head), re-armed lazily: a new deadline later than the armed one leaves the timer as
//! it is, and when it fires early it is moved to the deadline then in force. Nor is it polled
//! again while it holds the task's waker from an earlier wait: only whether it fired is read.
//! Most requests therefore touch no timer at all; the only per-request cost is reading the clock.
//!
//! A connection's timer is only ever polled by that connection's task, so the waker it holds is
//! always the right one.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// A lazily re-armed timer.
#[derive(Debug)]
pub struct LazyTimer {
    /// Armed at `sleep.deadline()` unless `armed` is false.
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    /// The sleep holds the task's waker: polled since it was last reset or fired.
    registered: bool,
}

impl LazyTimer {
    /// A timer not armed yet.
    pub fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: false,
            registered: false,
        }
    }

    /// Completes at `deadline` (never earlier). Cancel-safe: dropping the future leaves the timer
    /// armed for the next wait.
    pub async fn until(&mut self, deadline: Instant) {
        if !self.armed || self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
            self.armed = true;
            self.registered = false;
        }
        poll_fn(|cx| {
            loop {
                if self.registered && !self.sleep.is_elapsed() {
                    return Poll::Pending;
                }
                if self.sleep.as_mut().poll(cx).is_pending() {
                    self.registered = true;
                    return Poll::Pending;
                }
                if Instant::now() >= deadline {
                    self.armed = false;
                    self.registered = false;
                    return Poll::Ready(());
                }
                // Fired for an earlier deadline: move on to this one.
                self.sleep.as_mut().reset(deadline);
                self.registered = false;
            }
        })
        .await
    }
}

impl Default for LazyTimer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_and_an_earlier_one_rearms() {
        let mut timer = LazyTimer::new();
        let start = Instant::now();
        // Armed for 10 s, but the wait is abandoned after 1 s.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            timer.until(start + Duration::from_secs(10)),
        )
        .await;
        // A later deadline: the timer fires at 10 s, then moves on to 30 s.
        timer.until(start + Duration::from_secs(30)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // An earlier deadline than the armed one re-arms at once.
        let mut timer = LazyTimer::new();
        let _ = tokio::time::timeout(
            Duration::from_millis(1),
            timer.until(start + Duration::from_secs(100)),
        )
        .await;
        let now = Instant::now();
        timer.until(now + Duration::from_millis(300)).await;
        assert_eq!(Instant::now() - now, Duration::from_millis(300));
    }
}
