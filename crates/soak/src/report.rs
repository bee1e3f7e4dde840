//! The soak's report: the figures the issue asks for (requests, failed requests, broken
//! connections, requests sent to a draining VM, notice latency p50/p99 overall and with the peer
//! hung, VMs not stable at the end, memory growth), what was lost with the node that was killed or
//! frozen, the faults and when they happened, and what durability costs per notice.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::backends::Seen;
use crate::cost::Cost;
use crate::load::VIAS;
use crate::migrations::{Sample, Window};

/// The `p`th percentile (nearest rank) of `values`, sorted in place; 0 when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A request that reached a VM while it was drained.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// The VM.
    pub vm: usize,
    /// When the request was sent (soak clock, ms).
    pub sent_ms: u64,
    /// When it reached the VM.
    pub arrived_ms: u64,
    /// Through which balancer.
    pub via: &'static str,
    /// The drain window it fell in.
    pub window: (u64, u64),
}

/// Every request that reached its VM although it was sent after the prepare's reply and arrived
/// before the end notice was sent: the balancer chose the VM while it was drained. (A request sent
/// in the window that waited in a listen queue past its end was chosen after it: not counted.)
pub fn violations(seen: &[Seen], windows: &[Window]) -> Vec<Violation> {
    let mut by_vm: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    for w in windows {
        by_vm.entry(w.vm).or_default().push((w.from_ms, w.to_ms));
    }
    seen.iter()
        .filter_map(|s| {
            let window = by_vm
                .get(&s.vm)?
                .iter()
                .find(|(from, to)| s.sent_ms > *from && s.arrived_ms < *to)?;
            Some(Violation {
                vm: s.vm,
                sent_ms: s.sent_ms,
                arrived_ms: s.arrived_ms,
                via: VIAS[s.via],
                window: *window,
            })
        })
        .collect()
}

/// Violations by balancer.
pub fn to_draining(violations: &[Violation]) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> = VIAS.iter().map(|v| (*v, 0)).collect();
    for v in violations {
        *counts.entry(v.via).or_default() += 1;
    }
    counts
}

/// One fault as injected.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// When it began (soak clock, s).
    pub at_s: f64,
    /// What it was.
    pub what: String,
}

/// Everything the soak found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When and how.
    pub date: String,
    /// The command line.
    pub command: String,
    /// Wall time of the run, s.
    pub seconds: f64,
    /// Migrations driven.
    pub migrations: u64,
    /// Requests answered 200.
    pub requests: u64,
    /// Requests that failed, not through a node under a fault.
    pub failed_requests: u64,
    /// Long-lived connections opened.
    pub connections: u64,
    /// Long-lived connections that broke, not through a node under a fault.
    pub broken_connections: u64,
    /// Requests sent after a VM's prepare was acknowledged and before its end, that reached it.
    pub to_draining: BTreeMap<&'static str, u64>,
    /// Notices sent.
    pub notices: usize,
    /// Notices not accepted (not 200 or 202), with their answers.
    pub notice_errors: Vec<String>,
    /// Notice latency p50 and p99, ms.
    pub notice_p50_ms: f64,
    /// p99, ms.
    pub notice_p99_ms: f64,
    /// Notices to node A while node B (its peer) was frozen.
    pub notices_peer_hung: usize,
    /// Their p50, ms.
    pub notice_peer_hung_p50_ms: f64,
    /// Their p99, ms.
    pub notice_peer_hung_p99_ms: f64,
    /// Notices to node A once B had been frozen longer than its peer timeout (1 s): found hung.
    pub notices_peer_known_hung: usize,
    /// Their p99, ms.
    pub notice_peer_known_hung_p99_ms: f64,
    /// Slowest notice, ms.
    pub notice_max_ms: f64,
    /// Notices meant for node B that went to node A because B died meanwhile.
    pub redirected: u64,
    /// VMs not stable at the end, on any balancer.
    pub not_stable: Vec<String>,
    /// Node A's resident memory: first sample after warm-up, end, KiB.
    pub rss_a_kib: (u64, u64),
    /// Node B's, since its last start, KiB.
    pub rss_b_kib: (u64, u64),
    /// Both nodes' RSS (KiB) at every tenth of the migrations: (migrations, A, B).
    pub rss_samples: Vec<(u64, u64, u64)>,
    /// Requests through node B lost while it was killed or frozen.
    pub lost_with_node: u64,
    /// Long-lived connections through node B broken when it was killed or frozen.
    pub broken_with_node: u64,
    /// Lines echoed over long-lived connections.
    pub echoes: u64,
    /// The faults.
    pub faults: Vec<FaultEvent>,
    /// What durability costs per notice.
    pub cost: Vec<Cost>,
}

