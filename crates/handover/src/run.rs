//! `handover run`: serve until SIGTERM or Ctrl-C.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::check::load;
use crate::{EXIT_ERROR, EXIT_OK, server};

/// What `--ready-file` contains.
#[derive(Debug, Serialize)]
struct Ready<'a> {
    control: String,
    listeners: std::collections::BTreeMap<&'a str, String>,
    pid: u32,
}

/// Loads the configuration, starts the node with `workers` data-plane threads, waits for a
/// signal, shuts down gracefully.
pub async fn run(
    path: &Path,
    ready_file: Option<&Path>,
    grace: Duration,
    workers: usize,
) -> anyhow::Result<u8> {
    let config = match load(path)? {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(EXIT_ERROR);
        }
    };
    if let Err(error) = crate::check::check_machine(path, &config, true) {
        eprintln!("{error}");
        return Ok(EXIT_ERROR);
    }
    let running = server::start(&config, workers).await?;
    if let Some(ready_file) = ready_file {
        let ready = Ready {
            control: format!("http://{}", running.control),
            listeners: running
                .listeners
                .iter()
                .map(|(n, a)| (n.as_str(), a.to_string()))
                .collect(),
            pid: std::process::id(),
        };
        let tmp = ready_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&ready)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, ready_file)
            .with_context(|| format!("cannot write {}", ready_file.display()))?;
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown(grace).await;
    Ok(EXIT_OK)
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
