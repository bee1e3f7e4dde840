//! Real etcd (Debian's `etcd-server`) for the fleet tests: one member or a cluster of several on
//! loopback, on ephemeral ports with temporary data directories, stopped when dropped. Shared by
//! the fleet crate's tests and the end-to-end tests of `handover` (included by path).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether etcd and etcdctl can run here; the reason when not.
pub fn available() -> Result<(), String> {
    for (program, arg) in [("etcd", "--version"), ("etcdctl", "version")] {
        match Command::new(program).arg(arg).output() {
            Ok(o) if o.status.success() => {}
            _ => {
                return Err(format!(
                    "{program} is not installed (Debian's etcd-server and etcd-client); scripts/test installs them as root"
                ));
            }
        }
    }
    Ok(())
}

/// One member of a cluster.
struct Member {
    name: String,
    client: String,
    peer: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// TLS files of a cluster started with TLS.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate and key (also usable as a client certificate).
    pub cert: PathBuf,
    /// The key.
    pub key: PathBuf,
}

/// A running etcd cluster.
pub struct Etcd {
    members: Vec<Member>,
    initial_cluster: String,
    tls: Option<Tls>,
    dir: tempfile::TempDir,
    /// Where the TLS files are (kept as long as the cluster).
    _certs: Option<tempfile::TempDir>,
}

impl Etcd {
    /// One member.
    pub fn single() -> Etcd {
        Self::cluster(1)
    }

    /// `size` members on loopback, waiting until every one is healthy.
    pub fn cluster(size: usize) -> Etcd {
        Self::start(size, None)
    }

    /// One member serving clients over TLS with certificates made by `openssl` (Debian's).
    pub fn single_tls() -> Result<Etcd, String> {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_certificates(dir.path())?;
        let mut etcd = Self::start(1, Some(tls));
        etcd._certs = Some(dir);
        Ok(etcd)
    }

    fn start(size: usize, tls: Option<Tls>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            tls,
            dir,
            _certs: None,
        };
        for i in 0..size {
            etcd.spawn(i);
        }
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let mut command = Command::new("etcd");
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args([
                "--listen-client-urls",
                &m.client,
                "--advertise-client-urls",
                &m.client,
            ])
            .args([
                "--listen-peer-urls",
                &m.peer,
                "--initial-advertise-peer-urls",
                &m.peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "handover-test",
            ])
            // Faster elections on a busy machine are not wanted: keep etcd's defaults
            // (100 ms heartbeat, 1 s election), as an operator would run it.
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca);
        }
        let child = command.spawn().expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// The TLS files, when started with TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The endpoints as a TOML array.
    pub fn toml_endpoints(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Runs etcdctl against the live members; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client.clone())
            .collect();
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")));
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.cert.display()))
                .arg(format!("--key={}", tls.key.display()));
        }
        let output = command.args(args).output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Waits until every running member answers `endpoint health`.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.etcdctl(&["endpoint", "health"]).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the current leader (asking the running members).
    pub fn leader(&self) -> Option<usize> {
        let text = self.etcdctl(&["endpoint", "status", "-w", "json"]).ok()?;
        let statuses: serde_json::Value = serde_json::from_str(&text).ok()?;
        for status in statuses.as_array()? {
            let id = status["Status"]["header"]["member_id"].as_u64()?;
            let leader = status["Status"]["leader"].as_u64()?;
            if id == leader {
                let endpoint = status["Endpoint"].as_str()?;
                return self.members.iter().position(|m| m.client == endpoint);
            }
        }
        None
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts member `i` again on its data directory (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Starts every stopped member again and waits until they are healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Every member's log.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with `openssl`.
fn make_certificates(dir: &std::path::Path) -> Result<Tls, String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl is not installed ({e})"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=handover-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ])?;
    Ok(Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}
