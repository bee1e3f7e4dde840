//! The libvirt `qemu` hook: what each hook call means for handover, and which VM a domain is.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML
//! on stdin, synchronously, on both hosts of a migration (table in the parent module). What a call
//! means:
//!
//! - `migrate begin` runs only on the destination, before anything is copied: the one point where
//!   the hook can hold the migration until the balancers drained the VM.
//! - `started begin` on the destination comes as the destination QEMU is ready to receive: the
//!   copy begins right after it (28-41 ms later in the runs of `docs/libvirt.md`). It is
//!   `started`, not the end.
//! - `release end EXTRA`: the domain's resources on this host are released. From libvirt 10.5
//!   EXTRA is the reason: `migrated` on the source after a successful switchover, `failed` on the
//!   destination of a failed or aborted migration, `destroyed`/`shutdown`/`crashed`... otherwise.
//!   Before 10.5 it is always `-`: before the copy began that is still a failure (the domain
//!   went away), after it the source's success and the destination's failure look the same.

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
    /// The copy begins: started, if the VM is draining.
    StartedIfDraining,
    /// The source released the VM after a successful switchover (libvirt >= 10.5): completed, if
    /// the VM is migrating.
    CompletedIfMigrating,
    /// The domain was released for a reason other than having migrated: failed, if the VM is
    /// draining or migrating.
    FailedIfMigrating,
    /// A release without a reason (libvirt < 10.5): failed if the copy has not begun; after it,
    /// undecidable here (the event watcher decides).
    FailedIfDraining,
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
        match (
            self.operation.as_str(),
            self.sub_operation.as_str(),
            self.extra.as_str(),
        ) {
            ("migrate", "begin", _) => HookAction::Prepare,
            ("started", "begin", _) => HookAction::StartedIfDraining,
            ("release", "end", "migrated") => HookAction::CompletedIfMigrating,
            ("release", "end", "-" | "") => HookAction::FailedIfDraining,
            ("release", "end", _) => HookAction::FailedIfMigrating,
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
            HookAction::StartedIfDraining
        );
        // libvirt >= 10.5 names the reason of a release.
        assert_eq!(
            call(&["web1", "release", "end", "migrated"]).action(),
            HookAction::CompletedIfMigrating
        );
        for reason in ["failed", "destroyed", "shutdown", "crashed", "daemon"] {
            assert_eq!(
                call(&["web1", "release", "end", reason]).action(),
                HookAction::FailedIfMigrating,
                "{reason}"
            );
        }
        // libvirt < 10.5 does not.
        assert_eq!(
            call(&["web1", "release", "end", "-"]).action(),
            HookAction::FailedIfDraining
        );
        assert_eq!(
            call(&["web1", "release", "end"]).action(),
            HookAction::FailedIfDraining
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
