//! `handover status`: a table of VMs, backends, phases, effective weights and open connections.

use handover_core::api::VmView;
use handover_drivers::ControlClient;

use crate::cli::ControlArgs;
use crate::{EXIT_ERROR, EXIT_OK};

/// Prints the node's VMs.
pub async fn status(control: &ControlArgs, json: bool) -> anyhow::Result<u8> {
    let client = ControlClient::new(
        &control.control,
        control.token.clone(),
        std::time::Duration::from_secs(10),
    );
    let vms: Vec<VmView> = match client.get("/v1/vms").await {
        Ok(vms) => vms,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&vms)?);
        return Ok(EXIT_OK);
    }
    print!("{}", table(&vms));
    Ok(EXIT_OK)
}

/// Renders the table.
pub fn table(vms: &[VmView]) -> String {
    let mut rows: Vec<[String; 9]> = vec![[
        "VM".into(),
        "PHASE".into(),
        "POOL".into(),
        "BACKEND".into(),
        "APPLIED".into(),
        "WEIGHT".into(),
        "EFFECTIVE".into(),
        "SHARE".into(),
        "ACTIVE".into(),
    ]];
    for vm in vms {
        let phase = if vm.queued {
            format!("{} (queued)", vm.phase)
        } else {
            vm.phase.to_string()
        };
        if vm.backends.is_empty() {
            rows.push([
                vm.vm.to_string(),
                phase.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for b in &vm.backends {
            rows.push([
                vm.vm.to_string(),
                phase.clone(),
                b.pool.clone(),
                b.backend.address.clone(),
                b.backend.phase.to_string(),
                b.backend.weight.to_string(),
                format!("{:.2}", b.backend.effective_weight),
                format!("{:.1}%", b.backend.share * 100.0),
                b.backend.active.to_string(),
            ]);
        }
    }
    let progress: Vec<String> = vms
        .iter()
        .flat_map(|vm| {
            let progress = vm
                .progress
                .as_ref()
                .map(|p| format!("{} {}", vm.vm, describe_progress(vm.migration, p)));
            let adaptive = vm
                .adaptive
                .as_ref()
                .map(|a| format!("{} {}", vm.vm, describe_adaptive(a)));
            progress.into_iter().chain(adaptive)
        })
        .collect();
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if !progress.is_empty() {
        out.push('\n');
        for line in progress {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// One line of adaptive drain: `adaptive: level 0.24 of the target (reduce), λ 0.08, ...`.
pub fn describe_adaptive(a: &handover_core::migration::AdaptiveStatus) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let e = &a.latest;
    let mut parts = vec![format!("level {} of the target ({})", e.level, e.decision)];
    if let Some(lambda) = e.lambda {
        parts.push(format!("λ {lambda:.2}"));
    }
    if let Some(rate) = e.dirty_bytes_per_s {
        parts.push(format!("dirtying {:.1} MiB/s", rate / MIB));
    }
    if let Some(bandwidth) = e.bandwidth_bytes_per_s {
        parts.push(format!("copy {:.1} MiB/s", bandwidth / MIB));
    }
    if let Some(ms) = e.switchover_in_ms {
        parts.push(format!("switchover in {:.1} s", ms as f64 / 1000.0));
    }
    if a.quiescing {
        parts.push(match a.quiesced_at {
            Some(_) => "quiesced (nothing in flight)".to_string(),
            None => "quiescing".to_string(),
        });
    }
    if a.holding {
        parts.push("switchover held".to_string());
    }
    format!("adaptive: {}", parts.join(", "))
}

/// One line of hypervisor progress: `migration 3: active, 45.1 of 64.5 MiB sent, ...`.
pub fn describe_progress(migration: Option<u64>, p: &handover_core::migration::MigrationProgress) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mut parts = vec![p.status.clone().unwrap_or_else(|| "unknown".to_string())];
    if let (Some(sent), Some(total)) = (p.transferred_bytes, p.total_bytes) {
        parts.push(format!(
            "{:.1} of {:.1} MiB sent",
            sent as f64 / MIB,
            total as f64 / MIB
        ));
    }
    if let Some(remaining) = p.remaining_bytes.filter(|r| *r > 0) {
        parts.push(format!("{:.1} MiB left", remaining as f64 / MIB));
    }
    if let Some(passes) = p.passes {
        parts.push(format!("pass {passes}"));
    }
    if let Some(rate) = p.dirty_pages_rate.filter(|r| *r > 0) {
        parts.push(format!("dirty {rate} pages/s"));
    }
    if let Some(expected) = p.expected_downtime_ms {
        parts.push(format!("expected downtime {expected} ms"));
    }
    if let Some(total) = p.total_time_ms {
        parts.push(format!("total {total} ms"));
    }
    if let Some(downtime) = p.downtime_ms {
        parts.push(format!("downtime {downtime} ms"));
    }
    let id = migration.map(|m| format!("migration {m}: ")).unwrap_or_default();
    format!("{id}{}", parts.join(", "))
}
