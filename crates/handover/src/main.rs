//! The `handover` binary: a thin edge over the library crates (argument parsing, files, exit codes).

mod api_backends;
mod check;
mod cli;
mod control_listener;
mod demo;
mod fleet;
mod handoff;
mod libvirt_hook;
mod migrate;
mod notify;
mod quiesce;
mod reload;
mod run;
mod server;
mod signals;
mod sim;
mod sources;
mod state_file;
mod status;
mod testbed;
mod upgrade;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: an error (bad input, unreachable node, refused notice).
pub const EXIT_ERROR: u8 = 1;
/// Exit status: `notify --wait-drained` timed out before the VM was drained.
pub const EXIT_NOT_DRAINED: u8 = 3;
/// Exit status: the capacity guard queued the prepare.
pub const EXIT_QUEUED: u8 = 4;
/// Exit status: accepted, but no balancer that serves the VM could be told yet (each gets it as
/// soon as it answers).
pub const EXIT_PENDING: u8 = 5;
/// Exit status: `migrate` was interrupted (Ctrl-C) and the migration cancelled.
pub const EXIT_INTERRUPTED: u8 = 130;

/// `handover man [COMMAND]`.
fn man(command: Option<&str>) -> anyhow::Result<u8> {
    let cli = Cli::command();
    let page = match command {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name) else {
                let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!("no command {name:?}; the commands are {}", names.join(", "));
            };
            sub.clone()
                .name(Box::leak(format!("handover-{name}").into_boxed_str()) as &str)
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(EXIT_OK)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    // `run` serves on data-plane threads of its own (one runtime each); its control plane is light
    // and takes this thread alone. Every other command runs on a multi-threaded runtime.
    let mut builder = match cli.command {
        Command::Run { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run {
                config,
                ready_file,
                shutdown_grace,
                workers,
                drain_grace,
                upgrade_socket,
                upgrade_from,
            } => {
                let workers = workers.map_or_else(server::default_workers, usize::from);
                let upgrade = run::Upgrade {
                    socket: upgrade_socket,
                    from: upgrade_from,
                };
                run::run(
                    &config,
                    ready_file.as_deref(),
                    shutdown_grace,
                    workers,
                    drain_grace,
                    upgrade,
                )
                .await
            }
            Command::Reload { json, control } => reload::reload_command(&control, json).await,
            Command::Check { config } => check::check(&config),
            Command::Notify(args) => notify::notify(args).await,
            Command::Migrate(args) => migrate::migrate(args).await,
            Command::Sim(args) => sim::sim(&args),
            Command::Testbed(command) => testbed::testbed(command).await,
            Command::LibvirtHook(args) => libvirt_hook::hook(args).await,
            Command::Status { json, control } => status::status(&control, json).await,
            Command::Fleet { json, control } => fleet::fleet(&control, json).await,
            Command::Demo => demo::run().await,
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut Cli::command(), "handover", &mut std::io::stdout());
                Ok(EXIT_OK)
            }
            Command::Man { command } => man(command.as_deref()),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
