//! Dirty-rate probes and the migration parameters the adaptive drain decides with.
//!
//! QEMU reports its own dirty rate only at the end of a pass that lasted a second or more, so a
//! long first pass would go unmeasured until it ends. `calc-dirty-rate` in page-sampling mode
//! measures at any time, also during a migration (measured here with QEMU 10.0 under TCG): it
//! hashes a sample of pages at the start and at the end of a window and counts those that changed.
//! A [`Prober`] keeps one such measurement going at a time and hands each result on.
//!
//! Sampling cost is bounded: about [`SAMPLED_PAGES`] pages per probe whatever the guest's size,
//! within QEMU's limits of 128 to 16,384 pages per GiB. QEMU reports the rate in whole MiB/s.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use handover_core::adaptive::Probe;
use serde_json::{Value, json};

use super::client::{QmpClient, QmpError};

/// Window of a probe (`calc-time`).
pub const PROBE_WINDOW: Duration = Duration::from_secs(1);
/// Pages sampled per probe, spread over the guest's memory.
pub const SAMPLED_PAGES: u64 = 8192;
/// QEMU's bounds on `sample-pages` (per GiB).
const SAMPLE_PAGES_PER_GIB: (u64, u64) = (128, 16_384);
/// Give up on a measurement this long after its window should have ended.
const GRACE: Duration = Duration::from_secs(2);

/// `sample-pages` (per GiB) for a guest of `memory_bytes`, so that a probe samples about
/// [`SAMPLED_PAGES`] pages.
pub fn sample_pages_per_gib(memory_bytes: Option<u64>) -> u64 {
    let gib = memory_bytes.map_or(1.0, |b| (b as f64 / (1u64 << 30) as f64).max(1e-3));
    ((SAMPLED_PAGES as f64 / gib) as u64).clamp(SAMPLE_PAGES_PER_GIB.0, SAMPLE_PAGES_PER_GIB.1)
}

/// The guest's RAM, from `query-memory-size-summary`.
pub async fn memory_size(client: &QmpClient) -> Result<Option<u64>, QmpError> {
    let reply = client.execute("query-memory-size-summary", None).await?;
    Ok(reply.get("base-memory").and_then(Value::as_u64))
}

/// QEMU's `max-bandwidth` (bytes/s) and `downtime-limit` (ms).
pub async fn parameters(client: &QmpClient) -> Result<(Option<u64>, Option<u64>), QmpError> {
    let reply = client.execute("query-migrate-parameters", None).await?;
    Ok((
        reply.get("max-bandwidth").and_then(Value::as_u64),
        reply.get("downtime-limit").and_then(Value::as_u64),
    ))
}

/// Milliseconds since the Unix epoch (the coordinator's clock).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One dirty-rate measurement after another.
#[derive(Debug, Clone)]
pub struct Prober {
    sample_pages: u64,
    started: Option<Instant>,
}

impl Prober {
    /// A prober for a guest of `memory_bytes`.
    pub fn new(memory_bytes: Option<u64>) -> Self {
        Self {
            sample_pages: sample_pages_per_gib(memory_bytes),
            started: None,
        }
    }

    /// Collects the running measurement once its window passed (returning it), or starts one when
    /// none runs.
    pub async fn tick(&mut self, client: &QmpClient) -> Result<Option<Probe>, QmpError> {
        let mut collected = None;
        if let Some(started) = self.started
            && started.elapsed() >= PROBE_WINDOW
        {
            let reply = client.execute("query-dirty-rate", None).await?;
            match reply.get("status").and_then(Value::as_str) {
                Some("measured") => {
                    let mib_s = reply.get("dirty-rate").and_then(Value::as_f64).unwrap_or(0.0);
                    collected = Some(Probe {
                        bytes_per_s: mib_s.max(0.0) * 1024.0 * 1024.0,
                        window_ms: PROBE_WINDOW.as_millis() as u64,
                        at: now_ms(),
                    });
                    self.started = None;
                }
                // Still measuring (the window just ended); give it a little longer.
                _ if started.elapsed() < PROBE_WINDOW + GRACE => return Ok(None),
                _ => self.started = None,
            }
        }
        if self.started.is_none() && collected.is_none() {
            client
                .execute(
                    "calc-dirty-rate",
                    Some(json!({
                        "calc-time": PROBE_WINDOW.as_secs(),
                        "mode": "page-sampling",
                        "sample-pages": self.sample_pages,
                    })),
                )
                .await?;
            self.started = Some(Instant::now());
        }
        Ok(collected)
    }

    /// One whole measurement: starts one (unless one runs), waits its window, collects it.
    pub async fn measure(&mut self, client: &QmpClient) -> Result<Option<Probe>, QmpError> {
        if self.started.is_none() {
            self.tick(client).await?;
        }
        let deadline = Instant::now() + PROBE_WINDOW + GRACE;
        tokio::time::sleep(PROBE_WINDOW).await;
        loop {
            if let Some(probe) = self.tick(client).await? {
                return Ok(Some(probe));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_samples_about_the_same_number_of_pages_whatever_the_guest() {
        assert_eq!(sample_pages_per_gib(Some(128 << 20)), 16_384);
        assert_eq!(sample_pages_per_gib(Some(1 << 30)), 8192);
        assert_eq!(sample_pages_per_gib(Some(8 << 30)), 1024);
        assert_eq!(sample_pages_per_gib(Some(256 << 30)), 128);
        assert_eq!(sample_pages_per_gib(None), 8192);
    }
}
