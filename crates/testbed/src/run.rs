//! The testbed and one measured migration: three guests (vm-a, vm-b, vm-c) on the bridge, vm-a
//! migrating between two QEMU processes (its two sides take turns), a balancer in front, an
//! open-loop HTTP load and long-lived TCP connections through it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handover_core::api::MigrationView;
use handover_drivers::ControlClient;
use serde::Serialize;

use crate::TestbedError;
use crate::balancer::{Balancer, Policy};
use crate::guest::{Accel, GuestImage, Qemu, VmSpec};
use crate::load::{EchoLoad, EchoRecord, HttpLoad, RequestRecord};
use crate::migration::{self, MigrationResult, Observer, Settings};
use crate::netns::Netns;

/// The VM that migrates.
pub const MIGRATING: &str = "vm-a";
/// Port the destination QEMU listens on for the migration stream.
const MIGRATION_PORT: u16 = 4444;

/// Where the testbed's parts are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The repository's `testbed/` directory (scripts).
    pub testbed_dir: PathBuf,
    /// Where the guest image is built.
    pub guest_dir: PathBuf,
    /// Working files (QMP sockets, serial consoles, logs, configs).
    pub work_dir: PathBuf,
    /// The handover binary.
    pub handover: PathBuf,
}

/// Sizes of the guests.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestSize {
    /// RAM, MiB.
    pub memory_mib: u32,
    /// Buffer the load rewrites, MiB.
    pub buffer_mib: u32,
}

/// Three guests behind a bridge, ready for migrations of vm-a.
#[derive(Debug)]
pub struct Testbed {
    layout: Layout,
    image: GuestImage,
    /// How QEMU runs here, and why.
    pub accel: (Accel, String),
    /// The guests.
    pub vms: Vec<VmSpec>,
    others: Vec<Qemu>,
    migrating: Option<Qemu>,
    side: usize,
}

impl Testbed {
    /// Creates the taps and boots vm-a, vm-b and vm-c from `image` (call inside `netns`; build the
    /// image before entering it, the namespace has no way out).
    pub async fn start(
        layout: Layout,
        image: GuestImage,
        netns: &Netns,
        size: GuestSize,
    ) -> Result<Self, TestbedError> {
        std::fs::create_dir_all(&layout.work_dir).map_err(|e| TestbedError::io(&layout.work_dir, e))?;
        for tap in ["tap-a0", "tap-a1", "tap-b", "tap-c", "tap-probe"] {
            netns.tap(tap)?;
        }
        let accel =
            crate::guest::probe_accel(&image, "tap-probe", &layout.work_dir, Duration::from_secs(15)).await;
        let vms: Vec<VmSpec> = ["vm-a", "vm-b", "vm-c"]
            .iter()
            .enumerate()
            .map(|(i, name)| VmSpec::numbered(name, i as u8, size.memory_mib, size.buffer_mib))
            .collect();
        let mut others = Vec::new();
        let mut migrating = None;
        for (spec, tap) in vms.iter().zip(["tap-a0", "tap-b", "tap-c"]) {
            let label = if spec.name == MIGRATING {
                "vm-a-0".to_string()
            } else {
                spec.name.clone()
            };
            let qemu = Qemu::start(spec, &image, accel.0, tap, &layout.work_dir, &label, None)?;
            if spec.name == MIGRATING {
                migrating = Some(qemu);
            } else {
                others.push(qemu);
            }
        }
        let boot = Duration::from_secs(90);
        for qemu in others.iter_mut().chain(migrating.iter_mut()) {
            qemu.wait_ready(boot).await?;
        }
        Ok(Self {
            layout,
            image,
            accel,
            vms,
            others,
            migrating,
            side: 0,
        })
    }

    /// The migrating VM's current QEMU.
    fn source(&mut self) -> Result<&mut Qemu, TestbedError> {
        self.migrating
            .as_mut()
            .ok_or_else(|| TestbedError::Failed(format!("{MIGRATING} is not running")))
    }

    /// One measured migration of vm-a.
    pub async fn run(&mut self, spec: &RunSpec) -> Result<RunRecord, TestbedError> {
        let load = host_load();
        for qemu in &mut self.others {
            if !qemu.running() {
                return Err(TestbedError::Failed(format!("QEMU {} is gone", qemu.label)));
            }
        }
        let vm_a = self.vms[0].clone();
        let next = 1 - self.side;
        let destination = Qemu::start(
            &vm_a,
            &self.image,
            self.accel.0,
            ["tap-a0", "tap-a1"][next],
            &self.layout.work_dir,
            &format!("vm-a-{next}"),
            Some(MIGRATION_PORT),
        )?;
        let mut balancer = Balancer::start(
            &spec.policy,
            &self.vms,
            &self.layout.handover,
            &self.layout.work_dir,
        )?;
        let source_observer = Observer::connect(&self.source()?.observer).await?;
        let destination_observer = Observer::connect(&destination.observer).await?;

        let (echo, echo_vms) = EchoLoad {
            target: balancer.tcp,
            connections: spec.echo_connections,
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(15),
        }
        .start()
        .await;
        let http = HttpLoad {
            target: balancer.http,
            rate: spec.rate,
            kib: spec.kib,
            timeout: Duration::from_secs(20),
        }
        .start();
        tokio::time::sleep(spec.warmup).await;

        // Long-lived connections to vm-a are kept on purpose: drained means only they remain.
        let echo_on_a = echo_vms
            .iter()
            .filter(|vm| vm.as_deref() == Some(MIGRATING))
            .count() as u64;
        let qmp_for_handover = self.source()?.qmp.clone();
        let uri = format!("tcp:127.0.0.1:{MIGRATION_PORT}");
        let control = balancer.control.clone();
        let handover = match (&control, spec.policy.aware) {
            (Some(control), true) => Some((
                self.layout.handover.as_path(),
                control.as_str(),
                MIGRATING,
                qmp_for_handover,
                echo_on_a,
            )),
            _ => None,
        };
        let migrated = migration::migrate(
            &source_observer,
            &destination_observer,
            &uri,
            &spec.settings,
            handover,
        )
        .await;
        tokio::time::sleep(spec.tail).await;
        let requests = http.stop().await;
        let echoes = echo.stop().await;
        let record = match &control {
            Some(control) => handover_record(control).await,
            None => None,
        };
        balancer.stop();
        let migration = migrated?;

        // Completed: the source is done; the guest must answer from the destination alone.
        let mut destination = destination;
        let answered_from_destination = if migration.status == "completed" {
            if let Some(mut old) = self.migrating.take() {
                old.kill();
            }
            let answered = direct_request(&vm_a).await;
            self.migrating = Some(destination);
            self.side = next;
            Some(answered)
        } else {
            destination.kill();
            None
        };
        Ok(RunRecord {
            spec: spec.clone(),
            migration,
            handover: record,
            requests,
            echoes,
            answered_from_destination,
            host_load: load,
        })
    }

