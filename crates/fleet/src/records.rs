//! The JSON values stored under the keys of `keys`: what a node registers, the fleet's notice of
//! a VM, and a node's acknowledgement of it.

use handover_core::model::{RestoreMode, VmId};
use handover_core::phase::{Notice, VmState};
use handover_core::time::Millis;
use serde::{Deserialize, Serialize};

/// A node's registration (`nodes/<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name.
    pub node: String,
    /// Its control API, `http://HOST:PORT`.
    pub control: String,
    /// Every VM it serves.
    pub vms: Vec<VmId>,
    /// When it registered (ms since the Unix epoch).
    pub registered_at: Millis,
    /// handover's version.
    pub version: String,
}

/// One pool (or driven HAProxy/nginx) of a node, as the fleet needs it to decide a notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedPool {
    /// Pool, HAProxy or nginx name on that node.
    pub name: String,
    /// Every VM of the pool (the capacity guard counts the others).
    pub vms: Vec<VmId>,
    /// Deadline of a migration, ms.
    pub deadline_ms: u64,
    /// Ramp window, ms.
    pub ramp_ms: u64,
    /// Restore after failed, cancelled or deadline.
    pub restore: RestoreMode,
    /// Capacity guard: fewest backends not draining.
    pub min_active: usize,
    /// Capacity guard: most VMs draining or migrating at once.
    pub max_concurrent: Option<usize>,
    /// Drained means at most this many connections and in-flight requests.
    pub drained_threshold: u64,
}

/// A node's registration as a balancer of one VM (`vm/<vm>/serves/<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServesRecord {
    /// The node.
    pub node: String,
    /// Its pools that have the VM.
    pub pools: Vec<ServedPool>,
}

/// The fleet's phase of a VM (`notices/<vm>`). Its mod revision is the notice's *generation*.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// The last notice that changed it (absent when a deadline did).
    pub notice: Option<Notice>,
    /// The VM's state: phase, drain start, deadline, ramp (wall-clock ms).
    pub state: VmState,
    /// The node that wrote it.
    pub by: String,
    /// When it was written.
    pub at: Millis,
}

/// A node's acknowledgement of a VM's notice (`vm/<vm>/acks/<node>`); its JSON is also part of the
/// control API's `GET /v1/fleet`, so the type lives with the API's shapes in core.
pub use handover_core::api::fleet::AckRecord;

/// Decodes a record, naming the key when it is not what handover writes.
pub fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| {
        format!(
            "etcd key {}: not a handover record ({e})",
            String::from_utf8_lossy(key)
        )
    })
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialise")
}
