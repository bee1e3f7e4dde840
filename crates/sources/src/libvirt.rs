//! The libvirt `qemu` hook: what each hook call means for handover, and which VM a domain is.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML
//! on stdin, synchronously. The only synchronous point *before* a migration is `migrate begin`,
//! called on the destination: the hook can hold the migration there until the balancers drained
//! the VM. `started begin` on the destination runs in the migration's finish phase (after the copy),
//! and `release end` without a successful start means the migration did not happen.

use handover_core::model::VmId;

/// XML namespace of handover's domain metadata:
/// `<metadata><handover:vm xmlns:handover="urn:handover">vm-a</handover:vm></metadata>`.
pub const METADATA_NAMESPACE: &str = "urn:handover";

/// One hook call, from libvirt's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    /// Domain name.
    pub domain: String,
    /// Operation (`migrate`, `prepare`, `start`, `started`, `stopped`, `release`...).
    pub operation: String,
    /// Sub-operation (`begin`, `end`, `-`).
    pub sub_operation: String,
    /// Extra argument (`-` when none).
    pub extra: String,
}

/// What a hook call asks handover to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// The VM is about to arrive here: prepare and wait until drained.
    Prepare,
    /// The VM runs here now (if it was migrating): completed.
    CompletedIfMigrating,
    /// The domain's resources are released (if it was still migrating, the migration failed).
    FailedIfMigrating,
    /// Nothing for handover: return at once.
    Ignore,
}

/// Why a hook call could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// Fewer than the two arguments every hook call has.
    #[error("expected libvirt's hook arguments: DOMAIN OPERATION [SUB-OPERATION [EXTRA]]")]
    Arguments,
    /// The domain XML is not XML.
    #[error("the domain XML on stdin is not valid XML: {0}")]
    Xml(String),
    /// Neither the metadata nor the domain name is a valid VM id.
    #[error("cannot map domain {domain:?} to a VM: {reason}")]
    Vm {
        /// Domain name.
        domain: String,
        /// Why.
        reason: String,
    },
}

impl HookCall {
    /// Reads libvirt's arguments (without the program name).
    pub fn from_args(args: &[String]) -> Result<Self, HookError> {
        let get = |i: usize| args.get(i).cloned().unwrap_or_else(|| "-".to_string());
        if args.len() < 2 {
            return Err(HookError::Arguments);
        }
        Ok(Self {
            domain: get(0),
            operation: get(1),
            sub_operation: get(2),
            extra: get(3),
        })
    }

    /// What this call means.
    pub fn action(&self) -> HookAction {
        match (self.operation.as_str(), self.sub_operation.as_str()) {
            ("migrate", "begin") => HookAction::Prepare,
            ("started", "begin") => HookAction::CompletedIfMigrating,
            ("release", "end") => HookAction::FailedIfMigrating,
            _ => HookAction::Ignore,
        }
    }
}

/// The VM of a domain: `<metadata><handover:vm xmlns:handover="urn:handover">` if present, else the
/// domain name. An empty XML (some calls send none) falls back to the name.
pub fn vm_of(domain: &str, xml: &str) -> Result<VmId, HookError> {
    if !xml.trim().is_empty() {
        let document = roxmltree::Document::parse(xml).map_err(|e| HookError::Xml(e.to_string()))?;
        let from_metadata = document
            .descendants()
            .find(|n| n.has_tag_name("metadata"))
            .and_then(|metadata| {
                metadata.descendants().find(|n| {
                    n.tag_name().namespace() == Some(METADATA_NAMESPACE) && n.tag_name().name() == "vm"
                })
            })
            .and_then(|n| n.text())
            .map(str::trim);
        if let Some(vm) = from_metadata {
            return VmId::new(vm).map_err(|e| HookError::Vm {
                domain: domain.to_string(),
                reason: format!("metadata: {e}"),
            });
        }
    }
    VmId::new(domain).map_err(|e| HookError::Vm {
        domain: domain.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str]) -> HookCall {
        HookCall::from_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn hook_calls_map_to_actions() {
        assert_eq!(
            call(&["web1", "migrate", "begin", "-"]).action(),
            HookAction::Prepare
        );
        assert_eq!(
            call(&["web1", "started", "begin", "-"]).action(),
            HookAction::CompletedIfMigrating
        );
        assert_eq!(
            call(&["web1", "release", "end", "migrated"]).action(),
            HookAction::FailedIfMigrating
        );
        assert_eq!(
            call(&["web1", "prepare", "begin", "-"]).action(),
            HookAction::Ignore
        );
        assert_eq!(
            call(&["web1", "stopped", "end", "-"]).action(),
            HookAction::Ignore
        );
        assert_eq!(call(&["web1", "reconnect"]).action(), HookAction::Ignore);
        assert!(HookCall::from_args(&["web1".to_string()]).is_err());
    }

    #[test]
    fn the_vm_comes_from_metadata_or_the_domain_name() {
        let xml = r#"<domain type="kvm"><name>web1</name><metadata>
            <other:thing xmlns:other="urn:other">x</other:thing>
            <handover:vm xmlns:handover="urn:handover"> vm-a </handover:vm>
        </metadata></domain>"#;
        assert_eq!(vm_of("web1", xml).unwrap().as_str(), "vm-a");
        assert_eq!(
            vm_of("web1", "<domain><name>web1</name></domain>")
                .unwrap()
                .as_str(),
            "web1"
        );
        assert_eq!(vm_of("web1", "").unwrap().as_str(), "web1");
        assert!(matches!(vm_of("web1", "<domain>"), Err(HookError::Xml(_))));
        assert!(matches!(vm_of("bad name", ""), Err(HookError::Vm { .. })));
    }
}
