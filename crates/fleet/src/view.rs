//! `handover fleet`: every registered node with its lease, the VMs it serves and its last
//! acknowledgement of each VM in migration; every notice with its generation.

use std::collections::BTreeMap;

use handover_core::model::VmId;
use handover_core::phase::{Notice, Phase};
use handover_core::time::Millis;
use serde::{Deserialize, Serialize};

use crate::etcd::EtcdError;
use crate::node::FleetNode;
use crate::records::{AckRecord, NodeRecord, NoticeRecord, decode};

/// The whole fleet, as etcd holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// The node that answered.
    pub answered_by: String,
    /// The etcd members it uses.
    pub etcd: Vec<String>,
    /// Every registered node, by name.
    pub nodes: Vec<NodeView>,
    /// Every VM in migration.
    pub notices: Vec<NoticeView>,
}

/// One registered node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name.
    pub node: String,
    /// Its control API.
    pub control: String,
    /// Its lease (hex, as etcdctl prints it).
    pub lease: String,
    /// Seconds left on the lease (`None`: expired).
    pub lease_ttl_s: Option<i64>,
    /// When it registered.
    pub registered_at: Millis,
    /// The VMs it serves.
    pub vms: Vec<VmId>,
    /// Its last acknowledgement of each VM in migration.
    pub acks: Vec<AckView>,
}

/// A node's acknowledgement of one VM's notice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckView {
    /// The VM.
    pub vm: VmId,
    /// The acknowledgement.
    #[serde(flatten)]
    pub ack: AckRecord,
    /// Whether it acknowledges the notice's current generation.
    pub current: bool,
}

/// A VM in migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoticeView {
    /// The VM.
    pub vm: VmId,
    /// Its fleet-wide phase.
    pub phase: Phase,
    /// The last notice.
    pub notice: Option<Notice>,
    /// The notice's generation (etcd mod revision).
    pub generation: i64,
    /// Who wrote it.
    pub by: String,
    /// When.
    pub at: Millis,
    /// Its deadline (drained phases).
    pub deadline_at: Option<Millis>,
}

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
