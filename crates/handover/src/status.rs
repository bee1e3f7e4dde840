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
    out
}