    /// Starts the migrating VM's next destination (listening on [`MIGRATION_PORT`]), for a
    /// migration the caller drives; hand it back to [`Testbed::after_migration`].
    pub fn start_destination(&mut self) -> Result<Destination, TestbedError> {
        let next = 1 - self.side;
        let qemu = Qemu::start(
            &self.vms[0],
            &self.image,
            self.accel.0,
            ["tap-a0", "tap-a1"][next],
            &self.layout.work_dir,
            &format!("vm-a-{next}"),
            Some(MIGRATION_PORT),
        )?;
        Ok(Destination { qemu, side: next })
    }

    /// After a migration the caller drove: a completed one makes the destination vm-a's QEMU.
    pub fn after_migration(&mut self, destination: Destination, completed: bool) {
        let Destination { mut qemu, side } = destination;
        if completed {
            if let Some(mut old) = self.migrating.take() {
                old.kill();
            }
            self.migrating = Some(qemu);
            self.side = side;
        } else {
            qemu.kill();
        }
    }

    /// The URI the destination listens on.
    pub fn migration_uri() -> String {
        format!("tcp:127.0.0.1:{MIGRATION_PORT}")
    }

    /// A new QMP observer connection to the migrating VM's current QEMU.
    pub async fn observe_migrating(&mut self) -> Result<Observer, TestbedError> {
        let path = self.source()?.observer.clone();
        Observer::connect(&path).await
    }

    /// Where the testbed keeps its files.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The latest migration of vm-a as handover recorded it.
async fn handover_record(control: &str) -> Option<MigrationView> {
    let client = ControlClient::new(control, None, Duration::from_secs(5));
    let views: Vec<MigrationView> = client.get("/v1/migrations").await.ok()?;
    views.into_iter().find(|v| v.record.vm.as_str() == MIGRATING)
}

/// A request straight to the VM (no balancer): `Ok(name)` of the guest that answered.
async fn direct_request(vm: &VmSpec) -> Result<String, String> {
    let load = HttpLoad {
        target: std::net::SocketAddr::new(vm.ip.into(), 80),
        rate: 1.0,
        kib: 1,
        timeout: Duration::from_secs(10),
    };
    let running = load.start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = running.stop().await;
    match records.first() {
        Some(r) if r.ok() => r.vm.clone().ok_or_else(|| "an answer without a name".into()),
        Some(r) => Err(r.error.clone().unwrap_or_else(|| format!("status {}", r.status))),
        None => Err("no request was sent".into()),
    }
}

/// A destination QEMU started for a migration the caller drives.
#[derive(Debug)]
pub struct Destination {
    /// The QEMU process.
    pub qemu: Qemu,
    side: usize,
}

/// One run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    /// The balancer and what it does.
    pub policy: Policy,
    /// HTTP requests per second to the pool.
    pub rate: f64,
    /// KiB each request rewrites in the guest.
    pub kib: u32,
    /// The migration.
    pub settings: Settings,
    /// Long-lived TCP connections through the balancer.
    pub echo_connections: usize,
    /// Load before the migration starts.
    #[serde(with = "seconds")]
    pub warmup: Duration,
    /// Load after it ends.
    #[serde(with = "seconds")]
    pub tail: Duration,
    /// Repetition number (1-based).
    pub repetition: u32,
}

mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Everything one run recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// What was run.
    pub spec: RunSpec,
    /// QEMU's side.
    pub migration: MigrationResult,
    /// handover's side (phases with their times), when handover was the balancer.
    pub handover: Option<MigrationView>,
    /// Every HTTP request.
    pub requests: Vec<RequestRecord>,
    /// Every long-lived connection.
    pub echoes: Vec<EchoRecord>,
    /// After a completed migration (source stopped): the VM that answered a direct request.
    pub answered_from_destination: Option<Result<String, String>>,
    /// The host's 1-minute load average when the run began (its own three guests included).
    #[serde(default)]
    pub host_load: Option<f64>,
}

/// The host's 1-minute load average (`/proc/loadavg`).
pub fn host_load() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The default working layout relative to a checkout.
pub fn layout_in(checkout: &Path, handover: PathBuf, work_dir: PathBuf) -> Layout {
    Layout {
        testbed_dir: checkout.join("testbed"),
        guest_dir: checkout.join("target/testbed/guest"),
        work_dir,
        handover,
    }
}
