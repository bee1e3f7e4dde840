//! The ramp's shape through the real binary, checked against its formula: after `completed`, the
//! VM's weight is `W · max(min_percent/100, (t/window)^(1/aggression))`, so with three equal
//! backends its share of new connections is `f / (f + 2)`. The share observed in each quarter of
//! the window must lie within the formula's bounds for the times the connections were made,
//! widened by a stated tolerance; and the test checks that a linear ramp (the wrong aggression)
//! or a step restore would fall outside them, so that it can tell them apart.

mod common;

use std::time::{Duration, Instant};

use common::backends::vm_counts;
use common::{eventually, notice, tcp_node};

const WINDOW_S: f64 = 8.0;
const AGGRESSION: f64 = 2.0;
const MIN_PERCENT: f64 = 5.0;
/// Absolute tolerance on a quarter's share, on top of two binomial standard deviations.
const TOLERANCE: f64 = 0.04;

/// vm-a's share of new connections `t` seconds into a ramp of `aggression`.
fn expected_share(t: f64, aggression: f64) -> f64 {
    let f = if t >= WINDOW_S {
        1.0
    } else {
        (t.max(0.0) / WINDOW_S)
            .powf(1.0 / aggression)
            .max(MIN_PERCENT / 100.0)
    };
    f / (f + 2.0)
}

/// One batch of connections: when it began and ended (seconds after the `completed` reply and
/// after its sending: the ramp began in between), how many went where.
struct Sample {
    start_after_reply: f64,
    end_after_sent: f64,
    to_a: usize,
    total: usize,
}

/// The bounds of the share `aggression` predicts over `samples`: the lowest assumes every
/// connection was made at its batch's start counted from the reply, the highest at its end
/// counted from the sending.
fn bounds(samples: &[&Sample], aggression: f64) -> (f64, f64) {
    let total: usize = samples.iter().map(|s| s.total).sum();
    let weighted = |at: &dyn Fn(&Sample) -> f64| {
        samples
            .iter()
            .map(|s| s.total as f64 * expected_share(at(s), aggression))
            .sum::<f64>()
            / total as f64
    };
    (
        weighted(&|s| s.start_after_reply),
        weighted(&|s| s.end_after_sent),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ramp_follows_its_formula_quarter_by_quarter() {
    let (node, _backends) = tcp_node(&format!(
        "drain = {{ target = 0.0 }}\nramp = {{ window = \"{WINDOW_S}s\", aggression = {AGGRESSION}, min_percent = {MIN_PERCENT} }}"
    ))
    .await;
    let proxy = node.listener("tcp");
    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");

    let sent = Instant::now();
    let (status, reply) = node.notice("vm-a", notice("completed")).await;
    let replied = Instant::now();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["phase"], "ramping");

    let mut samples = Vec::new();
    while replied.elapsed().as_secs_f64() < WINDOW_S {
        let start_after_reply = replied.elapsed().as_secs_f64();
        let counts = vm_counts(proxy, 60, 20).await;
        samples.push(Sample {
            start_after_reply,
            end_after_sent: sent.elapsed().as_secs_f64(),
            to_a: counts.get("vm-a").copied().unwrap_or(0),
            total: counts.values().sum(),
        });
    }

    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut tells_linear_apart = false;
    let mut tells_step_apart = false;
    for quarter in 0..4 {
        let (from, to) = (
            WINDOW_S * quarter as f64 / 4.0,
            WINDOW_S * (quarter + 1) as f64 / 4.0,
        );
        let in_quarter: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.start_after_reply >= from && s.start_after_reply < to)
            .collect();
        if in_quarter.is_empty() {
            report.push(format!("quarter {quarter}: no sample"));
            continue;
        }
        let total: usize = in_quarter.iter().map(|s| s.total).sum();
        let observed = in_quarter.iter().map(|s| s.to_a).sum::<usize>() as f64 / total as f64;
        let (low, high) = bounds(&in_quarter, AGGRESSION);
        let p = (low + high) / 2.0;
        let slack = TOLERANCE + 2.0 * (p * (1.0 - p) / total as f64).sqrt();
        let (low, high) = (low - slack, high + slack);
        report.push(format!(
            "quarter {quarter}: {total} connections, vm-a {observed:.3}, formula [{low:.3}, {high:.3}]"
        ));
        if !(low..=high).contains(&observed) {
            failures.push(quarter);
        }
        let (linear_low, linear_high) = bounds(&in_quarter, 1.0);
        tells_linear_apart |= linear_high < low || linear_low > high;
        tells_step_apart |= 1.0 / 3.0 > high;
    }
    assert!(
        failures.is_empty(),
        "vm-a's share left the formula's bounds in quarters {failures:?}:\n{}",
        report.join("\n")
    );
    assert!(
        tells_linear_apart && tells_step_apart,
        "the bounds are too wide to tell a linear ramp or a step restore apart:\n{}",
        report.join("\n")
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );
}
