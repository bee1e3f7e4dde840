//! Holding QEMU's switchover, for switchover quiescence: the best mechanism QEMU (10.0) offers.
//!
//! QEMU has no hook between the last pass and stopping the guest: `pause-before-switchover` pauses
//! *after* the guest is stopped (inside the blackout, so requests in flight are frozen with it),
//! and `switchover-ack` waits for devices on the destination, not for anyone on the source. A
//! `switchover-hold` parameter was proposed in 2023 (an RFC on qemu-devel) but QEMU 10.0 does not
//! have it. What QEMU does have is its stop rule: it switches over when a pass leaves less than
//! `expected bandwidth × downtime-limit` to copy, where the expected bandwidth is
//! `avail-switchover-bandwidth` when set. A hold, measured with `handover testbed hold`
//! (docs/adaptive.md has the numbers), is made in two stages:
//!
//! 1. `downtime-limit` 1 ms and `avail-switchover-bandwidth` 1000 B/s: a one-byte threshold, so QEMU
//!    switches over only after a pass in which the guest dirtied no page. The copy goes on at full
//!    speed meanwhile, so holding costs nothing until the copy is where it would have switched
//!    over. But once there, passes are tiny and follow each other quickly, and a guest that
//!    dirties little soon leaves one pass clean: the hold slips. (A `downtime-limit` of 0 is worse
//!    than useless: QEMU then takes its *estimate* of 0 bytes at the end of a pass as final and
//!    switches over without syncing, sending everything dirtied during that pass in the blackout.)
//! 2. Shortly before the copy is where it would have switched over (the caller's forecast says so,
//!    or a new pass is already small enough), also `max-bandwidth` 1000 B/s: QEMU's rate limiter
//!    then spaces its passes by its 100 ms window, so a clean pass becomes unlikely while anything
//!    runs in the guest. Crawling from the start would hold as firmly but stall the copy for the
//!    whole hold; crawling only once the small passes began would come too late (they follow each
//!    other within milliseconds, faster than anyone polls).
//!
//! Releasing restores the parameters; QEMU re-evaluates its stop rule within its 100 ms bandwidth
//! window. `handover migrate` bounds a hold with the pool's `quiesce_hold`.

use serde_json::{Value, json};

use super::client::{QmpClient, QmpError};

/// How long before the forecast switchover the hold begins to crawl.
pub const CRAWL_AHEAD_MS: u64 = 500;

/// The parameters a hold changes, with QEMU's values before it.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchoverHold {
    saved: Value,
    /// The switchover threshold in bytes per (bytes/s of bandwidth): the saved `downtime-limit`, s.
    limit_s: f64,
    /// Stage 2 is on.
    crawling: bool,
    /// `dirty-sync-count` at the last look.
    syncs: Option<u64>,
}

impl SwitchoverHold {
    /// Holds the switchover (stage 1): saves the three parameters, then sets the one-byte threshold.
    pub async fn hold(client: &QmpClient) -> Result<Self, QmpError> {
        let current = client.execute("query-migrate-parameters", None).await?;
        let mut saved = serde_json::Map::new();
        for key in ["max-bandwidth", "downtime-limit", "avail-switchover-bandwidth"] {
            if let Some(value) = current.get(key) {
                saved.insert(key.to_string(), value.clone());
            }
        }
        let limit_s = saved
            .get("downtime-limit")
            .and_then(Value::as_f64)
            .unwrap_or(300.0)
            / 1000.0;
        let mut held = json!({ "downtime-limit": 1 });
        // QEMU before 8.2 has no avail-switchover-bandwidth: the 1 ms limit alone must do there.
        if saved.contains_key("avail-switchover-bandwidth") {
            held["avail-switchover-bandwidth"] = json!(1000);
        }
        client.execute("migrate-set-parameters", Some(held)).await?;
        Ok(Self {
            saved: Value::Object(saved),
            limit_s,
            crawling: false,
            syncs: None,
        })
    }

    /// Stage 2 when due: the copy crawls once the switchover QEMU would have made is forecast
    /// within [`CRAWL_AHEAD_MS`] (`switchover_in_ms`), or a pass begun since the last look
    /// (`syncs` grew) has `remaining` bytes that fit in the threshold QEMU had at `bandwidth`
    /// (bytes/s). Returns whether it crawls.
    pub async fn tighten(
        &mut self,
        client: &QmpClient,
        remaining: Option<u64>,
        bandwidth: Option<f64>,
        syncs: Option<u64>,
        switchover_in_ms: Option<u64>,
    ) -> Result<bool, QmpError> {
        let new_pass = match (self.syncs, syncs) {
            (Some(before), Some(now)) => now > before,
            _ => false,
        };
        if syncs.is_some() {
            self.syncs = syncs;
        }
        let small_pass = match (remaining, bandwidth) {
            (Some(remaining), Some(bandwidth)) => new_pass && remaining as f64 <= bandwidth * self.limit_s,
            _ => false,
        };
        let due = small_pass || switchover_in_ms.is_some_and(|ms| ms <= CRAWL_AHEAD_MS);
        if due && !self.crawling {
            client
                .execute("migrate-set-parameters", Some(json!({ "max-bandwidth": 1000 })))
                .await?;
            self.crawling = true;
        }
        Ok(self.crawling)
    }

    /// Lets the switchover go: restores the parameters saved by [`SwitchoverHold::hold`].
    pub async fn release(self, client: &QmpClient) -> Result<(), QmpError> {
        client
            .execute("migrate-set-parameters", Some(self.saved))
            .await
            .map(|_| ())
    }
}
