//! `handover run`: serve until SIGTERM, SIGINT or SIGQUIT; reload on SIGHUP.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::check::load;
use crate::{EXIT_ERROR, EXIT_OK, server};

/// `--upgrade-socket` and `--upgrade-from`.
#[derive(Debug, Default)]
pub struct Upgrade {
    /// Where to answer a later upgrade.
    pub socket: Option<std::path::PathBuf>,
    /// The running process to take the sockets over from.
    pub from: Option<std::path::PathBuf>,
}

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
    drain_grace: Duration,
    upgrade: Upgrade,
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
    // Signals first: a SIGHUP or SIGTERM during the start must not kill the process at once.
    let signals = crate::signals::Signals::install();
    // A binary upgrade: the running process's sockets first (it pauses its control API and saves
    // its state file for us), then everything else as usual.
    let (inherited, mut upgraded_from) = match &upgrade.from {
        Some(from) => {
            let from = from.clone();
            let (inherited, stream) =
                tokio::task::spawn_blocking(move || crate::upgrade::receive(&from)).await??;
            (Some(inherited), Some(stream))
        }
        None => (None, None),
    };
    let options = server::NodeOptions {
        workers,
        config_path: Some(path.to_path_buf()),
        drain_grace,
        inherited,
        upgrade_socket: upgrade.socket.clone(),
    };
    let running = server::start_with(&config, options).await?;
    if let Some(ready_file) = ready_file {
        write_ready_file(ready_file, running.control, &running.listeners)?;
        if let Some(reloader) = &running.reloader {
            reloader.set_ready_file(Some(ready_file.to_path_buf()));
        }
    }
    if let Some(stream) = upgraded_from.as_mut() {
        use std::io::Write;
        stream.write_all(crate::upgrade::READY)?;
        tracing::info!("serving in place of the process upgraded from");
    }
    tokio::select! {
        _ = signals.wait_for_stop() => {}
        _ = running.upgraded.cancelled() => {
            tracing::info!("upgraded: finishing the open connections, then exiting");
        }
    }
    tracing::info!("shutting down");
    running.shutdown(grace).await;
    Ok(EXIT_OK)
}

/// Writes the `--ready-file` (atomically: a reader never sees half of it).
pub fn write_ready_file(
    ready_file: &Path,
    control: std::net::SocketAddr,
    listeners: &[(String, std::net::SocketAddr)],
) -> anyhow::Result<()> {
    let ready = Ready {
        control: format!("http://{control}"),
        listeners: listeners
            .iter()
            .map(|(n, a)| (n.as_str(), a.to_string()))
            .collect(),
        pid: std::process::id(),
    };
    let tmp = ready_file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&ready)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, ready_file).with_context(|| format!("cannot write {}", ready_file.display()))?;
    Ok(())
}
