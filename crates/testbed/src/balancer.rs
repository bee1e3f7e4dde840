//! The balancer in front of the guests: handover (`handover run`, configured with the policy under
//! test) or HAProxy (Debian's package, round robin, knowing nothing of migrations). Both listen on
//! the bridge: HTTP on :8080 (to the guests' port 80), TCP on :7007 (to their echo port 7).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::TestbedError;
use crate::guest::VmSpec;
use crate::netns::BRIDGE_ADDRESS;

/// What sits in front of the guests and what it does when a VM migrates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Short name (`unaware`, `drain`, `reduce-0.25`, `drain-ramp`, `haproxy`).
    pub name: String,
    /// Whether the migration is announced (`handover migrate`) or just happens (QMP directly).
    pub aware: bool,
    /// HAProxy instead of handover.
    pub haproxy: bool,
    /// Share of its normal weight the migrating VM keeps for new work.
    pub target: f64,
    /// Ramp window after the migration, seconds (0: back at once).
    pub ramp_s: f64,
    /// Adaptive drain (the level moves between 0 and `target` with the migration's progress).
    #[serde(default)]
    pub adaptive: bool,
    /// Switchover quiescence (no new work ahead of the switchover; `handover migrate` holds it).
    #[serde(default)]
    pub quiesce: bool,
}

impl Policy {
    /// The policies of the benchmark, by name.
    pub fn named(name: &str) -> Option<Self> {
        let policy = |aware, haproxy, target, ramp_s| Policy {
            name: name.to_string(),
            aware,
            haproxy,
            target,
            ramp_s,
            adaptive: false,
            quiesce: false,
        };
        Some(match name {
            "unaware" => policy(false, false, 1.0, 0.0),
            "drain" => policy(true, false, 0.0, 0.0),
            "reduce-0.25" => policy(true, false, 0.25, 0.0),
            "drain-ramp" => policy(true, false, 0.0, 10.0),
            "haproxy" => policy(false, true, 1.0, 0.0),
            "adaptive" => Policy {
                adaptive: true,
                ..policy(true, false, 0.5, 0.0)
            },
            "adaptive-quiesce" => Policy {
                adaptive: true,
                quiesce: true,
                ..policy(true, false, 0.5, 0.0)
            },
            _ => return None,
        })
    }

    /// Every policy of the benchmark.
    pub const ALL: [&'static str; 7] = [
        "unaware",
        "drain",
        "reduce-0.25",
        "drain-ramp",
        "haproxy",
        "adaptive",
        "adaptive-quiesce",
    ];
}

/// The HTTP port the balancer listens on.
pub const HTTP_PORT: u16 = 8080;
/// The TCP (echo) port the balancer listens on.
pub const TCP_PORT: u16 = 7007;
/// handover's control API inside the namespace.
pub const CONTROL: &str = "127.0.0.1:9090";

/// A running balancer.
#[derive(Debug)]
pub struct Balancer {
    child: Child,
    /// Where clients send HTTP.
    pub http: SocketAddr,
    /// Where clients open TCP connections.
    pub tcp: SocketAddr,
    /// handover's control API URL (none for HAProxy).
    pub control: Option<String>,
    /// Its log.
    pub log: PathBuf,
}

fn listen(port: u16) -> SocketAddr {
    SocketAddr::new(BRIDGE_ADDRESS.parse().expect("valid address"), port)
}

