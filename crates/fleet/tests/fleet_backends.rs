//! Backends set through the API, shared through a real etcd (Debian's etcd-server, started by the
//! test): a node applies the changes other nodes write, in etcd's order; it never takes back its
//! own older change when it sees it again through the watch; a change it cannot make now is tried
//! again, and one that does not apply to it is skipped. The node's pools are a recording stand-in
//! (the `handover` end-to-end test `api_backends` runs real processes).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::harness;
use common::local::Recording;
use handover_core::api::{BackendChange, BackendSpec};
use handover_core::balancer::BoxFuture;
use handover_core::config::{Config, parse};
use handover_core::model::VmId;
use handover_fleet::{BackendSink, FleetNode, SinkRefusal};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() {
    harness::main(vec![
        harness::test_async(
            "a_node_never_takes_back_its_own_older_change_from_the_watch",
            a_node_never_takes_back_its_own_older_change_from_the_watch,
        )
        .needs(etcd_available),
        harness::test_async(
            "changes_are_applied_in_etcds_order_retried_when_they_fail_and_skipped_where_they_do_not_apply",
            changes_are_applied_in_etcds_order_retried_when_they_fail_and_skipped_where_they_do_not_apply,
        )
        .needs(etcd_available),
    ]);
}

/// Whether etcd and etcdctl are here and work.
fn etcd_available() -> Result<(), harness::Lack> {
    harness::program("etcd", "--version", "etcd-server")?;
    harness::program("etcdctl", "version", "etcd-client")
}

fn config(endpoints: &str) -> Config {
    parse(&format!(
        "[pools.web]\n[[pools.web.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-a\"\n\
         [fleet]\netcd = {endpoints}\nlease = \"2s\"\nack_timeout = \"2s\"\n"
    ))
    .unwrap()
}

fn node(config: &Config, name: &str) -> Arc<FleetNode> {
    FleetNode::new(
        config,
        config.fleet.as_ref().unwrap(),
        name.to_string(),
        format!("http://127.0.0.1:0/{name}"),
        Arc::new(Recording::serving(&["vm-a"])),
    )
    .unwrap()
}

fn change(pool: &str, port: u16, backend: Option<(&str, u32)>) -> BackendChange {
    BackendChange {
        pool: pool.into(),
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        backend: backend.map(|(vm, weight)| BackendSpec {
            vm: VmId::new(vm).unwrap(),
            weight,
        }),
    }
}

/// A node's pools as the fleet sees them: the last change of each backend (as the reloader's
/// overlay), every change that changed something, in order; pool `web` only; the first
/// `failures` calls fail as a full disk would.
#[derive(Default)]
struct Pools {
    current: Mutex<BTreeMap<(String, SocketAddr), BackendChange>>,
    applied: Mutex<Vec<BackendChange>>,
    failures: AtomicUsize,
}

impl Pools {
    /// A change made through this node's own API (applied before it is written to etcd).
    fn local(&self, change: &BackendChange) {
        self.current
            .lock()
            .insert((change.pool.clone(), change.address), change.clone());
    }

    fn applied(&self) -> Vec<BackendChange> {
        self.applied.lock().clone()
    }
}

impl BackendSink for Pools {
    fn apply<'a>(&'a self, change: &'a BackendChange) -> BoxFuture<'a, Result<bool, SinkRefusal>> {
        Box::pin(async move {
            if change.pool != "web" {
                return Err(SinkRefusal::NotHere(format!("no pool named {:?}", change.pool)));
            }
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SinkRefusal::Failed("No space left on device".into()));
            }
            let key = (change.pool.clone(), change.address);
            let mut current = self.current.lock();
            if current.get(&key) == Some(change) {
                return Ok(false);
            }
            current.insert(key, change.clone());
            self.applied.lock().push(change.clone());
            Ok(true)
        })
    }
}

/// Waits until `pools` has applied `n` changes (at most 15 s).
async fn applied(pools: &Pools, n: usize) -> Vec<BackendChange> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pools.applied.lock().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pools.applied()
}

/// A PUT then a DELETE through node A, written to etcd before A's watch runs: the watch replays
/// both, and A applies neither (it has the later one), so the removed backend never comes back;
/// node B's change after them is applied.
async fn a_node_never_takes_back_its_own_older_change_from_the_watch() {
    let etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints());
    let (a, b) = (node(&config, "lb-a"), node(&config, "lb-b"));
    let pools = Arc::new(Pools::default());
    let start = a.sync_backends(pools.as_ref()).await.expect("list");

    let put = change("web", 7, Some(("vm-g", 2)));
    let delete = change("web", 7, None);
    for made_here in [&put, &delete] {
        pools.local(made_here);
        a.publish_backend(made_here).await.expect("written");
    }
    let from_b = change("web", 8, Some(("vm-h", 1)));
    b.publish_backend(&from_b).await.expect("written");

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(a.clone().watch_backends(pools.clone(), start, cancel.clone()));
    let seen = applied(&pools, 1).await;
    // Events come in order: B's change is applied after A's two were seen (and skipped).
    assert_eq!(seen, vec![from_b], "A applied its own PUT again after its DELETE");
    assert_eq!(
        pools.current.lock().get(&("web".to_string(), put.address)),
        Some(&delete)
    );

    // Listing again (a restart, a compaction) skips them too.
    let fresh = Arc::new(Pools::default());
    fresh.local(&delete);
    a.sync_backends(fresh.as_ref()).await.expect("list");
    assert!(!fresh.applied().contains(&put), "{:?}", fresh.applied());
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

/// Node A watches while node B writes: a change that fails on A (its disk is full) is applied once
/// it can be, in etcd's order with those after it; a change for a pool A does not have is skipped
/// without stopping the others.
async fn changes_are_applied_in_etcds_order_retried_when_they_fail_and_skipped_where_they_do_not_apply() {
    let etcd = Etcd::single();
    let config = config(&etcd.toml_endpoints());
    let (a, b) = (node(&config, "lb-a"), node(&config, "lb-b"));
    let pools = Arc::new(Pools {
        failures: AtomicUsize::new(3),
        ..Pools::default()
    });
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let start = a.sync_backends(pools.as_ref()).await.expect("list");
    tasks.spawn(a.clone().watch_backends(pools.clone(), start, cancel.clone()));

    let changes = [
        change("web", 7, Some(("vm-g", 1))),
        change("other", 9, Some(("vm-x", 1))),
        change("web", 8, Some(("vm-h", 4))),
        change("web", 7, Some(("vm-g", 3))),
    ];
    for c in &changes {
        b.publish_backend(c).await.expect("written");
    }
    // The list after the failures holds only the last change of port 7, so whether the first
    // weight is ever applied depends on timing: what matters is the end state, and that nothing
    // of pool "other" is applied.
    let expected = BTreeMap::from([
        (("web".to_string(), changes[3].address), changes[3].clone()),
        (("web".to_string(), changes[2].address), changes[2].clone()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while *pools.current.lock() != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = pools.applied();
    assert_eq!(*pools.current.lock(), expected, "applied: {seen:?}");
    assert_eq!(pools.failures.load(Ordering::SeqCst), 0);
    assert!(seen.iter().all(|c| c.pool == "web"), "{seen:?}");
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}
