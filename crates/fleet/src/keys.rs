//! Where everything lives in etcd, under the configured prefix:
//!
//! ```text
//! <prefix>/v1/nodes/<node>             NodeRecord      lease of the node
//! <prefix>/v1/notices/<vm>             NoticeRecord    no lease: the fleet's phase of the VM
//! <prefix>/v1/vm/<vm>/serves/<node>    ServesRecord    lease of the node
//! <prefix>/v1/vm/<vm>/acks/<node>      AckRecord       lease of the node
//! <prefix>/v1/backends/<pool>/<addr>   BackendChange   no lease: a backend set through the API
//! ```
//!
//! Every node watches `notices/` (one key per VM in migration). A notice's sender watches only
//! `vm/<vm>/`, where the nodes that serve the VM and their acknowledgements sit side by side, so it
//! sees an acknowledgement and a lease that expires in one stream.

use handover_core::model::VmId;

/// The keys of one fleet (one prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `/handover`).
    pub fn new(prefix: &str) -> Self {
        Self {
            root: format!("{}/v1/", prefix.trim_end_matches('/')),
        }
    }

    /// Prefix of every node's registration.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    /// A node's registration.
    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.root)
    }

    /// Prefix of every notice.
    pub fn notices(&self) -> String {
        format!("{}notices/", self.root)
    }

    /// The notice of a VM.
    pub fn notice(&self, vm: &VmId) -> String {
        format!("{}notices/{vm}", self.root)
    }

    /// The VM a notice key belongs to.
    pub fn vm_of_notice(&self, key: &[u8]) -> Option<VmId> {
        let key = std::str::from_utf8(key).ok()?;
        VmId::new(key.strip_prefix(&self.notices())?).ok()
    }

    /// Prefix of everything about one VM (who serves it, their acknowledgements).
    pub fn vm(&self, vm: &VmId) -> String {
        format!("{}vm/{vm}/", self.root)
    }

    /// Prefix of the nodes that serve a VM.
    pub fn serves_prefix(&self, vm: &VmId) -> String {
        format!("{}vm/{vm}/serves/", self.root)
    }

    /// A node's registration as a balancer of a VM.
    pub fn serves(&self, vm: &VmId, node: &str) -> String {
        format!("{}vm/{vm}/serves/{node}", self.root)
    }

    /// Prefix of the acknowledgements for a VM.
    pub fn acks_prefix(&self, vm: &VmId) -> String {
        format!("{}vm/{vm}/acks/", self.root)
    }

    /// A node's acknowledgement for a VM.
    pub fn ack(&self, vm: &VmId, node: &str) -> String {
        format!("{}vm/{vm}/acks/{node}", self.root)
    }

    /// Prefix of every backend set or removed through the API.
    pub fn backends(&self) -> String {
        format!("{}backends/", self.root)
    }

    /// The last change made through the API to one backend of a pool.
    pub fn backend(&self, pool: &str, address: &std::net::SocketAddr) -> String {
        format!("{}backends/{pool}/{address}", self.root)
    }

    /// What a key under `vm/<vm>/` is: `("serves" | "acks", node)`.
    pub fn classify_vm_key<'k>(&self, vm: &VmId, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.vm(vm))?;
        rest.split_once('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_vm_share_a_prefix_and_parse_back() {
        let keys = Keys::new("/handover");
        let vm = VmId::new("vm-a").unwrap();
        assert_eq!(keys.notice(&vm), "/handover/v1/notices/vm-a");
        assert_eq!(keys.vm_of_notice(b"/handover/v1/notices/vm-a"), Some(vm.clone()));
        assert!(keys.serves(&vm, "lb-1").starts_with(&keys.vm(&vm)));
        assert!(keys.ack(&vm, "lb-1").starts_with(&keys.vm(&vm)));
        assert_eq!(
            keys.classify_vm_key(&vm, keys.ack(&vm, "lb-1").as_bytes()),
            Some(("acks", "lb-1"))
        );
        // vm-a's prefix does not cover vm-ab's keys.
        let other = VmId::new("vm-ab").unwrap();
        assert!(!keys.serves(&other, "lb-1").starts_with(&keys.vm(&vm)));
        let address = "[::1]:8080".parse().unwrap();
        assert_eq!(
            keys.backend("web", &address),
            "/handover/v1/backends/web/[::1]:8080"
        );
        assert!(keys.backend("web", &address).starts_with(&keys.backends()));
    }
}
