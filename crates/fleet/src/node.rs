//! One handover node as a member of a fleet: its registration under a lease, and the background
//! work that keeps it in step with etcd (`watcher`, `timers`, acknowledgements). Notices it takes
//! are in `notifier`; `view` lists the fleet.
//!
//! The registration is the node (`nodes/<node>`) and one key per VM it serves
//! (`vm/<vm>/serves/<node>`), all under one lease kept alive every third of its TTL. A lease that
//! etcd no longer knows (expired while the node was cut off or paused) is replaced: the node
//! registers again and rewrites its acknowledgements.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_core::config::{Config, FleetConfig};
use handover_core::model::VmId;
use handover_core::time::Millis;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::etcd::{Etcd, EtcdError, KeepAlive, put_op};
use crate::keys::Keys;
use crate::local::LocalNode;
use crate::records::{AckRecord, NodeRecord, ServedPool, ServesRecord, encode};
use crate::stats::FleetStats;

/// Shortest wait before trying etcd again after a failure.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait before trying etcd again.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the fleet could not do something.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd could not be reached or refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The node could not finish joining in time.
    #[error("could not join the fleet within {0:?}: {1}")]
    Join(Duration, String),
}

/// A notice as the watcher last saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) record: crate::records::NoticeRecord,
    /// The notice's mod revision: its generation.
    pub(crate) generation: i64,
    /// The notice key's create revision: one per migration.
    pub(crate) created: i64,
}

/// This node in the fleet.
pub struct FleetNode {
    pub(crate) etcd: Arc<Etcd>,
    pub(crate) keys: Keys,
    /// This node's name.
    pub(crate) name: String,
    /// Its control API URL.
    control: String,
    /// Its pools, per VM it serves.
    pub(crate) served: BTreeMap<VmId, Vec<ServedPool>>,
    pub(crate) lease_ttl: Duration,
    pub(crate) ack_timeout: Duration,
    /// `migration.deadline`: for a VM no serving pool gives a deadline to.
    pub(crate) default_deadline: Duration,
    /// `migration.drain_timeout`: a wait for drained without a timeout.
    pub(crate) drain_timeout: Duration,
    pub(crate) local: Arc<dyn LocalNode>,
    /// The lease of the current registration (`None`: not registered).
    pub(crate) lease: Mutex<Option<i64>>,
    /// Every notice as last seen by the watcher.
    pub(crate) notices: Mutex<BTreeMap<VmId, Seen>>,
    /// The last acknowledgement written per VM (rewritten after a new registration).
    pub(crate) acks: Mutex<BTreeMap<VmId, AckRecord>>,
    pub(crate) stats: Mutex<FleetStats>,
    /// Set once the first list of notices has been applied.
    pub(crate) synced: AtomicBool,
    /// Wakes the registration loop (its lease was found gone).
    pub(crate) reregister: Notify,
    /// Per `backends/` key, the etcd revision of the last change this node applied or wrote: an
    /// older one seen later (its own, through the watch) is not applied again.
    pub(crate) backend_revisions: Mutex<BTreeMap<Vec<u8>, i64>>,
}

impl std::fmt::Debug for FleetNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetNode")
            .field("name", &self.name)
            .field("etcd", &self.etcd)
            .finish_non_exhaustive()
    }
}

