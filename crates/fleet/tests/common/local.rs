//! A stand-in for a node's own balancers that records what the fleet told it, and reports the
//! traffic a test sets. (The end-to-end tests of `handover` use the real balancers.)

use std::collections::{BTreeMap, BTreeSet};

use handover_core::api::{BalancerResult, DrainStatus};
use handover_core::balancer::BoxFuture;
use handover_core::model::VmId;
use handover_core::phase::{Phase, VmState};
use handover_fleet::LocalNode;
use parking_lot::Mutex;

/// Records every state handed to it.
#[derive(Default)]
pub struct Recording {
    /// The VMs it serves.
    pub vms: BTreeSet<VmId>,
    /// Every state adopted, in order.
    pub adopted: Mutex<Vec<(VmId, Option<VmState>)>>,
    /// Active connections per VM to report.
    pub active: Mutex<BTreeMap<VmId, u64>>,
}

impl Recording {
    /// Serving these VMs.
    pub fn serving(vms: &[&str]) -> Self {
        Self {
            vms: vms.iter().map(|v| VmId::new(*v).unwrap()).collect(),
            ..Self::default()
        }
    }

    /// The phase last adopted for a VM (stable when none).
    pub fn phase(&self, vm: &str) -> Phase {
        self.adopted
            .lock()
            .iter()
            .rev()
            .find(|(v, _)| v.as_str() == vm)
            .and_then(|(_, s)| s.as_ref().map(|s| s.phase))
            .unwrap_or(Phase::Stable)
    }
}

impl LocalNode for Recording {
    fn adopt<'a>(&'a self, vm: &'a VmId, state: Option<VmState>) -> BoxFuture<'a, Vec<BalancerResult>> {
        Box::pin(async move {
            let serves = self.vms.contains(vm);
            if serves {
                self.adopted.lock().push((vm.clone(), state));
            }
            vec![BalancerResult {
                name: "recording".into(),
                kind: "test".into(),
                serves: Some(serves),
                applied: serves,
                error: None,
                elapsed_ms: 0,
                backends: Vec::new(),
                active: None,
                drained: None,
                pending: false,
            }]
        })
    }

    fn drain<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, DrainStatus> {
        Box::pin(async move {
            DrainStatus {
                serves: self.vms.contains(vm),
                active: self.active.lock().get(vm).copied().unwrap_or(0),
                remaining: Vec::new(),
            }
        })
    }
}
