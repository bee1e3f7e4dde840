//! The nginx file writer: what the upstream block says for each phase (the weights solved from
//! the configured ones, `down`, the fallback when every server drains, moved addresses), that an
//! unchanged block is neither rewritten nor reloaded, and how a failing reload or an unwritable
//! file is reported. Reloads run a real program (`sh`) that records each run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use handover_core::balancer::{Balancer, BalancerError};
use handover_core::model::VmId;
use handover_core::phase::{PhaseCommand, Readdress};

use super::NginxBalancer;

/// A directory of the test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "handover-nginx-unit-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn upstream(&self) -> PathBuf {
        self.0.join("conf.d/web.upstream")
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.0.join("reloads"))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    /// A driver for three servers (vm-a weight 2, vm-b, vm-c weight 1) whose reload appends a line
    /// to `reloads`, or runs `reload` when given.
    fn balancer(&self, policy: &str, reload: Option<&str>) -> Arc<NginxBalancer> {
        let script = reload
            .map(str::to_string)
            .unwrap_or_else(|| format!("echo reloaded >> {}", self.0.join("reloads").display()));
        let config = handover_core::config::parse(&format!(
            "[control]\nbind = \"127.0.0.1:0\"\n\n[[nginx]]\nname = \"ngx\"\nupstream = \"web\"\nfile = \"{}\"\nreload = [\"sh\", \"-c\", {script:?}]\nextra = [\"keepalive 16;\"]\n{policy}\n\n[[nginx.servers]]\naddress = \"10.0.0.1:80\"\nvm = \"vm-a\"\nweight = 2\n\n[[nginx.servers]]\naddress = \"10.0.0.2:80\"\nvm = \"vm-b\"\n\n[[nginx.servers]]\naddress = \"10.0.0.3:80\"\nvm = \"vm-c\"\n",
            self.upstream().display()
        ))
        .unwrap();
        NginxBalancer::new(config.nginx[0].clone())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vm(name: &str) -> VmId {
    VmId::new(name).unwrap()
}

/// A drain command as the peer API reads it.
fn drain() -> PhaseCommand {
    serde_json::from_value(serde_json::json!({
        "action": "drain", "elapsed_ms": 0, "migrating": true, "deadline_in_ms": 3_600_000
    }))
    .unwrap()
}

/// The `server` lines of the file: (address, weight, down).
fn servers(path: &Path) -> Vec<(String, u32, bool)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .map(|rest| {
            let rest = rest.trim_end_matches(';');
            let mut words = rest.split_whitespace();
            let address = words.next().unwrap().to_string();
            let weight = words
                .next()
                .and_then(|w| w.strip_prefix("weight="))
                .unwrap()
                .parse()
                .unwrap();
            (address, weight, words.next() == Some("down"))
        })
        .collect()
}

#[tokio::test]
async fn stable_servers_are_written_whole_with_their_weights_and_extra_directives() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("", None);
    let mut inner = balancer.inner.lock().await;
    balancer.sync(&mut inner).await.unwrap();
    let text = std::fs::read_to_string(scratch.upstream()).unwrap();
    assert!(text.starts_with("# Written by handover"), "{text}");
    assert!(text.contains("upstream web {\n    keepalive 16;\n"), "{text}");
    assert!(text.ends_with("}\n"), "{text}");
    assert_eq!(
        servers(&scratch.upstream()),
        vec![
            ("10.0.0.1:80".into(), 2, false),
            ("10.0.0.2:80".into(), 1, false),
            ("10.0.0.3:80".into(), 1, false)
        ]
    );
    assert_eq!(scratch.reloads(), 1);
    assert!(
        !scratch.upstream().with_extension("handover-tmp").exists(),
        "the temporary file was renamed over the upstream"
    );
}

#[tokio::test]
async fn a_full_drain_marks_only_that_server_down_and_keeps_the_others_weights() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("", None);
    let applied = balancer.apply(&vm("vm-b"), drain()).await.unwrap();
    assert!(applied.serves);
    assert_eq!(applied.backends.len(), 1);
    assert_eq!(applied.backends[0].address, "10.0.0.2:80");
    assert_eq!(applied.backends[0].effective_weight, 0.0);
    assert_eq!(
        servers(&scratch.upstream()),
        vec![
            ("10.0.0.1:80".into(), 2, false),
            ("10.0.0.2:80".into(), 1, true),
            ("10.0.0.3:80".into(), 1, false)
        ]
    );
}

