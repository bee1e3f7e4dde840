//! Telling balancers a VM's phase, in order, and never waiting on a balancer that does not answer.
//!
//! - **Lanes.** Calls to one balancer about one VM go one at a time; a delivery that finds the VM
//!   changed again since it was made stands aside, because the newer change's own delivery tells
//!   that balancer. Different VMs, and different balancers, never wait for each other.
//! - **Hung balancers.** A balancer whose call timed out is *hung*: later deliveries give it only a
//!   short try ([`HUNG_TRY`]) and report it pending if it does not answer, instead of waiting out
//!   its timeout again; an answer (to a try or to a retry) ends it. A balancer that refuses
//!   connections is not hung (it fails fast, and a driven one remembers what it was told and
//!   applies it when it answers).
//! - **What each balancer serves.** Its configuration (`serves_known`) or its last answer says so,
//!   so one that cannot be reached is known to serve the VM, and is told later.
//!
//! Whatever is not told is put in the retry book ([`Retries`]): a retry sends the VM's *current*
//! phase.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use handover_core::api::BalancerResult;
use handover_core::balancer::BalancerError;
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::fanout::{BalancerSlot, answered, call, not_told};
use crate::keyed_lock::KeyedLocks;
use crate::retry::Retries;

/// Which balancers a delivery is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every balancer: a migration this node drives.
    All,
    /// This node's own balancers only (the embedded proxy, driven HAProxy and nginx): a migration
    /// a peer drives, or one adopted at start.
    Local,
    /// The peers only.
    Peers,
}

impl Scope {
    /// Whether the scope includes a balancer.
    pub fn includes(self, slot: &BalancerSlot) -> bool {
        match self {
            Scope::All => true,
            Scope::Local => !slot.is_peer,
            Scope::Peers => slot.is_peer,
        }
    }
}

/// One change of a VM, for the balancers.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The VM.
    pub vm: VmId,
    /// What to apply.
    pub command: PhaseCommand,
    /// The addresses the VM moved to, if it moved.
    pub readdress: Option<Readdress>,
    /// The registry change it comes from (a later change of the VM has a larger number).
    pub seq: u64,
    /// When the VM's phase last changed (ms since the epoch): a peer refuses a command older
    /// than what it knows.
    pub changed_at: handover_core::time::Millis,
    /// Which balancers.
    pub scope: Scope,
}

/// How long a notice tries a balancer known to hang (it may be back).
pub const HUNG_TRY: Duration = Duration::from_millis(10);

/// A balancer that cannot be told is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

enum Step {
    Superseded,
    Called(Result<handover_core::api::Applied, BalancerError>),
}

/// The balancers and what the coordinator knows of each.
#[derive(Debug)]
pub struct Balancers {
    slots: Vec<BalancerSlot>,
    lanes: KeyedLocks<(usize, VmId)>,
    /// Since when each balancer has not answered in time (`None`: it answers).
    hung: Mutex<Vec<Option<Instant>>>,
    /// Whether each balancer served a VM when it last answered about it.
    learned: Mutex<HashMap<(usize, VmId), bool>>,
    /// When a failure to tell each balancer was last logged, by name.
    logged: Mutex<HashMap<String, Instant>>,
    /// What is still to be told.
    pub retries: Retries,
}

impl Balancers {
    /// The coordinator's balancers.
    pub fn new(slots: Vec<BalancerSlot>) -> Self {
        let count = slots.len();
        Self {
            slots,
            lanes: KeyedLocks::default(),
            hung: Mutex::new(vec![None; count]),
            learned: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
            retries: Retries::default(),
        }
    }

    /// Every balancer, in configuration order.
    pub fn slots(&self) -> &[BalancerSlot] {
        &self.slots
    }

