//! Micro-benchmarks of the pure hot path: one backend pick per algorithm at 10, 100 and 10,000
//! backends, and the cost of a phase change (solving the weights and building the selector that
//! the next snapshot carries). Run with `cargo bench -p handover-core`.

use divan::{Bencher, black_box};
use handover_core::model::Algorithm;
use handover_core::selection::{Selector, StaticLoad, mix64};
use handover_core::weights::{WeightInput, WeightState, solve};

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [10, 100, 10_000];

/// Backends with weights 1–4 and some live load.
fn pool(n: usize) -> (Vec<f64>, StaticLoad) {
    let weights = (0..n).map(|i| f64::from(1 + (i % 4) as u32)).collect();
    let load = StaticLoad {
        active: (0..n).map(|i| (mix64(i as u64) % 50) as u64).collect(),
        latency_ns: (0..n).map(|i| 100_000 + mix64(i as u64 + 7) % 900_000).collect(),
    };
    (weights, load)
}

fn pick(bencher: Bencher<'_, '_>, algorithm: Algorithm, n: usize) {
    let (weights, load) = pool(n);
    let selector = Selector::build(algorithm, &weights, 0);
    let mut random = 1u64;
    bencher.bench_local(|| {
        random = mix64(random);
        black_box(selector.pick(&load, random))
    });
}

/// Smooth weighted round robin: one atomic cursor step over the precomputed schedule.
#[divan::bench(args = SIZES)]
fn pick_round_robin(bencher: Bencher<'_, '_>, n: usize) {
    pick(bencher, Algorithm::RoundRobin, n);
}

/// Least connections: a scan of every backend's active count per unit of weight.
#[divan::bench(args = SIZES)]
fn pick_least_connections(bencher: Bencher<'_, '_>, n: usize) {
    pick(bencher, Algorithm::LeastConnections, n);
}

/// Power of two choices over peak-EWMA latency.
#[divan::bench(args = SIZES)]
fn pick_p2c_ewma(bencher: Bencher<'_, '_>, n: usize) {
    pick(bencher, Algorithm::P2cEwma, n);
}

/// A phase change: one backend starts draining; the weights are solved again and a new selector
/// (with its smooth weighted schedule) is built for the next snapshot. Off the hot path.
#[divan::bench(args = SIZES)]
fn phase_change(bencher: Bencher<'_, '_>, n: usize) {
    let (weights, _) = pool(n);
    let inputs: Vec<WeightInput> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| WeightInput {
            weight: *w as u32,
            state: if i == 0 {
                WeightState::Draining { share: 0.0 }
            } else {
                WeightState::Scaled(1.0)
            },
        })
        .collect();
    bencher.bench_local(|| {
        let solved = solve(black_box(&inputs));
        black_box(Selector::build(Algorithm::RoundRobin, &solved.weights, 0))
    });
}