#[tokio::test]
async fn a_partial_drain_writes_weights_that_give_the_target_fraction_of_the_normal_share() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("drain = { target = 0.25 }", None);
    balancer.apply(&vm("vm-a"), drain()).await.unwrap();
    let written = servers(&scratch.upstream());
    assert!(written.iter().all(|(_, _, down)| !down), "{written:?}");
    let total: u32 = written.iter().map(|(_, w, _)| w).sum();
    // vm-a's normal share is 2/4; draining to 0.25 of it gives 1/8 of new work.
    let share = f64::from(written[0].1) / f64::from(total);
    assert!((share - 0.125).abs() < 0.01, "vm-a's share {share}: {written:?}");
    // The others keep their 1:1 ratio, scaled so that integer weights can say it.
    assert_eq!(written[1].1, written[2].1, "{written:?}");
    assert!(written[1].1 >= 100, "weights are scaled by 100: {written:?}");
}

#[tokio::test]
async fn when_every_server_drains_none_is_marked_down() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("", None);
    for name in ["vm-a", "vm-b", "vm-c"] {
        balancer.apply(&vm(name), drain()).await.unwrap();
    }
    let written = servers(&scratch.upstream());
    assert!(
        written.iter().all(|(_, weight, down)| !down && *weight >= 1),
        "nginx must keep serving: {written:?}"
    );
    let status = balancer.status().await.unwrap();
    assert!(
        status.pools[0].backends.iter().all(|b| b.share > 0.0),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_moved_address_is_written_for_that_vm_only() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("", None);
    let change = Readdress {
        new_ip: Some("10.9.9.9".parse().unwrap()),
        ..Readdress::default()
    };
    let applied = balancer.set_addresses(&vm("vm-c"), &change).await.unwrap();
    assert_eq!(applied.backends[0].address, "10.9.9.9:80");
    let addresses: Vec<String> = servers(&scratch.upstream())
        .into_iter()
        .map(|(address, _, _)| address)
        .collect();
    assert_eq!(addresses, vec!["10.0.0.1:80", "10.0.0.2:80", "10.9.9.9:80"]);
}

#[tokio::test]
async fn an_unchanged_upstream_is_neither_rewritten_nor_reloaded() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("", None);
    balancer.apply(&vm("vm-a"), drain()).await.unwrap();
    assert_eq!(scratch.reloads(), 1);
    let modified = std::fs::metadata(scratch.upstream()).unwrap().modified().unwrap();
    balancer.apply(&vm("vm-a"), drain()).await.unwrap();
    assert_eq!(scratch.reloads(), 1, "the same block again needs no reload");
    assert_eq!(
        std::fs::metadata(scratch.upstream()).unwrap().modified().unwrap(),
        modified
    );
    // A VM the instance does not serve changes nothing at all.
    let applied = balancer.apply(&vm("vm-z"), drain()).await.unwrap();
    assert!(!applied.serves);
    assert_eq!(scratch.reloads(), 1);
}

#[tokio::test]
async fn a_failing_reload_is_rejected_with_its_message_and_tried_again_on_the_next_change() {
    let scratch = Scratch::new();
    let balancer = scratch.balancer("", Some("echo 'nginx: [emerg] unknown directive' >&2; exit 1"));
    let error = balancer.apply(&vm("vm-a"), drain()).await.unwrap_err();
    match &error {
        BalancerError::Rejected(why) => {
            assert!(why.contains("unknown directive"), "{why}");
            assert!(why.contains("exit status: 1"), "{why}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Not recorded as written: the same desired state is written and reloaded again next time.
    assert!(balancer.inner.lock().await.written.is_none());
}

#[tokio::test]
async fn a_file_that_cannot_be_written_is_unreachable_and_named() {
    let scratch = Scratch::new();
    // The upstream's directory is a file: nothing can be created under it.
    std::fs::write(scratch.0.join("conf.d"), "not a directory").unwrap();
    let balancer = scratch.balancer("", None);
    let error = balancer.apply(&vm("vm-a"), drain()).await.unwrap_err();
    match &error {
        BalancerError::Unreachable(why) => {
            assert!(why.contains("web.upstream"), "{why}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(scratch.reloads(), 0, "nginx is not reloaded without its file");
}
