//! Trace arrivals: a scenario replays recorded connection arrival times, and a bad trace is refused
//! with its line.

use std::path::PathBuf;

use handover_sim::experiment::run_one;
use handover_sim::policy::Policy;
use handover_sim::scenario::{self, ScenarioError};

/// A fresh directory for this test's files.
fn directory(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handover-sim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn scenario(trace: &str, fidelity: &str) -> String {
    format!(
        r#"
name = "trace"
fidelity = "{fidelity}"
duration = "20s"
[vm]
ram = "256MiB"
hot_set = "16MiB"
[migration]
start = "5s"
max_bandwidth = "128MiB"
[traffic]
trace = "{trace}"
[[policies]]
name = "unaware"
aware = false
"#
    )
}

#[test]
fn a_trace_is_replayed_arrival_by_arrival() {
    let dir = directory("replay");
    // 500 arrivals in the first 10 s, then none.
    let times: Vec<String> = (0..500).map(|i| format!("{:.3}", i as f64 * 0.02)).collect();
    std::fs::write(
        dir.join("arrivals.txt"),
        format!("# test trace\n{}\n", times.join("\n")),
    )
    .unwrap();
    let points = scenario::parse_in(&scenario("arrivals.txt", "request"), &dir).unwrap();
    let s = &points[0].scenario;
    assert_eq!(s.traffic.trace_arrivals.as_ref().unwrap().len(), 500);
    // Its mean rate is what flow fidelity and fleets use.
    assert!((s.connection_rate() - 500.0 / 9.98).abs() < 1e-9);
    let result = run_one(s, &Policy::new(&s.policies[0]), 1);
    // One request per connection: every arrival of the trace, and nothing else, was served.
    assert_eq!(result.requests, 500, "{result:?}");
    // The same trace with every seed: the arrivals do not depend on the seed.
    assert_eq!(run_one(s, &Policy::new(&s.policies[0]), 2).requests, 500);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_trace_is_refused_with_its_line() {
    let dir = directory("bad");
    let cases = [
        ("unordered.txt", "0.1\n0.3\n0.2\n", "line 3"),
        ("text.txt", "# ok\n0.1\nsoon\n", "line 3"),
        ("negative.txt", "-1\n", "line 1"),
        ("empty.txt", "# nothing\n", "no arrivals"),
    ];
    for (file, body, expected) in cases {
        std::fs::write(dir.join(file), body).unwrap();
        let error = scenario::parse_in(&scenario(file, "request"), &dir).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ScenarioError::Invalid(_)), "{message}");
        assert!(
            message.contains("traffic.trace") && message.contains(expected),
            "{file}: {message}"
        );
    }
    let missing = scenario::parse_in(&scenario("missing.txt", "flow"), &dir)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read") && missing.contains("missing.txt"),
        "{missing}"
    );
    // A trace and a rate together are ambiguous.
    let both = scenario("unordered.txt", "flow").replace("[traffic]", "[traffic]\nconnection_rate = 5");
    let message = scenario::parse_in(&both, &dir).unwrap_err().to_string();
    assert!(message.contains("exactly one"), "{message}");
    std::fs::remove_dir_all(dir).unwrap();
}
