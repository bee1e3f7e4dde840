//! Fleet mode in `handover run` (`[fleet]`): the node joins the fleet on etcd before its listeners
//! accept (so it applies every migration in progress first), its coordinator hands notices to the
//! fleet, and the fleet's watcher applies etcd's notices through the coordinator to this node's
//! own balancers. Also `handover fleet`, which lists the fleet through a node's control API.

use std::sync::Arc;
use std::time::Duration;

use handover_control::{Coordinator, CoordinatorError, FleetHook};
use handover_core::adaptive::Level;
use handover_core::api::{BackendChange, BalancerResult, DrainStatus, NoticeRequest, NoticeResponse};
use handover_core::balancer::BoxFuture;
use handover_core::config::{Config, FleetConfig, valid_node_name};
use handover_core::model::VmId;
use handover_core::phase::VmState;
use handover_drivers::ControlClient;
use handover_fleet::view::FleetView;
use handover_fleet::{BackendSink, FleetNode, LocalNode, NoticeFailure, SinkRefusal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::cli::ControlArgs;
use crate::{EXIT_ERROR, EXIT_OK};

/// This node's balancers, through its coordinator (which keeps the fleet's deadlines locally).
struct CoordinatorLocal(Arc<Coordinator>);

impl LocalNode for CoordinatorLocal {
    fn adopt<'a>(&'a self, vm: &'a VmId, state: Option<VmState>) -> BoxFuture<'a, Vec<BalancerResult>> {
        Box::pin(self.0.adopt(vm, state))
    }

    fn drain<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, DrainStatus> {
        Box::pin(self.0.drain_local(vm))
    }
}

/// The fleet, as the coordinator and the API see it.
struct Hook(Arc<FleetNode>);

impl FleetHook for Hook {
    fn notice<'a>(
        &'a self,
        vm: &'a VmId,
        request: &'a NoticeRequest,
    ) -> BoxFuture<'a, Result<NoticeResponse, CoordinatorError>> {
        Box::pin(async move {
            self.0.notice(vm, request).await.map_err(|e| match e {
                NoticeFailure::BadRequest { field, message } => {
                    CoordinatorError::BadRequest { field, message }
                }
                NoticeFailure::Rejected(e) => CoordinatorError::Rejected(e),
                NoticeFailure::UnknownVm(vm) => CoordinatorError::UnknownVm {
                    vm,
                    results: Vec::new(),
                },
                e @ NoticeFailure::Unavailable(_) => CoordinatorError::Unavailable(e.to_string()),
            })
        })
    }

    fn publish_level<'a>(&'a self, vm: &'a VmId, level: Level) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .publish_level(vm, level)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn in_flight_elsewhere<'a>(&'a self, vm: &'a VmId) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move { self.0.in_flight_elsewhere(vm).await.map_err(|e| e.to_string()) })
    }

    fn view(&self) -> BoxFuture<'_, Result<FleetView, String>> {
        Box::pin(async move { self.0.view().await.map_err(|e| e.to_string()) })
    }

    fn backend<'a>(&'a self, change: &'a BackendChange) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .publish_backend(change)
                .await
                .map(drop)
                .map_err(|e| format!("not written to the fleet's etcd: {e}"))
        })
    }
}

/// This node's pools as the fleet hands them backend changes: through the reloader, which checks,
/// writes and applies them as it does an API call's.
struct ReloaderSink(Arc<crate::reload::Reloader>);

impl BackendSink for ReloaderSink {
    fn apply<'a>(&'a self, change: &'a BackendChange) -> BoxFuture<'a, Result<bool, SinkRefusal>> {
        Box::pin(async move {
            match self.0.apply_from_fleet(change.clone()).await {
                Ok(changed) => Ok(changed.is_some()),
                Err(refusal) if refusal.status >= 500 => Err(SinkRefusal::Failed(refusal.message)),
                Err(refusal) => Err(SinkRefusal::NotHere(format!(
                    "{}: {}",
                    refusal.field, refusal.message
                ))),
            }
        })
    }
}

/// Applies the backend changes the fleet holds (within the lease TTL: a node whose etcd cannot be
/// reached goes on with the backends it has), then watches for more until cancelled.
pub async fn share_backends(
    node: &Arc<FleetNode>,
    fleet: &FleetConfig,
    reloader: Arc<crate::reload::Reloader>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) {
    let sink: Arc<dyn BackendSink> = Arc::new(ReloaderSink(reloader));
    let revision = match tokio::time::timeout(fleet.lease, node.sync_backends(sink.as_ref())).await {
        Ok(Ok(revision)) => revision,
        Ok(Err(e)) => {
            error!(error = %e, "serving without the fleet's backend changes; listing them in the background");
            0
        }
        Err(_) => {
            error!("the fleet's backend changes were not listed in time; listing them in the background");
            0
        }
    };
    tasks.spawn(node.clone().watch_backends(sink, revision, cancel.clone()));
}

