//! `handover fleet`: every registered node with its lease, the VMs it serves and its last
//! acknowledgement of each VM in migration; every notice with its generation.

use std::collections::BTreeMap;

use crate::etcd::EtcdError;
use crate::node::FleetNode;
use crate::records::{AckRecord, NodeRecord, NoticeRecord, decode};

pub use handover_core::api::fleet::{AckView, FleetView, NodeView, NoticeView};

impl FleetNode {
    /// Reads the fleet from etcd.
    pub async fn view(&self) -> Result<FleetView, EtcdError> {
        let result = self.read_view().await;
        if result.is_err() {
            self.stats.lock().etcd_error("view");
        }
        result
    }

    async fn read_view(&self) -> Result<FleetView, EtcdError> {
        let (node_kvs, _) = self.etcd.list(&self.keys.nodes()).await?;
        let (notice_kvs, _) = self.etcd.list(&self.keys.notices()).await?;
        let mut notices = Vec::new();
        let mut acks: BTreeMap<String, Vec<AckView>> = BTreeMap::new();
        for kv in &notice_kvs {
            let Some(vm) = self.keys.vm_of_notice(&kv.key) else {
                continue;
            };
            let Ok(record) = decode::<NoticeRecord>(&kv.key, &kv.value) else {
                continue;
            };
            let (ack_kvs, _) = self.etcd.list(&self.keys.acks_prefix(&vm)).await?;
            for ack_kv in &ack_kvs {
                if let Ok(ack) = decode::<AckRecord>(&ack_kv.key, &ack_kv.value) {
                    acks.entry(ack.node.clone()).or_default().push(AckView {
                        vm: vm.clone(),
                        current: ack.generation == kv.mod_revision,
                        ack,
                    });
                }
            }
            notices.push(NoticeView {
                vm,
                phase: record.state.phase,
                notice: record.notice,
                generation: kv.mod_revision,
                by: record.by,
                at: record.at,
                deadline_at: record.state.deadline_at,
                level: record.state.level,
            });
        }
        let mut nodes = Vec::new();
        for kv in &node_kvs {
            let Ok(record) = decode::<NodeRecord>(&kv.key, &kv.value) else {
                continue;
            };
            let lease_ttl_s = self.etcd.time_to_live(kv.lease).await?;
            nodes.push(NodeView {
                acks: acks.remove(&record.node).unwrap_or_default(),
                node: record.node,
                control: record.control,
                lease: format!("{:x}", kv.lease),
                lease_ttl_s,
                registered_at: record.registered_at,
                vms: record.vms,
            });
        }
        Ok(FleetView {
            answered_by: self.name.clone(),
            etcd: self.etcd.endpoints().to_vec(),
            nodes,
            notices,
        })
    }
}