/// Every pool (and driven HAProxy/nginx) of a configuration, per VM it has.
pub fn served_pools(config: &Config) -> BTreeMap<VmId, Vec<ServedPool>> {
    let mut served: BTreeMap<VmId, Vec<ServedPool>> = BTreeMap::new();
    let millis = |d: Duration| d.as_millis() as u64;
    for pool in &config.pools {
        let mut vms: Vec<VmId> = pool.backends.iter().map(|b| b.vm.clone()).collect();
        vms.sort();
        vms.dedup();
        let entry = ServedPool {
            name: pool.name.clone(),
            vms: vms.clone(),
            deadline_ms: millis(pool.deadline),
            ramp_ms: millis(pool.ramp.window),
            restore: pool.restore,
            min_active: pool.guard.min_active,
            max_concurrent: pool.guard.max_concurrent,
            drained_threshold: pool.drained_threshold,
        };
        for vm in vms {
            served.entry(vm).or_default().push(entry.clone());
        }
    }
    let driven = config
        .haproxy
        .iter()
        .map(|h| {
            (
                &h.name,
                h.vms.iter().map(|(_, vm)| vm.clone()).collect::<Vec<_>>(),
                &h.policy,
            )
        })
        .chain(config.nginx.iter().map(|n| {
            (
                &n.name,
                n.servers.iter().map(|s| s.vm.clone()).collect(),
                &n.policy,
            )
        }));
    for (name, mut vms, policy) in driven {
        vms.sort();
        vms.dedup();
        let entry = ServedPool {
            name: name.clone(),
            vms: vms.clone(),
            deadline_ms: millis(config.migration.deadline),
            ramp_ms: millis(policy.ramp.window),
            restore: policy.restore,
            min_active: 0,
            max_concurrent: None,
            drained_threshold: 0,
        };
        for vm in vms {
            served.entry(vm).or_default().push(entry.clone());
        }
    }
    served
}

impl FleetNode {
    /// A node named `name` (the configuration's, or the host name) whose control API is `control`,
    /// serving the VMs of `config`, applying the fleet's notices through `local`.
    pub fn new(
        config: &Config,
        fleet: &FleetConfig,
        name: String,
        control: String,
        local: Arc<dyn LocalNode>,
    ) -> Result<Arc<Self>, FleetError> {
        Ok(Arc::new(Self {
            etcd: Etcd::new(fleet)?,
            keys: Keys::new(&fleet.prefix),
            name,
            control,
            served: served_pools(config),
            lease_ttl: fleet.lease,
            ack_timeout: fleet.ack_timeout,
            default_deadline: config.migration.deadline,
            drain_timeout: config.migration.drain_timeout,
            local,
            lease: Mutex::new(None),
            notices: Mutex::new(BTreeMap::new()),
            acks: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(FleetStats::default()),
            synced: AtomicBool::new(false),
            reregister: Notify::new(),
            backend_revisions: Mutex::new(BTreeMap::new()),
        }))
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The etcd client.
    pub fn etcd(&self) -> &Arc<Etcd> {
        &self.etcd
    }

    /// A copy of the counters.
    pub fn stats(&self) -> FleetStats {
        self.stats.lock().clone()
    }

    /// Prometheus text of the fleet's metrics.
    pub fn metrics(&self) -> String {
        self.stats.lock().render()
    }

    /// Whether the first list of notices has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Registers and applies the fleet's current notices to the local balancers, within `timeout`.
    /// `handover run` calls this before its listeners accept, so a node that joins during a
    /// migration never sends new work to the draining VM.
    pub async fn join(self: &Arc<Self>, timeout: Duration) -> Result<i64, FleetError> {
        let attempt = async {
            self.register().await?;
            self.sync().await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(e)) => Err(FleetError::Join(timeout, e.to_string())),
            Err(_) => Err(FleetError::Join(timeout, "etcd did not answer in time".into())),
        }
    }

    /// Starts the registration keep-alive, the watcher, the acknowledgement reporter and the
    /// deadline timers; `revision` is what `join` returned (0 if it failed: the watcher lists).
    pub fn spawn(self: &Arc<Self>, revision: i64, cancel: &CancellationToken, tasks: &TaskTracker) {
        tasks.spawn(self.clone().keep_registered(cancel.clone()));
        tasks.spawn(self.clone().watch_notices(revision, cancel.clone()));
        tasks.spawn(self.clone().report_drain(cancel.clone()));
        tasks.spawn(self.clone().run_timers(cancel.clone()));
    }

    /// Leaves the fleet at once (revokes the lease: registration and acknowledgements go).
    pub async fn leave(&self) {
        let lease = self.lease.lock().take();
        if let Some(id) = lease
            && let Err(e) = self.etcd.revoke(id).await
        {
            warn!(error = %e, "could not revoke the fleet lease; it expires by itself");
        }
    }

