//! Micro-benchmarks of the proxy's per-request pool work: reading the pool snapshot, picking a
//! backend from it (with a VM draining or not), and a phase change applied to the running pools
//! (weights solved, a new snapshot swapped in). Run with `cargo bench -p handover-proxy`.

use std::sync::Arc;

use divan::{Bencher, black_box};
use handover_core::model::VmId;
use handover_core::phase::PhaseCommand;
use handover_proxy::pools::Pools;

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [10, 100, 10_000];

/// Pools with one pool of `n` backends, one VM each, round robin.
fn pools(n: usize) -> Arc<Pools> {
    let mut config =
        String::from("[control]\nbind = \"127.0.0.1:0\"\n\n[pools.web]\nalgorithm = \"round_robin\"\n");
    for i in 0..n {
        config.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"127.0.{}.{}:80\"\nvm = \"vm-{i}\"\n",
            i / 250,
            1 + i % 250
        ));
    }
    let config = handover_core::config::parse(&config).expect("a valid configuration");
    Pools::new(&config)
}

fn drain(pools: &Pools, vm: &str) {
    pools.apply(
        &VmId::new(vm).expect("a VM name"),
        PhaseCommand::Drain {
            elapsed_ms: 0,
            migrating: false,
            deadline_in_ms: 600_000,
        },
    );
}

/// What every request does before it connects: load the snapshot, pick a backend.
#[divan::bench(args = SIZES)]
fn snapshot_and_pick(bencher: Bencher<'_, '_>, n: usize) {
    let pools = pools(n);
    let pool = pools.pool("web").expect("the pool");
    let mut random = 1u64;
    bencher.bench_local(|| {
        random = handover_core::selection::mix64(random);
        let snapshot = pool.snapshot();
        black_box(snapshot.pick(random, &[]))
    });
}

/// The same with one VM draining: the drained backend is simply absent from the schedule.
#[divan::bench(args = SIZES)]
fn snapshot_and_pick_one_draining(bencher: Bencher<'_, '_>, n: usize) {
    let pools = pools(n);
    drain(&pools, "vm-0");
    let pool = pools.pool("web").expect("the pool");
    let mut random = 1u64;
    bencher.bench_local(|| {
        random = handover_core::selection::mix64(random);
        let snapshot = pool.snapshot();
        black_box(snapshot.pick(random, &[]))
    });
}

/// A notice applied to the data plane: drain then stable again, each a new snapshot.
#[divan::bench(args = SIZES)]
fn phase_change_applied(bencher: Bencher<'_, '_>, n: usize) {
    let pools = pools(n);
    let vm = VmId::new("vm-0").expect("a VM name");
    bencher.bench_local(|| {
        drain(&pools, "vm-0");
        black_box(pools.apply(&vm, PhaseCommand::Stable))
    });
}
