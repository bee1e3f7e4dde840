//! Two real libvirt daemons on one machine, as two hosts: each `libvirtd` runs in its own network,
//! mount and UTS namespace (its own hostname, host UUID, `/etc/libvirt`, `/run/libvirt`,
//! `/var/{lib,cache,log}/libvirt` and `/etc/hosts`), and the two network namespaces are joined by a
//! veth pair, so that libvirt live-migrates a guest from one to the other over TCP exactly as
//! between two machines. The test reaches each daemon through its socket
//! (`qemu:///system?socket=...`); each daemon's hook script is the test's to write
//! ([`Rig::set_hook`]).
//!
//! Everything is named after the test's process id (namespaces) or lives in a temporary directory,
//! and [`Rig`]'s `Drop` destroys the domains, stops the daemons and QEMU, and deletes the
//! namespaces, whether the test passed or not.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Node, eventually};

/// What a test needs before it can build the rig; `Err` says what is missing.
pub fn missing_part() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("needs root (network, mount and UTS namespaces; libvirtd)".into());
    }
    for (program, package) in [
        ("libvirtd", "libvirt-daemon"),
        ("virsh", "libvirt-clients"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ] {
        if Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{program} is missing (Debian package {package}; scripts/test installs it)"
            ));
        }
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so").exists() {
        return Some(
            "libvirt's QEMU driver is missing (libvirt-daemon-driver-qemu; scripts/test installs it)".into(),
        );
    }
    // Debian's libvirt 9.0 refuses to start its QEMU driver without this user, even with
    // user = "root" in qemu.conf; libvirt-daemon-system creates it, scripts/test too.
    if Command::new("id")
        .arg("libvirt-qemu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return Some("the libvirt-qemu user is missing (scripts/test creates it)".into());
    }
    if !Path::new("/usr/share/qemu/qboot.rom").exists() {
        return Some("QEMU's qboot.rom is missing (qemu-system-data)".into());
    }
    None
}

