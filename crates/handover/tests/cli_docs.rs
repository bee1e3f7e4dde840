//! What the CLI says about itself: shell completions and man pages generated from the same clap
//! definition the binary parses with (so they cannot drift), and the example systemd unit.

mod common;

use common::harness;

use std::process::{Command, Stdio};

fn main() {
    harness::main(vec![
        harness::test(
            "completions_cover_every_command_and_bash_parses_them",
            completions_cover_every_command_and_bash_parses_them,
        ),
        harness::test(
            "man_pages_render_for_handover_and_each_command",
            man_pages_render_for_handover_and_each_command,
        ),
        harness::test(
            "the_example_systemd_unit_verifies",
            the_example_systemd_unit_verifies,
        )
        .needs(systemd_analyze),
        harness::test_async(
            "process_logs_have_no_colour_off_a_terminal_and_are_json_on_request",
            process_logs_have_no_colour_off_a_terminal_and_are_json_on_request,
        ),
    ]);
}

fn handover(args: &[&str]) -> std::process::Output {
    Command::new(common::binary()).args(args).output().unwrap()
}

const COMMANDS: &[&str] = &[
    "run",
    "reload",
    "check",
    "notify",
    "migrate",
    "libvirt-hook",
    "sim",
    "testbed",
    "status",
    "demo",
];

fn completions_cover_every_command_and_bash_parses_them() {
    for shell in ["bash", "zsh", "fish"] {
        let output = handover(&["completions", shell]);
        assert!(
            output.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let script = String::from_utf8(output.stdout).unwrap();
        for command in COMMANDS {
            assert!(script.contains(command), "{shell} completions lack {command}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("handover.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
            // Sourced and asked, it completes the commands.
            let probe = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {}; COMP_WORDS=(handover no); COMP_CWORD=1; _handover handover no handover; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                    path.display()
                ))
                .output()
                .unwrap();
            let replies = String::from_utf8_lossy(&probe.stdout);
            assert!(
                replies.lines().any(|l| l == "notify"),
                "bash completes no- to notify: {replies}"
            );
        }
    }
    assert!(!handover(&["completions", "tcsh"]).status.success());
}

fn man_pages_render_for_handover_and_each_command() {
    let page = handover(&["man"]);
    assert!(page.status.success());
    let roff = String::from_utf8(page.stdout).unwrap();
    assert!(roff.contains(".TH handover 1"), "{roff}");
    let plain = roff.replace("\\-", "-");
    for command in COMMANDS {
        assert!(plain.contains(command), "handover(1) lists {command}");
        let sub = handover(&["man", command]);
        assert!(
            sub.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&sub.stderr)
        );
        let text = String::from_utf8(sub.stdout).unwrap();
        assert!(text.contains(&format!(".TH handover-{command} 1")), "{text}");
    }
    let unknown = handover(&["man", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("the commands are run, check"));
    // Rendered by man itself where it is installed.
    if let Ok(mut man) = Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        man.stdin.take().unwrap().write_all(roff.as_bytes()).unwrap();
        let out = man.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("migration-aware load balancer"));
    }
}

/// Whether systemd-analyze is here and works.
fn systemd_analyze() -> Result<(), harness::Lack> {
    harness::program("systemd-analyze", "--version", "systemd")
}

fn the_example_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/handover.service"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handover.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/handover.toml"),
        &config,
    )
    .unwrap();
    let unit = unit
        .replace("/usr/local/bin/handover", &common::binary())
        .replace("/etc/handover/handover.toml", config.to_str().unwrap());
    let path = dir.path().join("handover.service");
    std::fs::write(&path, unit).unwrap();
    // The unit's Documentation= names handover(1): installed as the unit's comment says.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    std::fs::write(man1.join("handover.1"), handover(&["man"]).stdout).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's own units may have their own).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("handover.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {stderr}");
}

async fn process_logs_have_no_colour_off_a_terminal_and_are_json_on_request() {
    let config = "[control]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:9\"\nvm = \"vm-a\"\n";
    let text = common::Node::start(config);
    assert!(common::log_contains(&text, "listening", std::time::Duration::from_secs(5)).await);
    assert!(
        !text.log().contains('\u{1b}'),
        "colour codes in a log file: {:?}",
        text.log()
    );

    let json = common::Node::start_with(config, &["--log-format", "json"]);
    assert!(common::log_contains(&json, "listening", std::time::Duration::from_secs(5)).await);
    for line in json.log().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["message"].is_string(),
            "{line}"
        );
    }
}
