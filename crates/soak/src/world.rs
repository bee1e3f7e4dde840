//! The processes under test: two handover nodes that list each other as peers (node A also drives
//! a HAProxy; node B is the one faults are injected into), and the HAProxy (Debian's package) in
//! front of the same HTTP backends. Each runs from a configuration written to the work directory
//! and logs there; every process started here is stopped when the soak ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Resident memory of a process in KiB (from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `handover run` process.
pub struct Node {
    /// `a` or `b`.
    pub name: &'static str,
    /// Control API base URL.
    pub control: String,
    /// Listener addresses by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    child: Option<Child>,
    config: PathBuf,
    ready: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    nofile: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Ready {
    control: String,
    listeners: BTreeMap<String, String>,
}

impl Node {
    /// Writes the node's configuration and starts it; returns once it listens.
    pub fn start(
        name: &'static str,
        bin: &Path,
        work: &Path,
        config: &str,
        nofile: Option<u64>,
    ) -> anyhow::Result<Node> {
        let path = work.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut node = Node {
            name,
            control: String::new(),
            listeners: BTreeMap::new(),
            child: None,
            config: path,
            ready: work.join(format!("{name}.ready.json")),
            log: work.join(format!("{name}.log")),
            bin: bin.to_path_buf(),
            nofile,
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .arg("--ready-file")
            .arg(&self.ready)
            .args(["--shutdown-grace", "1s"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready)
                && let Ok(ready) = serde_json::from_str::<Ready>(&text)
            {
                self.control = ready.control;
                self.listeners = ready
                    .listeners
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                    .collect();
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "node {} exited with {status}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not become ready; see {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`STOP`, `CONT`).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the node is not running")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same configuration (same ports, same state file).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// HAProxy in master-worker mode, one TCP frontend in front of backend `be` (servers `s00`...).
pub struct Haproxy {
    /// Runtime API socket.
    pub socket: PathBuf,
    /// Frontend address.
    pub frontend: SocketAddr,
    pid_file: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with one server per VM.
    pub fn start(work: &Path, servers: &[SocketAddr]) -> anyhow::Result<Haproxy> {
        let socket = work.join("haproxy.sock");
        let pid_file = work.join("haproxy.pid");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut config = format!(
            "global\n    stats socket {} mode 600 level admin\n    pidfile {}\n    nbthread 1\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
             frontend fe\n    bind {frontend}\n    default_backend be\n\
             backend be\n    balance roundrobin\n",
            socket.display(),
            pid_file.display()
        );
        for (i, address) in servers.iter().enumerate() {
            config.push_str(&format!("    server s{i:02} {address} weight 1\n"));
        }
        let config_path = work.join("haproxy.cfg");
        std::fs::write(&config_path, config)?;
        let status = Command::new("haproxy")
            .args(["-W", "-D", "-f"])
            .arg(&config_path)
            .status()
            .context("cannot run haproxy (bench/soak installs Debian's package as root)")?;
        if !status.success() {
            bail!("HAProxy did not start");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() || !pid_file.exists() {
            if Instant::now() > deadline {
                bail!("HAProxy's socket did not appear");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Haproxy {
            socket,
            frontend,
            pid_file,
        })
    }

    fn master_pid(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.pid_file)?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string())
    }

    /// A graceful reload (SIGUSR2 to the master): the new worker has none of the runtime changes.
    pub fn reload(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-USR2", &self.master_pid()?])
            .status()?;
        if !status.success() {
            bail!("HAProxy reload failed");
        }
        Ok(())
    }

    /// Runs a runtime API command.
    pub fn command(&self, command: &str) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// Servers that are in DRAIN or not at their configured weight.
    pub fn servers_not_at_rest(&self) -> anyhow::Result<Vec<String>> {
        let answer = self.command("show servers state be")?;
        Ok(answer
            .lines()
            .skip(2)
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let weight: u32 = f.get(7)?.parse().ok()?;
                let initial: u32 = f.get(8)?.parse().ok()?;
                let admin: u32 = f.get(6)?.parse().ok()?;
                (admin & 0x08 != 0 || weight != initial).then(|| f[3].to_string())
            })
            .collect())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Ok(pid) = self.master_pid() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
    }
}

/// The configuration of one node (control, `web` and `tcp` ports fixed so that a restart keeps
/// them): an HTTP listener `web` and an L4 listener `tcp` in front of every VM, the other node as
/// its peer and a state file (each optional), and optionally a `[[haproxy]]` section.
pub fn node_config(
    ports: [u16; 3],
    peer_url: Option<&str>,
    http: &[SocketAddr],
    tcp: &[SocketAddr],
    state: Option<&Path>,
    haproxy: Option<&Path>,
) -> String {
    let [control_port, web_port, tcp_port] = ports;
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:{control_port}\"\n\n[migration]\ndeadline = \"10s\"\n\n\
         [[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:{web_port}\"\npool = \"web\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:{tcp_port}\"\npool = \"tcp\"\n"
    );
    if let Some(state) = state {
        text.push_str(&format!("\n[state]\nfile = \"{}\"\n", state.display()));
    }
    if let Some(url) = peer_url {
        text.push_str(&format!(
            "\n[[peers]]\nname = \"peer\"\nurl = \"{url}\"\ntimeout = \"1s\"\n"
        ));
    }
    for (pool, addresses) in [("web", http), ("tcp", tcp)] {
        text.push_str(&format!(
            "\n[pools.{pool}]\nramp = {{ window = \"2s\" }}\ndeadline = \"10s\"\n"
        ));
        for (i, address) in addresses.iter().enumerate() {
            text.push_str(&format!(
                "\n[[pools.{pool}.backends]]\naddress = \"{address}\"\nvm = \"vm-{i:02}\"\n"
            ));
        }
    }
    if let Some(socket) = haproxy {
        let vms: Vec<String> = (0..http.len())
            .map(|i| format!("\"be/s{i:02}\" = \"vm-{i:02}\""))
            .collect();
        text.push_str(&format!(
            "\n[[haproxy]]\nname = \"lb\"\nsocket = \"{}\"\nvms = {{ {} }}\nstep = \"250ms\"\nramp = {{ window = \"2s\" }}\n",
            socket.display(),
            vms.join(", ")
        ));
    }
    text
}
