//! Reading the lines `virsh event --all --loop` prints, one per domain event:
//!
//! ```text
//! event 'lifecycle' for domain 'web1': Started Migrated
//! event 'migration-iteration' for domain 'web1': iteration: '2'
//! event 'job-completed' for domain 'web1':
//!         operation: 5
//! ```
//!
//! (with `--timestamp`, each line starts with `2026-12-01 09:30:42.838+0000: `). Lifecycle events
//! are an event word (`Started`, `Suspended`, `Resumed`, `Stopped`, `Shutdown`...) and a detail
//! (`Migrated`, `Failed`, `Finished after host request`...), as virsh spells them in libvirt 9.0
//! and 11.x alike. Lines of other events, and the indented lines of a multi-line event, are
//! [`VirshEvent::Other`]; a line that starts like an event but does not parse is an error.

/// One event line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirshEvent {
    /// `event 'lifecycle'`: the domain changed state.
    Lifecycle {
        /// Domain name.
        domain: String,
        /// The event word (`Started`, `Suspended`, `Resumed`, `Stopped`...).
        event: String,
        /// The detail (`Migrated`, `Failed`, `Booted`...).
        detail: String,
    },
    /// `event 'migration-iteration'`: a new pass over the domain's memory began (source only).
    MigrationIteration {
        /// Domain name.
        domain: String,
        /// Pass number, from 1.
        iteration: u64,
    },
    /// Anything else virsh prints (other events, continuation lines, blank lines).
    Other,
}

/// A line that looks like an event but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable virsh event line ({reason}): {line:?}")]
pub struct EventLineError {
    /// What was wrong.
    pub reason: &'static str,
    /// The line (cut to 200 characters).
    pub line: String,
}

impl VirshEvent {
    /// Reads one line (without its line ending).
    pub fn parse(line: &str) -> Result<VirshEvent, EventLineError> {
        let error = |reason| EventLineError {
            reason,
            line: line.chars().take(200).collect(),
        };
        // `--timestamp` puts "DATE TIME: " before the event.
        let Some(start) = line.find("event '") else {
            return Ok(VirshEvent::Other);
        };
        if start != 0 && !line[..start].ends_with(": ") {
            return Ok(VirshEvent::Other);
        }
        let rest = &line[start + "event '".len()..];
        let (kind, rest) = rest.split_once('\'').ok_or_else(|| error("no event name"))?;
        let rest = rest
            .strip_prefix(" for domain '")
            .ok_or_else(|| error("no domain"))?;
        match kind {
            "lifecycle" => {
                let (domain, what) = rest.rsplit_once("': ").ok_or_else(|| error("no domain"))?;
                let (event, detail) = what.split_once(' ').unwrap_or((what, ""));
                if domain.is_empty() || event.is_empty() {
                    return Err(error("no domain or event"));
                }
                Ok(VirshEvent::Lifecycle {
                    domain: domain.to_string(),
                    event: event.to_string(),
                    detail: detail.trim().to_string(),
                })
            }
            "migration-iteration" => {
                let (domain, what) = rest
                    .rsplit_once("': iteration: '")
                    .ok_or_else(|| error("no iteration"))?;
                let iteration = what
                    .strip_suffix('\'')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| error("iteration is not a number"))?;
                Ok(VirshEvent::MigrationIteration {
                    domain: domain.to_string(),
                    iteration,
                })
            }
            _ => Ok(VirshEvent::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(domain: &str, event: &str, detail: &str) -> VirshEvent {
        VirshEvent::Lifecycle {
            domain: domain.into(),
            event: event.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn lifecycle_lines_of_libvirt_9_and_11_are_read() {
        // Lines as libvirt 9.0 and 11.3 printed them during the migrations of docs/libvirt.md.
        assert_eq!(
            VirshEvent::parse("event 'lifecycle' for domain 'web1': Started Migrated").unwrap(),
            lifecycle("web1", "Started", "Migrated")
        );
        assert_eq!(
            VirshEvent::parse(
                "2026-12-01 09:30:48.183+0000: event 'lifecycle' for domain 'web1': Resumed Migrated"
            )
            .unwrap(),
            lifecycle("web1", "Resumed", "Migrated")
        );
        assert_eq!(
            VirshEvent::parse("event 'lifecycle' for domain 'web1': Shutdown Finished after host request")
                .unwrap(),
            lifecycle("web1", "Shutdown", "Finished after host request")
        );
        // A domain name with quotes and spaces.
        assert_eq!(
            VirshEvent::parse("event 'lifecycle' for domain 'it's a vm': Stopped Failed").unwrap(),
            lifecycle("it's a vm", "Stopped", "Failed")
        );
    }

    #[test]
    fn iterations_and_other_lines_are_told_apart() {
        assert_eq!(
            VirshEvent::parse("event 'migration-iteration' for domain 'web1': iteration: '3'").unwrap(),
            VirshEvent::MigrationIteration {
                domain: "web1".into(),
                iteration: 3
            }
        );
        for other in [
            "",
            "\toperation: 5",
            "event 'job-completed' for domain 'web1':",
            "event 'reboot' for domain 'web1'",
            "error: internal error: client socket is closed",
            "something event 'lifecycle' for domain 'x': Started Booted",
        ] {
            assert_eq!(VirshEvent::parse(other).unwrap(), VirshEvent::Other, "{other:?}");
        }
    }

    #[test]
    fn broken_event_lines_are_errors_naming_the_problem() {
        for (line, reason) in [
            ("event 'lifecycle", "no event name"),
            ("event 'lifecycle' for web1: Started", "no domain"),
            ("event 'lifecycle' for domain 'web1' Started", "no domain"),
            (
                "event 'migration-iteration' for domain 'web1': iteration: 'x'",
                "iteration is not a number",
            ),
        ] {
            let error = VirshEvent::parse(line).unwrap_err();
            assert_eq!(error.reason, reason, "{line:?}");
        }
    }
}