impl Report {
    /// Fills in the notice figures from the samples.
    pub fn notices_from(&mut self, samples: &[Sample]) {
        self.notices = samples.len();
        let mut all: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
        self.notice_max_ms = all.iter().copied().fold(0.0, f64::max);
        self.notice_p50_ms = percentile(&mut all, 50.0);
        self.notice_p99_ms = percentile(&mut all, 99.0);
        let mut hung: Vec<f64> = samples
            .iter()
            .filter(|s| s.peer_hung)
            .map(|s| s.latency_ms)
            .collect();
        self.notices_peer_hung = hung.len();
        let mut known: Vec<f64> = samples
            .iter()
            .filter(|s| s.peer_hung && s.hung_for_ms > 1000)
            .map(|s| s.latency_ms)
            .collect();
        self.notices_peer_known_hung = known.len();
        self.notice_peer_known_hung_p99_ms = percentile(&mut known, 99.0);
        self.notice_peer_hung_p50_ms = percentile(&mut hung, 50.0);
        self.notice_peer_hung_p99_ms = percentile(&mut hung, 99.0);
        self.notice_errors = samples
            .iter()
            .filter(|s| !matches!(s.status, 200 | 202))
            .map(|s| {
                format!(
                    "{} at {} ({} on node {}): {}",
                    s.notice, s.at_ms, s.status, s.node, s.outcome
                )
            })
            .collect();
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let to_draining: u64 = self.to_draining.values().sum();
        let by_via: Vec<String> = self
            .to_draining
            .iter()
            .map(|(via, n)| format!("{via} {n}"))
            .collect();
        let mut text = format!(
            "handover soak — {}\n\n`{}`, {:.0} s, {} migrations.\n\n\
             | requests | failed | broken connections | to a draining VM | notice p50 | notice p99 | p99 with the peer hung | VMs not stable at the end | RSS node A |\n\
             |---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} of {} | {} ({}) | {:.1} ms | {:.1} ms | {:.1} ms ({} notices) | {} | {} → {} KiB |\n\n",
            self.date,
            self.command,
            self.seconds,
            self.migrations,
            self.requests,
            self.failed_requests,
            self.broken_connections,
            self.connections,
            to_draining,
            by_via.join(", "),
            self.notice_p50_ms,
            self.notice_p99_ms,
            self.notice_peer_hung_p99_ms,
            self.notices_peer_hung,
            if self.not_stable.is_empty() {
                "none".to_string()
            } else {
                self.not_stable.join(", ")
            },
            self.rss_a_kib.0,
            self.rss_a_kib.1,
        );
        text.push_str(&format!(
            "- {} notices (p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms); with node B frozen, {} notices to node A: p50 {:.1} ms, p99 {:.1} ms, and {} of them once B had been frozen longer than its 1 s peer timeout (after the first calls to it timed out): p99 {:.1} ms; {} meant for B went to A because B was down; {} not accepted{}\n",
            self.notices,
            self.notice_p50_ms,
            self.notice_p99_ms,
            self.notice_max_ms,
            self.notices_peer_hung,
            self.notice_peer_hung_p50_ms,
            self.notice_peer_hung_p99_ms,
            self.notices_peer_known_hung,
            self.notice_peer_known_hung_p99_ms,
            self.redirected,
            self.notice_errors.len(),
            if self.notice_errors.is_empty() {
                String::new()
            } else {
                format!(": {}", self.notice_errors.join("; "))
            }
        ));
        text.push_str(&format!(
            "- lost with node B while it was killed or frozen (no balancer keeps what passes through its own crash): {} requests, {} long-lived connections; {} lines echoed over long-lived connections\n",
            self.lost_with_node, self.broken_with_node, self.echoes
        ));
        text.push_str(&format!(
            "- node B's RSS since its last start: {} → {} KiB\n",
            self.rss_b_kib.0, self.rss_b_kib.1
        ));
        let samples: Vec<String> = self
            .rss_samples
            .iter()
            .map(|(done, a, b)| format!("{done}: A {a}, B {b}"))
            .collect();
        text.push_str(&format!(
            "- RSS (KiB) as the migrations went on: {}\n",
            samples.join("; ")
        ));
        text.push_str("- faults:");
        for fault in &self.faults {
            text.push_str(&format!(" {:.0} s {};", fault.at_s, fault.what));
        }
        text.push_str("\n\nWhat durability costs per notice (the same notices, one at a time and 8 at a time, to a node without and with a state file):\n\n| durability | one at a time p50 | p99 | 8 at a time p50 | p99 |\n|---|---|---|---|---|\n");
        for cost in &self.cost {
            text.push_str(&format!(
                "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
                cost.durability,
                cost.sequential_p50_ms,
                cost.sequential_p99_ms,
                cost.concurrent_p50_ms,
                cost.concurrent_p99_ms
            ));
        }
        text
    }
}
