//! The idle timeout of an HTTP/2 client connection (the listener's `idle_timeout`): its streams
//! are counted from the arrival of a request to the end of its response body (or the client's
//! reset), and a connection that has had no stream for the timeout is sent GOAWAY and closed.
//! hyper keeps no such count: only a listener with the timeout pays for this one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The streams of one connection.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Told when the last open stream ends.
    quiet: Notify,
}

#[derive(Debug)]
struct State {
    open: usize,
    idle_since: Instant,
}

impl Activity {
    /// A connection that opened now, without a stream.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                open: 0,
                idle_since: Instant::now(),
            }),
            quiet: Notify::new(),
        })
    }

    /// Counts a stream as open until the token is dropped.
    pub fn stream(self: &Arc<Self>) -> OpenStream {
        self.lock().open += 1;
        OpenStream(self.clone())
    }

    /// When the connection will have been without a stream for `timeout`: `None` while a stream
    /// is open.
    pub fn idle_until(&self, timeout: Duration) -> Option<Instant> {
        let state = self.lock();
        (state.open == 0).then(|| state.idle_since + timeout)
    }

    /// Waits until the last open stream ends.
    pub async fn quiet(&self) {
        self.quiet.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A stream counted as open.
#[derive(Debug)]
pub struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open -= 1;
        if state.open == 0 {
            state.idle_since = Instant::now();
            drop(state);
            self.0.quiet.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_from_the_end_of_its_last_stream() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let opened = Instant::now();
        assert_eq!(activity.idle_until(timeout), Some(opened + timeout));
        let first = activity.stream();
        let second = activity.stream();
        assert_eq!(activity.idle_until(timeout), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(first);
        assert_eq!(activity.idle_until(timeout), None, "one stream is still open");
        tokio::time::advance(Duration::from_secs(4)).await;
        let quiet = activity.quiet();
        tokio::pin!(quiet);
        assert!(futures_poll(&mut quiet).is_pending());
        drop(second);
        assert!(
            futures_poll(&mut quiet).is_ready(),
            "the last stream's end is told"
        );
        assert_eq!(
            activity.idle_until(timeout),
            Some(opened + Duration::from_secs(7) + timeout)
        );
    }

    fn futures_poll<F: Future>(future: &mut Pin<&mut F>) -> Poll<F::Output> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
    }
}