/// handover's configuration for `policy` in front of `vms`.
pub fn handover_config(policy: &Policy, vms: &[VmSpec]) -> String {
    let mut config = format!(
        "[control]\nbind = \"{CONTROL}\"\n\n\
         [[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"{}\"\npool = \"web\"\nresponse_timeout = \"30s\"\n\n\
         [[listeners]]\nname = \"echo\"\nkind = \"tcp\"\nbind = \"{}\"\npool = \"echo\"\n",
        listen(HTTP_PORT),
        listen(TCP_PORT)
    );
    for (pool, port) in [("web", 80), ("echo", 7)] {
        let _ = write!(
            config,
            "\n[pools.{pool}]\nalgorithm = \"round_robin\"\n\
             drain = {{ target = {}, shape = \"step\", keep = \"connections\", adaptive = {}, quiesce = {} }}\n\
             ramp = {{ window = \"{}ms\", aggression = 1.0, min_percent = 10 }}\n\
             deadline = \"5m\"\nconnect_timeout = \"2s\"\nretries = 2\n",
            policy.target,
            policy.adaptive,
            policy.quiesce,
            (policy.ramp_s * 1000.0) as u64
        );
        for vm in vms {
            let _ = write!(
                config,
                "\n[[pools.{pool}.backends]]\naddress = \"{}:{port}\"\nvm = \"{}\"\n",
                vm.ip, vm.name
            );
        }
    }
    config
}

/// HAProxy's configuration in front of `vms`: round robin, a new connection per request to the
/// guests (busybox httpd closes after each response anyway), the same ports as handover.
pub fn haproxy_config(vms: &[VmSpec]) -> String {
    let mut config = format!(
        "global\n    maxconn 4096\n\ndefaults\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 30s\n    retries 2\n    option redispatch\n\n\
         frontend web\n    mode http\n    bind {}\n    default_backend web\n\n\
         backend web\n    mode http\n    balance roundrobin\n    option http-server-close\n",
        listen(HTTP_PORT)
    );
    for vm in vms {
        let _ = writeln!(config, "    server {} {}:80", vm.name, vm.ip);
    }
    let _ = write!(
        config,
        "\nfrontend echo\n    mode tcp\n    bind {}\n    timeout client 1h\n    default_backend echo\n\n\
         backend echo\n    mode tcp\n    balance roundrobin\n    timeout server 1h\n",
        listen(TCP_PORT)
    );
    for vm in vms {
        let _ = writeln!(config, "    server {} {}:7", vm.name, vm.ip);
    }
    config
}

impl Balancer {
    /// Starts the balancer of `policy` (handover is `handover_binary`) with its files in `dir`.
    pub fn start(
        policy: &Policy,
        vms: &[VmSpec],
        handover_binary: &Path,
        dir: &Path,
    ) -> Result<Self, TestbedError> {
        let log = dir.join(format!("{}-balancer.log", policy.name));
        let log_file = std::fs::File::create(&log).map_err(|e| TestbedError::io(&log, e))?;
        let (mut command, control) = if policy.haproxy {
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, haproxy_config(vms)).map_err(|e| TestbedError::io(&path, e))?;
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(&path);
            (command, None)
        } else {
            let path = dir.join(format!("{}.toml", policy.name));
            std::fs::write(&path, handover_config(policy, vms)).map_err(|e| TestbedError::io(&path, e))?;
            let mut command = Command::new(handover_binary);
            command.arg("run").arg("--config").arg(&path);
            (command, Some(format!("http://{CONTROL}")))
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| TestbedError::io(&log, e))?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| TestbedError::Missing(format!("cannot start {:?}: {e}", command.get_program())))?;
        let mut balancer = Self {
            child,
            http: listen(HTTP_PORT),
            tcp: listen(TCP_PORT),
            control,
            log,
        };
        balancer.wait_listening(Duration::from_secs(10))?;
        Ok(balancer)
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<(), TestbedError> {
        let started = Instant::now();
        let mut ports = vec![self.http, self.tcp];
        if let Some(control) = &self.control {
            ports.push(
                control
                    .trim_start_matches("http://")
                    .parse()
                    .expect("valid control address"),
            );
        }
        loop {
            if ports
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(TestbedError::Failed(format!(
                    "the balancer exited ({status}): {}",
                    log.trim()
                )));
            }
            if started.elapsed() > timeout {
                return Err(TestbedError::Failed(format!(
                    "the balancer did not listen within {timeout:?} (see {})",
                    self.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop();
    }
}
