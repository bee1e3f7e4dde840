//! The adaptive drain in a fleet. The node whose coordinator runs a VM's controller (the one that
//! hears the hypervisor's progress) writes each new level into the VM's notice, so every serving
//! node's watcher applies the same share, as it applies a phase; the write is a compare-and-swap
//! on the notice's generation, so a level never overwrites a newer phase, and a notice that is no
//! longer draining or migrating takes no level. For quiescence, that node reads what the other
//! serving nodes still have in flight to the VM from their acknowledgements (each node refreshes
//! its own every 100 ms while the VM drains).

use handover_core::adaptive::Level;
use handover_core::model::VmId;
use tracing::debug;

use crate::etcd::{EtcdError, get_op, mod_revision_is, put_op, range_kvs};
use crate::node::{FleetNode, now_ms};
use crate::records::{AckRecord, NoticeRecord, decode, encode};

/// Tries before a notice that keeps changing is left with its own level (the next step writes
/// again).
const MAX_RACES: usize = 3;

impl FleetNode {
    /// Writes `level` into `vm`'s notice while the VM drains or migrates. Returns whether it was
    /// written (`false`: no notice, the VM is not drained, or it already has that level).
    pub async fn publish_level(&self, vm: &VmId, level: Level) -> Result<bool, EtcdError> {
        let key = self.keys.notice(vm);
        for _ in 0..MAX_RACES {
            let read = self.etcd.txn(Vec::new(), vec![get_op(&key)], Vec::new()).await?;
            let Some(kv) = range_kvs(&read, 0).into_iter().next() else {
                return Ok(false);
            };
            let Ok(mut record) = decode::<NoticeRecord>(&kv.key, &kv.value) else {
                return Ok(false);
            };
            if !record.state.phase.is_drained() || record.state.level == Some(level) {
                return Ok(false);
            }
            record.state.level = Some(level);
            record.by = self.name.clone();
            record.at = now_ms();
            let written = self
                .etcd
                .txn(
                    vec![mod_revision_is(&key, kv.mod_revision)],
                    vec![put_op(&key, encode(&record), 0)],
                    Vec::new(),
                )
                .await?;
            if written.succeeded {
                debug!(%vm, %level, "adaptive level written to the fleet");
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Connections and requests still reaching `vm` through the other serving nodes, as their
    /// acknowledgements last said (a node whose lease ended has none).
    pub async fn in_flight_elsewhere(&self, vm: &VmId) -> Result<u64, EtcdError> {
        let (kvs, _) = self.etcd.list(&self.keys.acks_prefix(vm)).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| decode::<AckRecord>(&kv.key, &kv.value).ok())
            .filter(|ack| ack.node != self.name)
            .map(|ack| ack.active)
            .sum())
    }
}
