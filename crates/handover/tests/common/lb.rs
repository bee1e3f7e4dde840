//! Real HAProxy and nginx (from Debian's packages) for the driver tests, each on its own config
//! and sockets in a temporary directory, stopped when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::{self, Lack};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether HAProxy is here and works (`haproxy -v`).
pub fn haproxy_available() -> Result<(), Lack> {
    harness::program("haproxy", "-v", "haproxy")
}

/// Whether nginx with the stream module is here and works (`nginx -v`).
pub fn nginx_available() -> Result<(), Lack> {
    harness::program("nginx", "-v", "nginx")?;
    if Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        Ok(())
    } else {
        Err(Lack::Missing(
            "nginx's stream module is not installed (libnginx-mod-stream)".into(),
        ))
    }
}

fn wait_for(path: &Path, what: &str) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not appear: {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HAProxy in master-worker mode with one TCP frontend and backend `be`.
pub struct Haproxy {
    /// Runtime API socket.
    pub socket: PathBuf,
    /// Frontend address.
    pub frontend: SocketAddr,
    pid_file: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with servers `(name, address, weight)` in backend `be`.
    pub fn start(dir: &Path, name: &str, servers: &[(&str, SocketAddr, u32)]) -> Haproxy {
        let socket = dir.join(format!("{name}.sock"));
        let pid_file = dir.join(format!("{name}.pid"));
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = format!(
            "global\n    stats socket {} mode 600 level admin\n    pidfile {}\n    nbthread 1\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
             frontend fe\n    bind {frontend}\n    default_backend be\n\
             backend be\n    balance roundrobin\n",
            socket.display(),
            pid_file.display()
        );
        for (server, address, weight) in servers {
            config.push_str(&format!("    server {server} {address} weight {weight}\n"));
        }
        let config_path = dir.join(format!("{name}.cfg"));
        std::fs::write(&config_path, config).unwrap();
        let status = Command::new("haproxy")
            .args(["-W", "-D", "-f"])
            .arg(&config_path)
            .status()
            .unwrap();
        assert!(status.success(), "HAProxy did not start");
        wait_for(&socket, "HAProxy's runtime socket");
        wait_for(&pid_file, "HAProxy's pid file");
        Haproxy {
            socket,
            frontend,
            pid_file,
        }
    }

    fn master_pid(&self) -> String {
        std::fs::read_to_string(&self.pid_file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string()
    }

    /// Reloads (a new worker, with none of the runtime changes) and waits until it answers.
    pub fn reload(&self) {
        let before = self.worker_pid();
        assert!(
            Command::new("kill")
                .args(["-USR2", &self.master_pid()])
                .status()
                .unwrap()
                .success()
        );
        let started = Instant::now();
        loop {
            if let Some(pid) = self.try_command("show info").and_then(|i| pid_of(&i))
                && Some(pid) != before
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "HAProxy did not reload"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn worker_pid(&self) -> Option<String> {
        self.try_command("show info").and_then(|i| pid_of(&i))
    }

    fn try_command(&self, command: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        stream.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// Runs a runtime API command.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command).expect("runtime API answers")
    }

    /// Each server's (weight, draining) from `show servers state be`, by server name.
    pub fn servers(&self) -> std::collections::BTreeMap<String, (u32, bool)> {
        let answer = self.command("show servers state be");
        answer
            .lines()
            .skip(2)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[3].to_string(),
                    (f[7].parse().unwrap(), f[6].parse::<u32>().unwrap() & 0x08 != 0),
                )
            })
            .collect()
    }
}

fn pid_of(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .map(|p| p.trim().to_string())
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(&self.pid_file) {
            let pid = text.lines().next().unwrap_or("").trim().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
    }
}

/// An nginx with one stream (L4) server whose upstream comes from `upstream_file`.
pub struct Nginx {
    /// Its configuration file.
    pub config: PathBuf,
    /// Listen address.
    pub frontend: SocketAddr,
    pid_file: PathBuf,
}

impl Nginx {
    /// Starts nginx; `upstream_file` must already exist (handover writes it at start).
    pub fn start(dir: &Path, upstream: &str, upstream_file: &Path) -> Nginx {
        let pid_file = dir.join("nginx.pid");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\ndaemon on;\npid {};\n\
                 error_log {}/error.log;\nevents {{ worker_connections 1024; }}\n\
                 stream {{\n    include {};\n    server {{ listen {frontend}; proxy_pass {upstream}; }}\n}}\n",
                pid_file.display(),
                dir.display(),
                upstream_file.display()
            ),
        )
        .unwrap();
        let output = Command::new("nginx").arg("-c").arg(&config).output().unwrap();
        assert!(
            output.status.success(),
            "nginx did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        wait_for(&pid_file, "nginx's pid file");
        Nginx {
            config,
            frontend,
            pid_file,
        }
    }
}

impl Nginx {
    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// The PIDs of the worker processes that accept connections (not those shutting down after
    /// a reload).
    pub fn workers(&self) -> Vec<u32> {
        let Some(master) = self.master_pid() else {
            return Vec::new();
        };
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .filter(|pid| {
                let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let title = String::from_utf8_lossy(&title);
                title.contains("worker process") && !title.contains("shutting down")
            })
            .collect()
    }

    /// Waits (at most 20 s) until a reload took effect: every accepting worker is new, none of
    /// `before`.
    pub async fn wait_reloaded(&self, before: &[u32]) {
        let started = Instant::now();
        loop {
            let now = self.workers();
            if !now.is_empty() && now.iter().all(|pid| !before.contains(pid)) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nginx did not reload: workers {now:?}, before {before:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .arg("-c")
            .arg(&self.config)
            .args(["-s", "stop"])
            .status();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}