    /// Grants a lease and writes the node's registration under it, in one transaction.
    pub(crate) async fn register(&self) -> Result<i64, EtcdError> {
        let ttl = self.lease_ttl.as_secs().max(1) as i64;
        let result = async {
            let lease = self.etcd.grant(ttl).await?;
            let node = NodeRecord {
                node: self.name.clone(),
                control: self.control.clone(),
                vms: self.served.keys().cloned().collect(),
                registered_at: now_ms(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let mut ops = vec![put_op(&self.keys.node(&self.name), encode(&node), lease)];
            for (vm, pools) in &self.served {
                let serves = ServesRecord {
                    node: self.name.clone(),
                    pools: pools.clone(),
                };
                ops.push(put_op(&self.keys.serves(vm, &self.name), encode(&serves), lease));
            }
            // etcd allows 128 operations per transaction by default: write in chunks.
            for chunk in ops.chunks(100) {
                self.etcd.txn(Vec::new(), chunk.to_vec(), Vec::new()).await?;
            }
            Ok::<_, EtcdError>(lease)
        }
        .await;
        match result {
            Ok(lease) => {
                *self.lease.lock() = Some(lease);
                self.stats.lock().registered = true;
                info!(node = %self.name, lease = format!("{lease:x}"), vms = self.served.len(), "registered in the fleet");
                // Acknowledgements written under an older lease went with it.
                let acks: Vec<(VmId, AckRecord)> = self
                    .acks
                    .lock()
                    .iter()
                    .map(|(v, a)| (v.clone(), a.clone()))
                    .collect();
                for (vm, ack) in acks {
                    self.put_ack(&vm, &ack).await;
                }
                Ok(lease)
            }
            Err(e) => {
                self.stats.lock().etcd_error("register");
                Err(e)
            }
        }
    }

    /// Keeps the lease alive every third of its TTL; registers again when it is gone.
    async fn keep_registered(self: Arc<Self>, cancel: CancellationToken) {
        let period = self.lease_ttl / 3;
        let mut stream: Option<KeepAlive> = None;
        let mut backoff = RETRY_MIN;
        loop {
            let lease = *self.lease.lock();
            let healthy = match lease {
                None => {
                    stream = None;
                    match self.register().await {
                        Ok(_) => true,
                        Err(e) => {
                            warn!(error = %e, "cannot register in the fleet; will retry");
                            false
                        }
                    }
                }
                Some(id) => {
                    let renewed = match stream.as_mut() {
                        Some(s) => s.renew().await,
                        None => match self.etcd.keep_alive(id).await {
                            Ok((s, ttl)) => {
                                stream = Some(s);
                                Ok(ttl)
                            }
                            Err(e) => Err(e),
                        },
                    };
                    match renewed {
                        Ok(ttl) if ttl > 0 => true,
                        Ok(_) => {
                            warn!(
                                lease = format!("{id:x}"),
                                "the fleet lease expired; registering again"
                            );
                            *self.lease.lock() = None;
                            self.stats.lock().registered = false;
                            stream = None;
                            continue;
                        }
                        Err(e) => {
                            self.stats.lock().etcd_error("keepalive");
                            warn!(error = %e, "cannot keep the fleet lease alive; will retry");
                            stream = None;
                            false
                        }
                    }
                }
            };
            if healthy {
                backoff = RETRY_MIN;
                if let Ok(count) = self.etcd.count(&self.keys.nodes()).await {
                    self.stats.lock().nodes = count;
                }
            }
            let wait = if healthy {
                period
            } else {
                let wait = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
                wait
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.reregister.notified() => {
                    *self.lease.lock() = None;
                    self.stats.lock().registered = false;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Writes a node's acknowledgement under its lease (skipped while unregistered: the next
    /// registration writes it).
    pub(crate) async fn put_ack(&self, vm: &VmId, ack: &AckRecord) {
        self.acks.lock().insert(vm.clone(), ack.clone());
        let Some(lease) = *self.lease.lock() else {
            return;
        };
        match self
            .etcd
            .put(&self.keys.ack(vm, &self.name), encode(ack), lease)
            .await
        {
            Ok(_) => {}
            Err(EtcdError::Refused(message)) if message.contains("lease not found") => {
                warn!("the fleet lease is gone; registering again");
                self.reregister.notify_one();
            }
            Err(e) => {
                self.stats.lock().etcd_error("ack");
                warn!(%vm, error = %e, "cannot write the acknowledgement; it is written again on reconnect");
            }
        }
    }
}
