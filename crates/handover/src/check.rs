//! `handover check`: validate a configuration file.

use std::path::Path;

use anyhow::Context;

use crate::{EXIT_ERROR, EXIT_OK};

/// Reads and parses a configuration file; `Err` carries every problem, each with field and line.
pub fn load(path: &Path) -> anyhow::Result<Result<handover_core::config::Config, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(handover_core::config::parse(&text).map_err(|errors| {
        errors
            .errors()
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    }))
}

/// What the configuration needs from this machine: a usable state file path (`run` makes its
/// missing directories: `create`).
pub fn check_machine(
    path: &Path,
    config: &handover_core::config::Config,
    create: bool,
) -> Result<(), String> {
    match &config.state_file {
        Some(file) => crate::state_file::check_path(file, create)
            .map_err(|e| format!("{}: state.file: {e}", path.display())),
        None => Ok(()),
    }
}

/// Prints `ok` with a summary, or every error; exit status 1 on errors. TLS files (certificates,
/// keys, CA files) and the state file's path are checked too, each reported in the same run.
pub fn check(path: &Path) -> anyhow::Result<u8> {
    match load(path)? {
        Ok(config) => {
            let mut failed = false;
            if let Err(error) = check_machine(path, &config, false) {
                eprintln!("{error}");
                failed = true;
            }
            if let Err(e) = handover_proxy::tls::check(&config) {
                eprintln!("{}: {e}", path.display());
                failed = true;
            }
            if failed {
                return Ok(EXIT_ERROR);
            }
            let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
            let mut summary = format!(
                "{} listener{}, {} pool{}, {} backend{}, {} peer{}",
                config.listeners.len(),
                plural(config.listeners.len()),
                config.pools.len(),
                plural(config.pools.len()),
                backends,
                plural(backends),
                config.peers.len(),
                plural(config.peers.len()),
            );
            if !config.haproxy.is_empty() || !config.nginx.is_empty() {
                summary.push_str(&format!(
                    ", {} HAProxy, {} nginx",
                    config.haproxy.len(),
                    config.nginx.len()
                ));
            }
            println!("{}: ok ({summary})", path.display());
            Ok(EXIT_OK)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(EXIT_ERROR)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
