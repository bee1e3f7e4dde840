//! L4 through the real binary: a drain keeps established connections and moves new ones; a
//! completed migration ramps the VM back; a partial target gives the expected share.

mod common;

use std::time::{Duration, Instant};

use common::backends::{TcpClient, vm_counts};
use common::{notice, tcp_node};

fn share(counts: &std::collections::BTreeMap<String, usize>, vm: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(vm).copied().unwrap_or(0) as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_drain_keeps_existing_connections_moves_new_ones_and_ramps_back() {
    let ramp = Duration::from_secs(4);
    let (node, _backends) =
        tcp_node("drain = { target = 0.0 }\nramp = { window = \"4s\", aggression = 1.0, min_percent = 10 }")
            .await;
    let proxy = node.listener("tcp");

    // Connections opened before the notice, some of them to vm-a.
    let mut existing = Vec::new();
    for _ in 0..6 {
        existing.push(TcpClient::connect(proxy).await);
    }
    let on_a = existing.iter().filter(|c| c.vm == "vm-a").count();
    assert_eq!(on_a, 2, "round robin spreads the first six connections");

    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["phase"], "draining");
    assert_eq!(reply["balancers"][0]["applied"], true);

    // Every established connection still carries data, including those to vm-a.
    for client in &mut existing {
        let vm = client.vm.clone();
        assert_eq!(
            client.echo("ping").await.as_deref(),
            Some(format!("{vm} ping").as_str())
        );
    }

    // New connections never reach vm-a.
    let counts = vm_counts(proxy, 1200, 32).await;
    assert_eq!(
        counts.get("vm-a"),
        None,
        "new connections reached vm-a while draining: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 1200);

    // Existing connections survived the whole drain.
    for client in &mut existing {
        let vm = client.vm.clone();
        assert_eq!(
            client.echo("still").await.as_deref(),
            Some(format!("{vm} still").as_str())
        );
    }

    // Completed: vm-a's share rises over the window...
    let (status, reply) = node.notice("vm-a", notice("completed")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["phase"], "ramping");
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < ramp - Duration::from_millis(300) {
        // Each sample is dated at its middle: on a loaded machine one takes a good part of a
        // second, and its share is that of the weights while it ran.
        let began = start.elapsed();
        let counts = vm_counts(proxy, 60, 30).await;
        let at = (began + start.elapsed()) / 2;
        samples.push((at, share(&counts, "vm-a")));
    }
    let early: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t < ramp / 4)
        .map(|(_, s)| *s)
        .collect();
    let late: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t > ramp * 3 / 4)
        .map(|(_, s)| *s)
        .collect();
    assert!(!early.is_empty() && !late.is_empty(), "{samples:?}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&early) < 0.15, "vm-a should start low: {samples:?}");
    assert!(
        mean(&late) > mean(&early) + 0.1,
        "vm-a's share should rise: {samples:?}"
    );

    // ...and ends at its weight share (1/3) ± 5 %.
    tokio::time::sleep(ramp.saturating_sub(start.elapsed()) + Duration::from_millis(300)).await;
    let counts = vm_counts(proxy, 1200, 32).await;
    let a = share(&counts, "vm-a");
    assert!(
        (a - 1.0 / 3.0).abs() <= 0.05,
        "vm-a share after the ramp: {a:.3} ({counts:?})"
    );
    assert!(
        common::eventually(Duration::from_secs(3), || async {
            node.phase("vm-a").await == "stable"
        })
        .await
    );

    for client in &mut existing {
        let vm = client.vm.clone();
        assert_eq!(
            client.echo("end").await.as_deref(),
            Some(format!("{vm} end").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_drain_gives_the_target_fraction_of_the_normal_share() {
    let (node, _backends) = tcp_node("drain = { target = 0.25 }").await;
    let proxy = node.listener("tcp");

    let (status, reply) = node.notice("vm-a", notice("prepare")).await;
    assert_eq!(status, 200, "{reply}");
    let counts = vm_counts(proxy, 1500, 32).await;
    let relative = share(&counts, "vm-a") / (1.0 / 3.0);
    assert!(
        (relative - 0.25).abs() <= 0.05,
        "vm-a got {relative:.3} of its normal share ({counts:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_backend() {
    let (node, mut backends) = tcp_node("retries = 2\nconnect_timeout = \"1s\"").await;
    // Returns once vm-a's listener is closed: it refuses connections from now on.
    backends[0].stop().await;
    let counts = vm_counts(node.listener("tcp"), 60, 10).await;
    assert_eq!(
        counts.values().sum::<usize>(),
        60,
        "every client was served: {counts:?}"
    );
    assert_eq!(counts.get("vm-a"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_answer_come_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (node, _backends) = tcp_node("").await;
    let mut stream = tokio::net::TcpStream::connect(node.listener("tcp"))
        .await
        .unwrap();
    stream.write_all(b"last words\n").await.unwrap();
    // The client is done sending; the backend's answer must still arrive, then EOF.
    stream.shutdown().await.unwrap();
    let mut received = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut received))
        .await
        .unwrap()
        .unwrap();
    let mut lines = received.lines();
    let vm = lines.next().unwrap().to_string();
    assert_eq!(
        lines.next(),
        Some(format!("{vm} last words").as_str()),
        "{received:?}"
    );
}
