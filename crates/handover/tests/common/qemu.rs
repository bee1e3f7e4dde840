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

/// Writes a multiboot image whose code adds one to a byte of every 4 KiB page from `from_kib` to
/// `to_kib` KiB of guest memory, over and over, as fast as the vCPU runs: a guest that dirties that
/// whole range between any two syncs of the dirty log (so that a copy slower than the range per
/// downtime-limit never converges, and no pass is ever clean). QEMU loads it with `-kernel`
/// (multiboot's a.out kludge: a flat binary at 1 MiB, entered in 32-bit protected mode with
/// interrupts off).
pub fn dirtying_kernel(dir: &Path, from_kib: u32, to_kib: u32) -> PathBuf {
    let (from, to) = (from_kib << 10, to_kib << 10);
    let mut image = Vec::new();
    // The multiboot header: magic, flags (bit 16: addresses below), checksum, header/load
    // address 1 MiB, load the whole file, no bss, entry right after the header.
    let (magic, flags) = (0x1BAD_B002u32, 0x0001_0000u32);
    for word in [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        0x0010_0000,
        0x0010_0000,
        0,
        0,
        0x0010_0020,
    ] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.push(0xBF); // start: mov edi, from
    image.extend_from_slice(&from.to_le_bytes());
    image.extend_from_slice(&[0xFE, 0x07]); // again: inc byte [edi]
    image.extend_from_slice(&[0x81, 0xC7, 0x00, 0x10, 0x00, 0x00]); // add edi, 4096
    image.extend_from_slice(&[0x81, 0xFF]); // cmp edi, to
    image.extend_from_slice(&to.to_le_bytes());
    image.extend_from_slice(&[0x72, 0xF0]); // jb again
    image.extend_from_slice(&[0xEB, 0xE9]); // jmp start
    let path = dir.join("dirty.bin");
    std::fs::write(&path, image).unwrap();
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
        let guest = [
            "-m".to_string(),
            RAM_MIB.to_string(),
            "-object".to_string(),
            format!(
                "memory-backend-file,id=ram0,size={RAM_MIB}M,mem-path={},share=off",
                ram.display()
            ),
            "-machine".to_string(),
            "pc,memory-backend=ram0".to_string(),
        ];
        Self::spawn(dir, name, &guest, incoming)
    }

    /// Starts a guest that runs `kernel` (a multiboot image such as [`dirtying_kernel`]) in
    /// `RAM_MIB` of RAM: zeroed, or the random bytes of `ram` (see [`ram_image`]).
    pub fn start_kernel(
        dir: &Path,
        name: &str,
        kernel: &Path,
        ram: Option<&Path>,
        incoming: Option<&str>,
    ) -> Qemu {
        let mut guest = vec!["-m".to_string(), RAM_MIB.to_string()];
        match ram {
            Some(ram) => guest.extend([
                "-object".to_string(),
                format!(
                    "memory-backend-file,id=ram0,size={RAM_MIB}M,mem-path={},share=off",
                    ram.display()
                ),
                "-machine".to_string(),
                "pc,memory-backend=ram0".to_string(),
            ]),
            None => guest.extend(["-machine".to_string(), "pc".to_string()]),
        }
        guest.extend(["-kernel".to_string(), kernel.display().to_string()]);
        Self::spawn(dir, name, &guest, incoming)
    }

    fn spawn(dir: &Path, name: &str, guest: &[String], incoming: Option<&str>) -> Qemu {
        let qmp = dir.join(format!("{name}.qmp"));
        let observer = dir.join(format!("{name}-observer.qmp"));
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg"])
            .args(guest)
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
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

    /// Waits until the guest writes the page at `address` (a guest such as [`dirtying_kernel`]
    /// runs its loop only once the firmware has loaded it, which takes a while under TCG on a
    /// loaded machine: a migration begun before would copy a guest that dirties nothing). Reads
    /// the page twice with `pmemsave` into `dir` until the two reads differ, for at most `timeout`.
    pub async fn wait_until_guest_writes(&self, dir: &Path, address: u64, timeout: Duration) {
        let file = dir.join("page.bin");
        let read = || async {
            self.execute(
                "pmemsave",
                Some(json!({"val": address, "size": 4096, "filename": file.display().to_string()})),
            )
            .await;
            std::fs::read(&file).unwrap()
        };
        let deadline = Instant::now() + timeout;
        loop {
            let first = read().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if read().await != first {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the guest never wrote the page at {address:#x} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
