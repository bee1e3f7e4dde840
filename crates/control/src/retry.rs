//! Balancers that still have to be told something: per balancer, the VMs whose current phase it
//! has not acknowledged, and when to try it next. One VM's call probes the balancer; once it
//! answers, every other VM waiting for it is sent at once (a peer that comes back is caught up
//! in one round, not VM by VM on each one's backoff).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use handover_core::model::VmId;
use parking_lot::Mutex;
use tokio::time::Instant;

/// First retry delay for a balancer that could not be told.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest retry delay: a balancer that comes back is caught up within this.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Pending {
    vms: BTreeSet<VmId>,
    next_at: Instant,
    backoff: Duration,
    /// A retry round runs now (the next one waits for it).
    running: bool,
}

/// The retry book of every balancer, by slot index.
#[derive(Debug, Default)]
pub struct Retries {
    pending: Mutex<HashMap<usize, Pending>>,
}

impl Retries {
    /// Notes that balancer `slot` still has to be told the current phase of `vm`.
    pub fn add(&self, slot: usize, vm: &VmId) {
        let mut pending = self.pending.lock();
        let entry = pending.entry(slot).or_insert_with(|| Pending {
            vms: BTreeSet::new(),
            next_at: Instant::now() + RETRY_FIRST,
            backoff: RETRY_FIRST,
            running: false,
        });
        entry.vms.insert(vm.clone());
    }

    /// Notes that balancer `slot` has the current phase of `vm`.
    pub fn remove(&self, slot: usize, vm: &VmId) {
        let mut pending = self.pending.lock();
        if let Some(entry) = pending.get_mut(&slot) {
            entry.vms.remove(vm);
            if entry.vms.is_empty() && !entry.running {
                pending.remove(&slot);
            }
        }
    }

    /// Whether balancer `slot` still has to be told `vm`.
    pub fn contains(&self, slot: usize, vm: &VmId) -> bool {
        self.pending.lock().get(&slot).is_some_and(|p| p.vms.contains(vm))
    }

    /// When the next round is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .lock()
            .values()
            .filter(|p| !p.running && !p.vms.is_empty())
            .map(|p| p.next_at)
            .min()
    }

    /// Starts every round that is due: for each balancer, the VMs to send (the first is the
    /// probe). The balancer's entry is marked running until [`Retries::finish`].
    pub fn start_due(&self, now: Instant) -> Vec<(usize, Vec<VmId>)> {
        let mut pending = self.pending.lock();
        let mut due = Vec::new();
        for (slot, entry) in pending.iter_mut() {
            if !entry.running && entry.next_at <= now && !entry.vms.is_empty() {
                entry.running = true;
                due.push((*slot, entry.vms.iter().cloned().collect()));
            }
        }
        due
    }

    /// Ends a round: when the balancer answered, the next round (for VMs that came in meanwhile or
    /// still failed) starts at once from the first delay; otherwise the delay doubles.
    pub fn finish(&self, slot: usize, answered: bool) {
        let mut pending = self.pending.lock();
        let Some(entry) = pending.get_mut(&slot) else {
            return;
        };
        entry.running = false;
        if answered {
            entry.backoff = RETRY_FIRST;
            entry.next_at = Instant::now();
        } else {
            entry.backoff = (entry.backoff * 2).min(RETRY_MAX);
            entry.next_at = Instant::now() + entry.backoff;
        }
        if entry.vms.is_empty() {
            pending.remove(&slot);
        }
    }

    /// The current delay of a balancer's retries.
    pub fn backoff(&self, slot: usize) -> Option<Duration> {
        self.pending.lock().get(&slot).map(|p| p.backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str) -> VmId {
        VmId::new(name).unwrap()
    }

    #[test]
    fn a_round_backs_off_until_the_balancer_answers_then_sends_everything_at_once() {
        let retries = Retries::default();
        retries.add(1, &vm("a"));
        retries.add(1, &vm("b"));
        assert!(
            retries.start_due(Instant::now()).is_empty(),
            "not before the first delay"
        );
        let due = retries.start_due(Instant::now() + RETRY_FIRST);
        assert_eq!(due, vec![(1, vec![vm("a"), vm("b")])]);
        assert!(
            retries.start_due(Instant::now() + RETRY_MAX * 2).is_empty(),
            "one round at a time"
        );
        retries.finish(1, false);
        assert_eq!(retries.backoff(1), Some(RETRY_FIRST * 2));
        for _ in 0..10 {
            retries.finish(1, false);
        }
        assert_eq!(retries.backoff(1), Some(RETRY_MAX));
        retries.remove(1, &vm("a"));
        retries.finish(1, true);
        assert_eq!(
            retries.start_due(Instant::now()),
            vec![(1, vec![vm("b")])],
            "at once after an answer"
        );
        retries.remove(1, &vm("b"));
        retries.finish(1, true);
        assert_eq!(retries.next_due(), None);
    }
}
