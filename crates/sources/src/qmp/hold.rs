//! Holding QEMU's switchover, for switchover quiescence: the best mechanism QEMU (10.0) offers.
//!
//! QEMU has no hook between the last pass and stopping the guest: `pause-before-switchover` pauses
//! *after* the guest is stopped (inside the blackout, so requests in flight are frozen with it),
//! and `switchover-ack` waits for devices on the destination, not for anyone on the source. A
//! `switchover-hold` parameter was proposed in 2023 (an RFC on qemu-devel) but QEMU 10.0 does not
//! have it. What QEMU does have is its stop rule: it switches over when a pass leaves less than
//! `expected bandwidth × downtime-limit` to copy, where the expected bandwidth is
//! `avail-switchover-bandwidth` when set. A hold therefore sets:
//!
//! - `downtime-limit` 1 ms and `avail-switchover-bandwidth` 1000 bytes/s: the threshold becomes one
//!   byte, so QEMU switches over only after a pass in which the guest dirtied no page at all. (A
//!   `downtime-limit` of 0 is worse than useless: QEMU 10 then takes its *estimate* of 0 bytes at
//!   the end of a pass as final and switches over without syncing, sending everything dirtied
//!   during that pass inside the blackout — measured here: 16 MiB.)
//! - `max-bandwidth` 1000 bytes/s: the copy crawls (QEMU still sends about a megabyte a second
//!   through its rate limiter, measured here), so passes grow long and a pass with no dirty page
//!   becomes unlikely while anything runs in the guest.
//!
//! Releasing restores the three parameters; QEMU re-evaluates its stop rule within its 100 ms
//! bandwidth window. What a hold costs is the time it lasts (the copy barely moves meanwhile) plus
//! what the guest dirties during it; `handover migrate` bounds it with the pool's `quiesce_hold`.

use serde_json::{Value, json};

use super::client::{QmpClient, QmpError};

/// The parameters a hold changes, with QEMU's values before it.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchoverHold {
    saved: Value,
}

impl SwitchoverHold {
    /// Holds the switchover: saves the three parameters, then sets them.
    pub async fn hold(client: &QmpClient) -> Result<Self, QmpError> {
        let current = client.execute("query-migrate-parameters", None).await?;
        let mut saved = serde_json::Map::new();
        for key in ["max-bandwidth", "downtime-limit", "avail-switchover-bandwidth"] {
            if let Some(value) = current.get(key) {
                saved.insert(key.to_string(), value.clone());
            }
        }
        let mut held = json!({ "max-bandwidth": 1000, "downtime-limit": 1 });
        // QEMU before 8.2 has no avail-switchover-bandwidth: the 1 ms limit alone must do there.
        if saved.contains_key("avail-switchover-bandwidth") {
            held["avail-switchover-bandwidth"] = json!(1000);
        }
        client.execute("migrate-set-parameters", Some(held)).await?;
        Ok(Self {
            saved: Value::Object(saved),
        })
    }

    /// Lets the switchover go: restores the parameters saved by [`SwitchoverHold::hold`].
    pub async fn release(self, client: &QmpClient) -> Result<(), QmpError> {
        client
            .execute("migrate-set-parameters", Some(self.saved))
            .await
            .map(|_| ())
    }
}
