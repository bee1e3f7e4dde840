//! `handover demo` runs end to end and reports a clean migration.

mod common;

#[test]
fn the_demo_walks_a_migration_and_ends_clean() {
    let output = std::process::Command::new(common::binary())
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("notice prepare for vm-a: stable → draining"),
        "{stdout}"
    );
    assert!(stdout.contains("vm-a drained in"), "{stdout}");
    assert!(
        stdout.contains("notice completed for vm-a: migrating → ramping"),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    let draining = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("draining"))
        .unwrap();
    assert!(draining.contains("0 (0.0%)"), "{draining}");
    assert!(stdout.contains("result: no request failed"), "{stdout}");
    assert!(stdout.lines().filter(|l| l.starts_with("t=")).count() >= 20);
}
