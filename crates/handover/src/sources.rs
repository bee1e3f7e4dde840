//! Wiring event sources into the migration module: the coordinator receives the notices and the
//! progress that QMP watchers and libvirt event watchers produce.

use std::sync::Arc;

use handover_control::Coordinator;
use handover_core::api::NoticeRequest;
use handover_core::balancer::BoxFuture;
use handover_core::config::Config;
use handover_core::migration::MigrationProgress;
use handover_core::model::VmId;
use handover_core::phase::Notice;
use handover_sources::libvirt::watcher::LibvirtWatcher;
use handover_sources::qmp::{MigrationSink, QmpWatcher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Timeout of every QMP command a watcher sends.
const QMP_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Timeout of the `virsh dumpxml` a libvirt watcher runs to find a domain's VM.
const VIRSH_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The coordinator as the destination of a source's notices.
pub struct CoordinatorSink(pub Arc<Coordinator>);

impl MigrationSink for CoordinatorSink {
    fn notice<'a>(&'a self, vm: &'a VmId, notice: Notice) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let request = NoticeRequest::new(notice);
            self.0
                .notice(vm, &request)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn progress<'a>(&'a self, vm: &'a VmId, progress: MigrationProgress) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.0.record_progress(vm, progress).await;
        })
    }
}

/// Starts one watcher per `[[qmp]]` entry.
pub fn start_qmp_watchers(
    config: &Config,
    coordinator: &Arc<Coordinator>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) {
    let sink: Arc<dyn MigrationSink> = Arc::new(CoordinatorSink(coordinator.clone()));
    for qmp in &config.qmp {
        // A VM whose drain adapts needs probes and the migration's parameters.
        let probe = config
            .pools
            .iter()
            .any(|pool| pool.drain.adaptive.is_active() && pool.backends.iter().any(|b| b.vm == qmp.vm));
        let watcher = QmpWatcher {
            address: qmp.socket.clone(),
            vm: qmp.vm.clone(),
            poll_interval: qmp.poll_interval,
            command_timeout: QMP_COMMAND_TIMEOUT,
            probe,
        };
        tasks.spawn(watcher.run(sink.clone(), cancel.clone()));
    }
}

/// Starts one watcher per `[[libvirt]]` entry.
pub fn start_libvirt_watchers(
    config: &Config,
    coordinator: &Arc<Coordinator>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) {
    let sink: Arc<dyn MigrationSink> = Arc::new(CoordinatorSink(coordinator.clone()));
    for libvirt in &config.libvirt {
        let watcher = LibvirtWatcher {
            uri: libvirt.uri.clone(),
            virsh: libvirt.virsh.clone(),
            command_timeout: VIRSH_COMMAND_TIMEOUT,
        };
        tasks.spawn(watcher.run(sink.clone(), cancel.clone()));
    }
}
