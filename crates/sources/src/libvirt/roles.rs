//! Which side of a migration a domain is on, learned from its lifecycle events, and what each event
//! means for handover. Pure: no I/O, one value per watched libvirt daemon.
//!
//! | event here | side | notice |
//! |---|---|---|
//! | `Started Migrated` | becomes the destination | `started` (the incoming QEMU is up; the copy begins) |
//! | `Resumed Migrated` | destination | `completed`: the VM runs here, after the switchover |
//! | `Stopped Failed` | destination | `failed`: the incoming migration failed or was aborted |
//! | `Suspended Migrated` | becomes the source | none: the switchover's pause began |
//! | `Stopped Migrated` | source (or unknown) | `completed`: the VM left for the destination |
//! | `Resumed Migrated` | source | `failed`: the source runs again after the switchover failed |
//! | `Stopped` (other detail) | either | `failed`: the domain went away mid-migration |
//!
//! libvirt sends nothing to the source when a migration is aborted before the switchover (the
//! destination's `Stopped Failed` says it), and nothing that marks the source before its pause:
//! the side is known only from events, so a watcher that starts mid-migration learns it late.

use std::collections::HashMap;

use handover_core::phase::Notice;

/// The side of a migration a domain is on, on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The migration comes here.
    Destination,
    /// The migration leaves from here.
    Source,
}

/// Migration sides of the domains of one libvirt daemon.
#[derive(Debug, Default)]
pub struct Roles {
    sides: HashMap<String, Side>,
}

impl Roles {
    /// No domain is migrating.
    pub fn new() -> Self {
        Self::default()
    }

    /// The side a domain is on, if it is migrating.
    pub fn side(&self, domain: &str) -> Option<Side> {
        self.sides.get(domain).copied()
    }

    /// Takes one lifecycle event; returns the notice it means, if any.
    pub fn lifecycle(&mut self, domain: &str, event: &str, detail: &str) -> Option<Notice> {
        let side = self.side(domain);
        match (event, detail, side) {
            ("Started", "Migrated", _) => {
                self.sides.insert(domain.to_string(), Side::Destination);
                Some(Notice::Started)
            }
            ("Started", _, _) => {
                self.sides.remove(domain);
                None
            }
            ("Suspended", "Migrated", None | Some(Side::Source)) => {
                self.sides.insert(domain.to_string(), Side::Source);
                None
            }
            ("Resumed", "Migrated", Some(Side::Destination)) => {
                self.sides.remove(domain);
                Some(Notice::Completed)
            }
            ("Resumed", "Migrated", Some(Side::Source)) => {
                self.sides.remove(domain);
                Some(Notice::Failed)
            }
            ("Stopped", "Migrated", _) => {
                self.sides.remove(domain);
                Some(Notice::Completed)
            }
            ("Stopped", _, Some(_)) => {
                self.sides.remove(domain);
                Some(Notice::Failed)
            }
            ("Undefined", _, _) => {
                self.sides.remove(domain);
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[(&str, &str)]) -> Vec<Option<Notice>> {
        let mut roles = Roles::new();
        events
            .iter()
            .map(|(event, detail)| roles.lifecycle("web1", event, detail))
            .collect()
    }

    #[test]
    fn the_destination_of_a_migration_reports_started_then_completed_after_the_switchover() {
        assert_eq!(
            run(&[("Started", "Migrated"), ("Resumed", "Migrated")]),
            vec![Some(Notice::Started), Some(Notice::Completed)]
        );
    }

    #[test]
    fn an_aborted_incoming_migration_is_failed() {
        // libvirt 11.x adds a Shutdown event before the stop; 9.0 does not.
        assert_eq!(
            run(&[
                ("Started", "Migrated"),
                ("Shutdown", "Finished after host request"),
                ("Stopped", "Failed")
            ]),
            vec![Some(Notice::Started), None, Some(Notice::Failed)]
        );
    }

    #[test]
    fn the_source_reports_completed_when_the_vm_left_and_failed_when_it_resumed() {
        assert_eq!(
            run(&[("Suspended", "Migrated"), ("Stopped", "Migrated")]),
            vec![None, Some(Notice::Completed)]
        );
        assert_eq!(
            run(&[("Suspended", "Migrated"), ("Resumed", "Migrated")]),
            vec![None, Some(Notice::Failed)]
        );
        // A source domain destroyed during its switchover.
        assert_eq!(
            run(&[("Suspended", "Migrated"), ("Stopped", "Destroyed")]),
            vec![None, Some(Notice::Failed)]
        );
    }

    #[test]
    fn events_of_domains_that_are_not_migrating_mean_nothing() {
        assert_eq!(
            run(&[
                ("Started", "Booted"),
                ("Suspended", "Paused"),
                ("Resumed", "Unpaused"),
                ("Resumed", "Migrated"),
                ("Stopped", "Destroyed"),
                ("Stopped", "Failed"),
            ]),
            vec![None; 6]
        );
    }

    #[test]
    fn a_new_start_forgets_an_unfinished_migration() {
        assert_eq!(
            run(&[
                ("Started", "Migrated"),
                ("Started", "Booted"),
                ("Resumed", "Migrated")
            ]),
            vec![Some(Notice::Started), None, None]
        );
        let mut roles = Roles::new();
        roles.lifecycle("web1", "Started", "Migrated");
        assert_eq!(roles.side("web1"), Some(Side::Destination));
        assert_eq!(roles.side("web2"), None);
        roles.lifecycle("web1", "Undefined", "Removed");
        assert_eq!(roles.side("web1"), None);
    }
}
