//! The guest image (built by `testbed/build-guest` from Debian's kernel package and busybox-static)
//! and the QEMU processes that run it: a source that boots it, a destination that waits for an
//! incoming migration with the same devices, MAC and kernel command line.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestbedError;

/// The kernel and initramfs to boot.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Uncompressed kernel (PVH entry).
    pub kernel: PathBuf,
    /// busybox initramfs.
    pub initramfs: PathBuf,
}

impl GuestImage {
    /// Builds the image with `testbed/build-guest` into `out` (nothing to do when it is built).
    pub fn build(testbed_dir: &Path, out: &Path) -> Result<Self, TestbedError> {
        let script = testbed_dir.join("build-guest");
        let output = Command::new(&script)
            .arg(out)
            .output()
            .map_err(|e| TestbedError::Missing(format!("cannot run {}: {e}", script.display())))?;
        if !output.status.success() {
            return Err(TestbedError::Missing(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(Self {
            kernel: out.join("vmlinux"),
            initramfs: out.join("initramfs.gz"),
        })
    }
}

/// How QEMU runs guests here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host,arch-capabilities=off"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "qemu64"],
        }
    }
}

/// One guest: its identity on the network and its size.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM name (also the name the guest answers with).
    pub name: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its MAC (the same on both sides of a migration).
    pub mac: String,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// The buffer the dirty endpoint rewrites, MiB (filled with non-zero data at boot).
    pub buffer_mib: u32,
}

impl VmSpec {
    /// The `index`-th testbed VM: `10.77.0.(10 + index)`.
    pub fn numbered(name: &str, index: u8, memory_mib: u32, buffer_mib: u32) -> Self {
        Self {
            name: name.to_string(),
            ip: Ipv4Addr::new(10, 77, 0, 10 + index),
            mac: format!("52:54:00:77:00:{:02x}", 0x10 + index),
            memory_mib,
            buffer_mib,
        }
    }
}

/// Kernel arguments that make TCG boot fast, then the guest's own.
const KERNEL_ARGS: &str = "console=ttyS0 quiet mitigations=off tsc=reliable no_timer_check i8042.noaux \
     i8042.nokbd i8042.nopnp cryptomgr.notests random.trust_cpu=on";

/// A running QEMU process for one side of a VM.
#[derive(Debug)]
pub struct Qemu {
    /// The VM.
    pub vm: String,
    /// Which process of the VM this is (e.g. `vm-a-0`).
    pub label: String,
    child: Child,
    /// Serial console output.
    pub serial: PathBuf,
    /// QMP monitor for handover.
    pub qmp: PathBuf,
    /// QMP monitor for the testbed's own observation.
    pub observer: PathBuf,
}

impl Qemu {
    /// Starts QEMU for `spec` on `tap`; with `incoming`, as a migration destination on that port.
    pub fn start(
        spec: &VmSpec,
        image: &GuestImage,
        accel: Accel,
        tap: &str,
        dir: &Path,
        label: &str,
        incoming: Option<u16>,
    ) -> Result<Self, TestbedError> {
        let serial = dir.join(format!("{label}.serial"));
        let qmp = dir.join(format!("{label}.qmp"));
        let observer = dir.join(format!("{label}-observer.qmp"));
        for stale in [&serial, &qmp, &observer] {
            let _ = std::fs::remove_file(stale);
        }
        let log_path = dir.join(format!("{label}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| TestbedError::io(&log_path, e))?;
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-machine", "pc"])
            .args(accel.args())
            .args(["-smp", "1", "-m", &spec.memory_mib.to_string()])
            .args(["-bios", "/usr/share/qemu/qboot.rom"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
            .arg("-append")
            .arg(format!(
                "{KERNEL_ARGS} guest_ip={}/24 guest_name={} guest_buffer_mib={}",
                spec.ip, spec.name, spec.buffer_mib
            ))
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", spec.mac))
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", observer.display()));
        if let Some(port) = incoming {
            command.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| TestbedError::Missing(format!("cannot start qemu-system-x86_64: {e}")))?;
        let mut qemu = Self {
            vm: spec.name.clone(),
            label: label.to_string(),
            child,
            serial,
            qmp,
            observer,
        };
        let started = Instant::now();
        while !(qemu.qmp.exists() && qemu.observer.exists()) {
            if let Ok(Some(status)) = qemu.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(TestbedError::Failed(format!(
                    "QEMU {label} exited ({status}): {}",
                    log.trim()
                )));
            }
            if started.elapsed() > Duration::from_secs(20) {
                qemu.kill();
                return Err(TestbedError::Failed(format!(
                    "QEMU {label} did not open its QMP sockets"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(qemu)
    }

    /// Waits until the guest's init says it serves (`GUEST READY` on the serial console).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, TestbedError> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.serial).unwrap_or_default();
            if text.contains("GUEST READY") {
                return Ok(started.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestbedError::Failed(format!(
                    "QEMU {} exited while booting ({status})",
                    self.label
                )));
            }
            if started.elapsed() > timeout {
                let tail: String = text
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(TestbedError::Failed(format!(
                    "guest {} did not boot in {timeout:?}; serial ends with: {tail:?}",
                    self.label
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops QEMU at once.
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

/// Picks the accelerator: KVM if a guest boots with it within `timeout`, else TCG (with the reason).
pub async fn probe_accel(image: &GuestImage, tap: &str, dir: &Path, timeout: Duration) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    let spec = VmSpec::numbered("kvm-probe", 200, 128, 4);
    match Qemu::start(&spec, image, Accel::Kvm, tap, dir, "kvm-probe", None) {
        Ok(mut qemu) => match qemu.wait_ready(timeout).await {
            Ok(took) => (Accel::Kvm, format!("a guest booted with KVM in {took:?}")),
            Err(e) => (Accel::Tcg, format!("KVM did not boot a guest: {e}")),
        },
        Err(e) => (Accel::Tcg, format!("KVM unavailable: {e}")),
    }
}