    /// The indices of the balancers in a scope.
    pub fn in_scope(&self, scope: Scope) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| scope.includes(&self.slots[*i]))
            .collect()
    }

    /// Whether balancer `index` serves `vm`, as its last answer or else its configuration says.
    pub fn serves_known(&self, index: usize, vm: &VmId) -> Option<bool> {
        let learned = self.learned.lock().get(&(index, vm.clone())).copied();
        learned.or_else(|| self.slots[index].balancer.serves_known(vm))
    }

    /// Since when balancer `index` has not answered in time.
    pub fn hung_since(&self, index: usize) -> Option<Instant> {
        self.hung.lock()[index]
    }

    fn set_hung(&self, index: usize, hung: bool) {
        let mut all = self.hung.lock();
        if hung {
            all[index].get_or_insert_with(Instant::now);
        } else {
            all[index] = None;
        }
    }

    /// Tells every balancer of the delivery's scope at once; results in slot order, with the
    /// index of each balancer. `current` gives a VM's latest change number.
    pub async fn deliver(
        &self,
        delivery: &Delivery,
        current: &(dyn Fn(&VmId) -> u64 + Sync),
    ) -> Vec<(usize, BalancerResult)> {
        let indices = self.in_scope(delivery.scope);
        let results = join_all(
            indices
                .iter()
                .map(|i| self.deliver_one(*i, delivery, current, false)),
        )
        .await;
        indices.into_iter().zip(results).collect()
    }

    /// Tells one balancer, within its timeout. A `probe` (a retry) calls a hung balancer too.
    pub async fn deliver_one(
        &self,
        index: usize,
        delivery: &Delivery,
        current: &(dyn Fn(&VmId) -> u64 + Sync),
        probe: bool,
    ) -> BalancerResult {
        let slot = &self.slots[index];
        let vm = &delivery.vm;
        let started = Instant::now();
        let serves = self.serves_known(index, vm);
        let worth_retrying = serves != Some(false);
        // A balancer known to hang gets a short try only (it may be back): a notice never waits
        // its whole timeout again.
        let hung = if probe { None } else { self.hung_since(index) };
        let budget = match hung {
            Some(_) => HUNG_TRY.min(slot.timeout),
            None => slot.timeout,
        };
        let step = tokio::time::timeout(budget, async {
            let _lane = self.lanes.lock(&(index, vm.clone())).await;
            if current(vm) != delivery.seq {
                return Step::Superseded;
            }
            Step::Called(
                call(
                    slot,
                    vm,
                    delivery.command,
                    delivery.changed_at,
                    delivery.readdress.as_ref(),
                )
                .await,
            )
        })
        .await;
        let elapsed = started.elapsed();
        match step {
            // A newer change of the VM was made meanwhile: its own delivery tells this balancer.
            Ok(Step::Superseded) => not_told(slot, None, serves, true, elapsed),
            Ok(Step::Called(Ok(applied))) => {
                self.set_hung(index, false);
                self.learned.lock().insert((index, vm.clone()), applied.serves);
                if current(vm) == delivery.seq {
                    self.retries.remove(index, vm);
                }
                answered(slot, applied, elapsed)
            }
            Ok(Step::Called(Err(error))) => {
                // A timeout inside the call is a hang; any other error came back fast.
                self.set_hung(index, matches!(error, BalancerError::Timeout(_)));
                if worth_retrying {
                    self.retries.add(index, vm);
                }
                not_told(slot, Some(error.to_string()), serves, worth_retrying, elapsed)
            }
            Err(_) if hung.is_some() => {
                if worth_retrying {
                    self.retries.add(index, vm);
                }
                let error = format!(
                    "not answering for {:.1} s (no answer within {} ms); it is sent the current phase when it answers",
                    hung.map_or(0.0, |since| since.elapsed().as_secs_f64()),
                    slot.timeout.as_millis()
                );
                not_told(slot, Some(error), serves, worth_retrying, elapsed)
            }
            Err(_) => {
                // No answer in time, or an earlier call about this VM still has none.
                self.set_hung(index, true);
                if worth_retrying {
                    self.retries.add(index, vm);
                }
                let error = BalancerError::Timeout(slot.timeout.as_millis() as u64);
                not_told(slot, Some(error.to_string()), serves, worth_retrying, elapsed)
            }
        }
    }

    /// Whether a failure to tell this balancer is to be logged now (at most once per 5 s each: a
    /// peer that is down must not fill the log with one line per notice).
    pub fn should_log(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut logged = self.logged.lock();
        match logged.get(name) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                logged.insert(name.to_string(), now);
                true
            }
        }
    }

    /// Takes every balancer for answering again (after this process was frozen, its own calls
    /// timed out: that said nothing about the balancers).
    pub fn clear_hung(&self) {
        self.hung.lock().iter_mut().for_each(|h| *h = None);
    }

    /// Forgets everything still to be told about a VM (its change was undone).
    pub fn forget(&self, vm: &VmId) {
        for index in 0..self.slots.len() {
            self.retries.remove(index, vm);
        }
    }

    /// The longest timeout of the balancers in a scope.
    pub fn longest_timeout(&self, scope: Scope) -> Duration {
        self.in_scope(scope)
            .into_iter()
            .map(|i| self.slots[i].timeout)
            .max()
            .unwrap_or_default()
    }
}