/// The libvirt version `libvirtd --version` reports.
pub fn version() -> String {
    Command::new("libvirtd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// One "host": a libvirtd in its namespaces.
pub struct Host {
    /// Its hostname (what libvirt migrates to).
    pub hostname: String,
    /// Its address on the veth between the hosts.
    pub address: String,
    /// Its network namespace.
    pub netns: String,
    /// The directory holding its `/etc/libvirt`, `/run/libvirt`, `/var/...`.
    pub root: PathBuf,
    /// The URI that reaches its daemon from the test.
    pub uri: String,
    daemon: Option<Child>,
}

impl Host {
    /// Runs `virsh -c URI ARGS`.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run virsh")
    }

    /// The state of a domain here (`running`, `paused`, `shut off`), or `None` if it is not here.
    pub fn domstate(&self, domain: &str) -> Option<String> {
        let output = self.virsh(&["domstate", domain]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The path of a file inside this host's `/var/log/libvirt`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.root.join("var/log/libvirt").join(name)
    }

    fn stop(&mut self) {
        // Domains outlive libvirtd: destroy them first, then stop the daemon, then make sure.
        let names = self.virsh(&["list", "--all", "--name"]);
        for name in String::from_utf8_lossy(&names.stdout).lines() {
            let name = name.trim();
            if !name.is_empty() {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(daemon.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = daemon.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("run/libvirt/qemu")) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "pid")
                    && let Ok(pid) = std::fs::read_to_string(entry.path())
                {
                    let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
                }
            }
        }
    }
}

/// The two hosts and the link between them.
pub struct Rig {
    /// Host a and host b.
    pub hosts: [Host; 2],
    _dir: tempfile::TempDir,
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Rig {
    /// Builds both hosts, each with a hook script that does nothing (see [`Rig::set_hook`]).
    /// Returns once both daemons answer.
    pub fn start(tag: &str) -> Result<Rig, String> {
        let dir = tempfile::Builder::new()
            .prefix("handover-libvirt-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let names = ["a", "b"];
        let addresses = ["10.78.0.1", "10.78.0.2"];
        let mut hosts: Vec<Host> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let root = dir.path().join(name);
            let hostname = format!("hv{name}-{tag}");
            hosts.push(Host {
                hostname,
                address: addresses[i].to_string(),
                netns: format!("hv{name}-{tag}"),
                uri: format!(
                    "qemu:///system?socket={}",
                    root.join("run/libvirt/libvirt-sock").display()
                ),
                root,
                daemon: None,
            });
        }
        let mut rig = Rig {
            hosts: [hosts.remove(0), hosts.remove(0)],
            _dir: dir,
        };
        rig.network()?;
        for i in 0..2 {
            rig.configure(i)?;
        }
        for i in 0..2 {
            rig.launch(i)?;
        }
        for host in &rig.hosts {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let output = host.virsh(&["hostname"]);
                if output.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(host.log_file("libvirtd.log")).unwrap_or_default();
                    return Err(format!(
                        "libvirtd of {} did not answer: {}\n{log}",
                        host.hostname,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(rig)
    }

    fn network(&self) -> Result<(), String> {
        let [a, b] = &self.hosts;
        for host in &self.hosts {
            run(Command::new("ip").args(["netns", "add", &host.netns]))?;
            run(Command::new("ip").args(["-n", &host.netns, "link", "set", "lo", "up"]))?;
        }
        run(Command::new("ip").args([
            "-n", &a.netns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns",
            &b.netns,
        ]))?;
        for host in &self.hosts {
            run(Command::new("ip").args([
                "-n",
                &host.netns,
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                "veth0",
            ]))?;
            run(Command::new("ip").args(["-n", &host.netns, "link", "set", "veth0", "up"]))?;
        }
        Ok(())
    }

    /// Replaces host `i`'s `/etc/libvirt/hooks/qemu`. libvirt looks for the hook when it starts
    /// and runs the file as it is at each call, so the script can be written once the handover
    /// nodes it talks to are listening.
    pub fn set_hook(&self, i: usize, script: &str) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let hooks = self.hosts[i].root.join("etc/libvirt/hooks");
        let next = hooks.join("qemu.next");
        std::fs::write(&next, script).map_err(|e| format!("{}: {e}", next.display()))?;
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        std::fs::rename(&next, hooks.join("qemu")).map_err(|e| e.to_string())
    }

    fn configure(&self, i: usize) -> Result<(), String> {
        let host = &self.hosts[i];
        let root = &host.root;
        for dir in [
            "etc/libvirt/hooks",
            "run/libvirt",
            "var/lib/libvirt",
            "var/cache/libvirt",
            "var/log/libvirt",
        ] {
            std::fs::create_dir_all(root.join(dir)).map_err(|e| e.to_string())?;
        }
        let write = |path: &str, text: &str| {
            std::fs::write(root.join(path), text).map_err(|e| format!("{path}: {e}"))
        };
        write(
            "etc/libvirt/libvirtd.conf",
            &format!(
                "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{}\"\nauth_tcp = \"none\"\n\
                 auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nunix_sock_rw_perms = \"0700\"\n\
                 host_uuid = \"4a6b1d3e-0000-4000-8000-00000000000{}\"\n\
                 log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                host.address,
                i + 1
            ),
        )?;
        // No cgroups, namespaces, security labels or virtlogd: none of it exists inside these
        // namespaces, and none of it is what the test is about.
        write(
            "etc/libvirt/qemu.conf",
            "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n\
             cgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = \"file\"\n\
             dynamic_ownership = 0\n",
        )?;
        let hosts: String = self
            .hosts
            .iter()
            .map(|h| format!("{} {}\n", h.address, h.hostname))
            .collect();
        write("hosts", &format!("127.0.0.1 localhost\n{hosts}"))?;
        self.set_hook(i, "#!/bin/sh\nexit 0\n")
    }

    fn launch(&mut self, i: usize) -> Result<(), String> {
        let host = &self.hosts[i];
        let root = host.root.display().to_string();
        let script = format!(
            "set -e\nhostname {hostname}\n\
             for d in etc/libvirt run/libvirt var/lib/libvirt var/cache/libvirt var/log/libvirt; do \
               mkdir -p /$d; mount --bind {root}/$d /$d; done\n\
             mount --bind {root}/hosts /etc/hosts\n\
             exec libvirtd --listen -f /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid\n",
            hostname = host.hostname,
        );
        let out = std::fs::File::create(host.root.join("libvirtd.out")).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &host.netns])
            .args(["unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        self.hosts[i].daemon = Some(child);
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.stop();
        }
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "delete", &host.netns]).status();
        }
    }
}

/// The XML of a small guest: the testbed's kernel and initramfs (a Debian kernel and busybox),
/// TCG, booted by qboot, with `guest_mib` MiB of non-zero data written at boot so that a
/// migration has something to copy; handover's metadata names its VM.
pub fn guest_xml(name: &str, vm: &str, guest_dir: &Path, guest_mib: u32) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <metadata>
    <handover:vm xmlns:handover="urn:handover">{vm}</handover:vm>
  </metadata>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <loader type='rom'>/usr/share/qemu/qboot.rom</loader>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet mitigations=off tsc=reliable no_timer_check i8042.noaux i8042.nokbd i8042.nopnp guest_name={vm} guest_buffer_mib={guest_mib} guest_fill=1</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='/var/log/libvirt/{name}.serial'/></serial>
    <interface type='user'><model type='virtio'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        memory = guest_mib + 96,
        kernel = guest_dir.join("vmlinux").display(),
        initrd = guest_dir.join("initramfs.gz").display(),
    )
}