/// The node's name: the configuration's, else the host name.
fn node_name(fleet: &FleetConfig) -> anyhow::Result<String> {
    if let Some(name) = &fleet.node {
        return Ok(name.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if valid_node_name(&host) {
        Ok(host)
    } else {
        anyhow::bail!("fleet.node: the host name {host:?} cannot be a node name; set fleet.node")
    }
}

/// Joins the fleet (bounded by the lease TTL: a node whose etcd cannot be reached serves with the
/// state it has and keeps trying) and starts the fleet's background work. Call before the data
/// plane accepts.
pub async fn join(
    config: &Config,
    fleet: &FleetConfig,
    control: String,
    coordinator: &Arc<Coordinator>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Arc<FleetNode>> {
    let name = node_name(fleet)?;
    let node = FleetNode::new(
        config,
        fleet,
        name,
        control,
        Arc::new(CoordinatorLocal(coordinator.clone())),
    )?;
    let revision = match node.join(fleet.lease).await {
        Ok(revision) => {
            info!(node = %node.name(), etcd = ?fleet.etcd, "joined the fleet; current migrations applied");
            revision
        }
        Err(e) => {
            error!(error = %e, "serving without the fleet's current state; joining in the background");
            0
        }
    };
    node.spawn(revision, cancel, tasks);
    coordinator.set_fleet(Arc::new(Hook(node.clone())));
    Ok(node)
}

/// `handover fleet`: every node of the fleet, its lease, its VMs and its acknowledgements.
pub async fn fleet(control: &ControlArgs, json: bool) -> anyhow::Result<u8> {
    let client = ControlClient::new(&control.control, control.token.clone(), Duration::from_secs(10));
    let view: FleetView = match client.get("/v1/fleet").await {
        Ok(view) => view,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", table(&view));
    }
    Ok(EXIT_OK)
}

fn table(view: &FleetView) -> String {
    let mut out = format!(
        "fleet on {} ({} nodes, {} VMs in migration; answered by {})\n\n",
        view.etcd.join(", "),
        view.nodes.len(),
        view.notices.len(),
        view.answered_by
    );
    let mut rows = vec![[
        "NODE".to_string(),
        "CONTROL".into(),
        "LEASE".into(),
        "TTL".into(),
        "VMS".into(),
        "ACKNOWLEDGED (VM generation phase active)".into(),
    ]];
    for node in &view.nodes {
        let acks: Vec<String> = node
            .acks
            .iter()
            .map(|a| {
                format!(
                    "{} {}{} {} {}{}",
                    a.vm,
                    a.ack.generation,
                    if a.current { "" } else { " (old)" },
                    a.ack.phase,
                    a.ack.active,
                    a.ack
                        .error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" error: {e}"))
                )
            })
            .collect();
        let vms: Vec<&str> = node.vms.iter().map(VmId::as_str).collect();
        rows.push([
            node.node.clone(),
            node.control.clone(),
            node.lease.clone(),
            node.lease_ttl_s.map_or("expired".into(), |t| format!("{t}s")),
            vms.join(","),
            if acks.is_empty() {
                "-".into()
            } else {
                acks.join("; ")
            },
        ]);
    }
    out.push_str(&render(&rows));
    if !view.notices.is_empty() {
        out.push('\n');
        let mut rows = vec![[
            "VM".to_string(),
            "PHASE".into(),
            "NOTICE".into(),
            "GENERATION".into(),
            "BY".into(),
            "DEADLINE".into(),
            "LEVEL".into(),
        ]];
        for n in &view.notices {
            rows.push([
                n.vm.to_string(),
                n.phase.to_string(),
                n.notice.map_or("deadline".into(), |x| x.to_string()),
                n.generation.to_string(),
                n.by.clone(),
                n.deadline_at.map_or("-".into(), |d| {
                    format!("in {} s", d.saturating_sub(handover_fleet::node::now_ms()) / 1000)
                }),
                n.level.map_or("-".into(), |l| l.to_string()),
            ]);
        }
        out.push_str(&render(&rows));
    }
    out
}

fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
