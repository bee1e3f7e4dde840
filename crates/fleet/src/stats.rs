//! The fleet's metrics: how many nodes are registered, how often etcd failed, and how long a
//! notice takes to be acknowledged by every node that serves the VM. Rendered in Prometheus' text
//! format for `/metrics`.

use std::fmt::Write;

/// Upper bounds of the acknowledgement histogram, seconds.
const ACK_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of one node's fleet activity.
#[derive(Debug, Clone, Default)]
pub struct FleetStats {
    /// Nodes registered in the fleet when last counted.
    pub nodes: u64,
    /// Calls to etcd that failed, by operation.
    pub etcd_errors: std::collections::BTreeMap<&'static str, u64>,
    /// Whether this node's registration is live (its lease kept alive).
    pub registered: bool,
    /// Notices this node sent whose acknowledgements all came: counts per bucket.
    ack_buckets: [u64; ACK_BUCKETS.len()],
    ack_count: u64,
    ack_sum: f64,
    /// Notices this node sent that some serving node did not acknowledge in time.
    pub ack_timeouts: u64,
    /// Times the watcher listed the notices again (start, reconnect, compaction).
    pub relists: u64,
}

impl FleetStats {
    /// Counts a failed etcd call.
    pub fn etcd_error(&mut self, operation: &'static str) {
        *self.etcd_errors.entry(operation).or_default() += 1;
    }

    /// Records the time from a notice to its last acknowledgement.
    pub fn observe_ack(&mut self, seconds: f64) {
        for (bucket, bound) in self.ack_buckets.iter_mut().zip(ACK_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.ack_count += 1;
        self.ack_sum += seconds;
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP handover_fleet_nodes Nodes registered in the fleet (etcd), as last counted."
        );
        let _ = writeln!(out, "# TYPE handover_fleet_nodes gauge");
        let _ = writeln!(out, "handover_fleet_nodes {}", self.nodes);
        let _ = writeln!(
            out,
            "# HELP handover_fleet_registered Whether this node's registration lease is alive."
        );
        let _ = writeln!(out, "# TYPE handover_fleet_registered gauge");
        let _ = writeln!(out, "handover_fleet_registered {}", u8::from(self.registered));
        let _ = writeln!(
            out,
            "# HELP handover_fleet_etcd_errors_total Calls to etcd that failed, by operation."
        );
        let _ = writeln!(out, "# TYPE handover_fleet_etcd_errors_total counter");
        for operation in [
            "register",
            "keepalive",
            "list",
            "watch",
            "ack",
            "notice",
            "timer",
            "view",
            "backends",
        ] {
            let count = self.etcd_errors.get(operation).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "handover_fleet_etcd_errors_total{{operation=\"{operation}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP handover_fleet_relists_total Times the notices were listed again (start, reconnect, compaction)."
        );
        let _ = writeln!(out, "# TYPE handover_fleet_relists_total counter");
        let _ = writeln!(out, "handover_fleet_relists_total {}", self.relists);
        let _ = writeln!(
            out,
            "# HELP handover_fleet_ack_timeouts_total Notices sent by this node that a serving node did not acknowledge within ack_timeout."
        );
        let _ = writeln!(out, "# TYPE handover_fleet_ack_timeouts_total counter");
        let _ = writeln!(out, "handover_fleet_ack_timeouts_total {}", self.ack_timeouts);
        let _ = writeln!(
            out,
            "# HELP handover_fleet_ack_seconds Time from a notice to the last serving node's acknowledgement."
        );
        let _ = writeln!(out, "# TYPE handover_fleet_ack_seconds histogram");
        for (count, bound) in self.ack_buckets.iter().zip(ACK_BUCKETS) {
            let _ = writeln!(out, "handover_fleet_ack_seconds_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "handover_fleet_ack_seconds_bucket{{le=\"+Inf\"}} {}",
            self.ack_count
        );
        let _ = writeln!(out, "handover_fleet_ack_seconds_sum {}", self.ack_sum);
        let _ = writeln!(out, "handover_fleet_ack_seconds_count {}", self.ack_count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_histogram_is_cumulative() {
        let mut stats = FleetStats::default();
        stats.observe_ack(0.004);
        stats.observe_ack(0.2);
        let text = stats.render();
        assert!(
            text.contains("handover_fleet_ack_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("handover_fleet_ack_seconds_bucket{le=\"0.25\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("handover_fleet_ack_seconds_count 2\n"), "{text}");
    }
}