/// One line of `virsh event --timestamp`, with libvirt's time of it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Milliseconds since the Unix epoch, from virsh's timestamp.
    pub at_ms: u64,
    /// The rest of the line (`event 'lifecycle' for domain 'web1': Started Migrated`).
    pub text: String,
}

/// The test's own `virsh event --all --loop --timestamp` on one host.
pub struct EventLog {
    child: Child,
    events: Arc<Mutex<Vec<Event>>>,
}

impl EventLog {
    /// Starts following a host's events.
    pub fn follow(host: &Host) -> EventLog {
        let mut child = Command::new("virsh")
            .args(["-q", "-c", &host.uri, "event", "--all", "--loop", "--timestamp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run virsh event");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((at, text)) = line.split_once(": event ")
                    && let Some(at_ms) = parse_virsh_time(at)
                {
                    sink.lock().push(Event {
                        at_ms,
                        text: format!("event {text}"),
                    });
                }
            }
        });
        EventLog { child, events }
    }

    /// The first event whose text ends with `suffix` (`Started Migrated`), if it came.
    pub fn find(&self, suffix: &str) -> Option<Event> {
        self.events
            .lock()
            .iter()
            .find(|e| e.text.ends_with(suffix))
            .cloned()
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// Forgets the events so far.
    pub fn clear(&self) {
        self.events.lock().clear();
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `2026-12-01 09:30:48.183+0000` (virsh's UTC timestamp) in milliseconds since the Unix epoch.
pub fn parse_virsh_time(text: &str) -> Option<u64> {
    let text = text.trim().strip_suffix("+0000")?;
    let (date, time) = text.split_once(' ')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, millis) = time.split_once('.')?;
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (hms.next()??, hms.next()??, hms.next()??);
    let millis: i64 = millis.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60 * 1000 + s * 1000 + millis).ok()
}

/// The domain every test migrates.
pub const DOMAIN: &str = "web1";

/// A port for node a's control API, known before node a starts (node b needs it as its peer): an
/// ephemeral port the kernel hands out, released just before node b starts and node a binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The hook libvirt runs on one host: handover's, in the test's network namespace (where the
/// nodes listen), with `--veto`.
pub fn hook_script(control: &str) -> String {
    format!(
        "#!/bin/sh\nexec nsenter --net=/proc/{pid}/ns/net {handover} libvirt-hook \
         --control {control} --drain-timeout 20s --veto -- \"$@\"\n",
        pid = std::process::id(),
        handover = super::binary(),
    )
}

/// A node's configuration: a TCP listener in front of `backends` (pool `web`), libvirt's events
/// from `uri`, and `coordination` (its `[[peers]]` or `[fleet]` section).
pub fn libvirt_node_config(
    control_port: u16,
    backends: &[(&str, SocketAddr)],
    uri: &str,
    coordination: &str,
) -> String {
    let mut text = format!(
        "[control]\nbind = \"127.0.0.1:{control_port}\"\n\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [pools.web]\ndrain = {{ target = 0.0 }}\nramp = {{ window = \"1s\" }}\n"
    );
    for (vm, address) in backends {
        text.push_str(&format!(
            "\n[[pools.web.backends]]\naddress = \"{address}\"\nvm = \"{vm}\"\n"
        ));
    }
    text.push_str(&format!("\n{coordination}\n[[libvirt]]\nuri = \"{uri}\"\n"));
    text
}

/// The phase a node's own data plane applies to a VM's backend.
pub async fn data_plane_phase(node: &Node, vm: &str) -> String {
    let status: serde_json::Value = node.client(None).get("/v1/balancer/status").await.unwrap();
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["vm"] == vm)
        .map(|b| b["phase"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

pub async fn migrations(node: &Node) -> Vec<serde_json::Value> {
    let value: serde_json::Value = node.client(None).get("/v1/migrations").await.unwrap();
    value.as_array().unwrap().clone()
}

/// Waits until a node's log has `text`.
pub async fn log_eventually(node: &Node, text: &str) -> bool {
    eventually(Duration::from_secs(10), || async { node.log().contains(text) }).await
}

/// Runs `virsh migrate` in a thread; returns its output when it ends.
pub fn migrate(
    from: &Host,
    to_uri: &str,
    bandwidth_mib: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let uri = from.uri.clone();
    let to = to_uri.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new("virsh")
            .args(["-q", "-c", &uri, "migrate", "--live", DOMAIN, &to])
            .args(["--bandwidth", &bandwidth_mib.to_string()])
            .output()
            .unwrap()
    })
}
