//! Real QEMU for the tests: a disk-less x86 guest under TCG whose 64 MiB of RAM come from a file of
//! random bytes (so every page is non-zero and a migration moves the whole 64 MiB, at a speed the
//! test sets with max-bandwidth). Each QEMU gets two QMP monitors: one for handover, one (the
//! observer) for the test to watch events and issue commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_core::model::Endpoint;
use handover_sources::qmp::{Event, QmpClient};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Guest RAM in MiB.
pub const RAM_MIB: u64 = 64;

/// Whether QEMU is here and works (`qemu-system-x86_64 --version`).
pub fn available() -> Result<(), super::harness::Lack> {
    super::harness::program("qemu-system-x86_64", "--version", "qemu-system-x86")
}

/// Writes the random RAM image both QEMUs map (privately: QEMU never writes to it).
pub fn ram_image(dir: &Path) -> PathBuf {
    let path = dir.join("ram.img");
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut random, RAM_MIB << 20), &mut file).unwrap();
    path
}

/// A QEMU process.
pub struct Qemu {
    child: Child,
    /// QMP monitor for handover.
    pub qmp: PathBuf,
    /// QMP monitor for the test.
    pub observer: PathBuf,
}

impl Qemu {
    /// Starts a guest; `incoming` makes it a migration destination (`unix:PATH`).
    pub fn start(dir: &Path, name: &str, ram: &Path, incoming: Option<&str>) -> Qemu {
        let qmp = dir.join(format!("{name}.qmp"));
        let observer = dir.join(format!("{name}-observer.qmp"));
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-m", &format!("{RAM_MIB}")])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=ram0,size={RAM_MIB}M,mem-path={},share=off",
                ram.display()
            ))
            .args([
                "-machine",
                "pc,memory-backend=ram0",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", observer.display()));
        if let Some(uri) = incoming {
            command.args(["-incoming", uri]);
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start QEMU");
        let started = Instant::now();
        while !(qmp.exists() && observer.exists()) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "QEMU {name} did not create its QMP sockets"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Qemu { child, qmp, observer }
    }

    /// Kills QEMU at once (its sockets go away with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp);
        let _ = std::fs::remove_file(&self.observer);
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test's own QMP connection: commands, and every event with QEMU's timestamp.
pub struct Observer {
    client: QmpClient,
    /// Events seen so far.
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl Observer {
    /// Connects to an observer monitor.
    pub async fn connect(path: &Path) -> Observer {
        let (client, mut events) =
            QmpClient::connect(&Endpoint::Unix(path.to_path_buf()), Duration::from_secs(10))
                .await
                .expect("observer QMP");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                sink.lock().push(event);
            }
        });
        Observer { client, events: seen }
    }

    /// Runs a command.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Value {
        self.client
            .execute(command, arguments)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    }

    /// Turns on migration events and limits the copy to `mib_per_second`.
    pub async fn prepare_migration(&self, mib_per_second: u64) {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await;
        self.execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": mib_per_second << 20})),
        )
        .await;
    }

    /// The migration status (`query-migrate`).
    pub async fn status(&self) -> String {
        let reply = self.execute("query-migrate", None).await;
        reply
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_string()
    }

    /// Waits until the migration status is one of `statuses`.
    pub async fn wait_status(&self, statuses: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if statuses.contains(&status.as_str()) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "migration status stayed {status}, wanted one of {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// QEMU's timestamp (ms since the epoch) of the first MIGRATION event with this status.
    pub fn migration_event_ms(&self, status: &str) -> Option<u64> {
        self.events
            .lock()
            .iter()
            .find(|e| e.name == "MIGRATION" && e.data.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|e| e.timestamp_us)
            .map(|us| us / 1000)
    }
}
