//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use handover_core::phase::Notice;
use handover_core::time::parse_duration;

/// handover: a migration-aware load balancer for VM fleets.
#[derive(Debug, Parser)]
#[command(name = "handover", version, about, long_about = None)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// How handover's own log lines (on stderr) are written: `text` (colours only on a terminal)
    /// or `json` (one object per line). The level comes from `RUST_LOG`.
    #[arg(
        long,
        global = true,
        env = "HANDOVER_LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    pub log_format: LogFormat,
}

/// Format of handover's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Default control API URL of the CLI commands.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:9090";

/// Where the CLI finds a running node.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control API of the handover node.
    #[arg(long, env = "HANDOVER_CONTROL", default_value = DEFAULT_CONTROL)]
    pub control: String,
    /// Bearer token of the control API.
    #[arg(long, env = "HANDOVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `handover notify`.
#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// The VM.
    pub vm: String,
    /// prepare, started, completed, failed or cancelled.
    #[arg(value_parser = notice)]
    pub phase: Notice,
    /// Wait until the VM is drained (or the timeout passes) before returning.
    #[arg(long)]
    pub wait_drained: bool,
    /// Longest wait for drained.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub timeout: Duration,
    /// Drained means at most this many open connections and in-flight requests.
    #[arg(long)]
    pub threshold: Option<u64>,
    /// Restore the VM if no end notice comes within this time (overrides the pools' deadline).
    #[arg(long, value_parser = duration)]
    pub deadline: Option<Duration>,
    /// With `completed`: the VM's new IP (its backends keep their ports).
    #[arg(long)]
    pub new_ip: Option<std::net::IpAddr>,
    /// With `completed`: move one backend, `CONFIGURED_ADDRESS=NEW_ADDRESS` (repeatable).
    #[arg(long = "move", value_parser = address_move)]
    pub moves: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Print the reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// The control API.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Arguments of `handover migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The VM.
    pub vm: String,
    /// QMP socket of the source QEMU: a path, `unix:PATH` or `tcp:HOST:PORT`.
    #[arg(long)]
    pub qmp: String,
    /// Migration URI the destination listens on (`tcp:HOST:PORT`, `unix:PATH`, ...).
    #[arg(long)]
    pub uri: String,
    /// Bandwidth limit of the copy, e.g. `64MiB` (per second).
    #[arg(long, value_parser = bytes)]
    pub max_bandwidth: Option<u64>,
    /// Longest pause QEMU may plan for the switchover, e.g. `300ms`.
    #[arg(long, value_parser = duration)]
    pub downtime_limit: Option<Duration>,
    /// Longest wait for drained before the migration starts anyway.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Drained means at most this many open connections and in-flight requests.
    #[arg(long)]
    pub threshold: Option<u64>,
    /// Restore the VM if the migration gives no news for this long (overrides the pools' deadline).
    #[arg(long, value_parser = duration)]
    pub deadline: Option<Duration>,
    /// Never hold QEMU's switchover for quiescence (by default it is held, at most the pool's
    /// `quiesce_hold`, while requests to a quiescing VM are still in flight).
    #[arg(long)]
    pub no_hold: bool,
    /// The control API.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Arguments of `handover libvirt-hook`.
#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// Longest wait for drained on `migrate begin` (libvirt waits for the hook: keep it bounded).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Exit non-zero (libvirt then cancels the incoming migration) when the VM could not be drained.
    #[arg(long)]
    pub veto: bool,
    /// Longest wait to connect to handover.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// The control API.
    #[command(flatten)]
    pub control: ControlArgs,
    /// libvirt's arguments: DOMAIN OPERATION SUB-OPERATION EXTRA (the domain XML comes on stdin).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub libvirt: Vec<String>,
}

/// Arguments of `handover sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Scenario file (TOML; see examples/sim/).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Seeds per point and policy (the same seeds for every policy); overrides the scenario's.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: Option<u64>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw a picture (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the markdown table here too.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// `handover testbed` subcommands.
#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// One loaded guest behind handover migrated with a drain; exit 0 only if no request failed, no
    /// connection broke, the phases came in order and the guest answers from the destination.
    Check(TestbedCheckArgs),
    /// The migration benchmark: policies × request rates × bandwidth caps × repetitions, with
    /// HAProxy as the unaware industry baseline; JSON, a markdown table and timeline pictures.
    Bench(TestbedBenchArgs),
    /// Measures the guest's dirty rate (QEMU calc-dirty-rate) against request rate and idle
    /// migrations, fits the simulator to them and sets its predictions beside a benchmark's results.
    Calibrate(TestbedCalibrateArgs),
    /// Measures ways of holding QEMU's switchover (for quiescence): vm-a migrated under load with
    /// each mechanism applied from the end of its first pass for a fixed time; whether the
    /// switchover waited, and what the hold cost against no hold.
    Hold(TestbedHoldArgs),
}

/// Arguments of `handover testbed hold`.
#[derive(Debug, clap::Args)]
pub struct TestbedHoldArgs {
    /// Where and how big.
    #[command(flatten)]
    pub place: TestbedPlace,
    /// Mechanisms: none, downtime-0, threshold, threshold-crawl, handover (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,downtime-0,threshold,threshold-crawl,handover"
    )]
    pub mechanisms: Vec<String>,
    /// Repetitions of each.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,
    /// Requests per second straight to vm-a.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// KiB of guest memory each request rewrites.
    #[arg(long, default_value_t = 1024)]
    pub kib: u32,
    /// Copy bandwidth cap, MiB/s.
    #[arg(long, default_value_t = 12.0)]
    pub bandwidth: f64,
    /// How long to hold, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
}

/// Arguments of `handover testbed calibrate`.
#[derive(Debug, clap::Args)]
pub struct TestbedCalibrateArgs {
    /// Where and how big (use the benchmark's sizes).
    #[command(flatten)]
    pub place: TestbedPlace,
    /// The benchmark's results.json to compare with.
    #[arg(long)]
    pub bench: PathBuf,
    /// Request rates to the guest for the dirty-rate measurements, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 2.0, 5.0, 10.0])]
    pub rates: Vec<f64>,
}

/// Where the testbed runs.
#[derive(Debug, clap::Args)]
pub struct TestbedPlace {
    /// The repository's testbed/ directory (its scripts build the guest and the namespace);
    /// found from the current directory or this program's location when not given.
    #[arg(long)]
    pub testbed_dir: Option<PathBuf>,
    /// Network namespace to create (and remove afterwards).
    #[arg(long, default_value = "handover-tb")]
    pub netns: String,
    /// Where results go.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u32,
    /// Guest buffer the load rewrites, MiB (non-zero data).
    #[arg(long, default_value_t = 32)]
    pub buffer_mib: u32,
}

/// Arguments of `handover testbed check`.
#[derive(Debug, clap::Args)]
pub struct TestbedCheckArgs {
    /// Where and how big.
    #[command(flatten)]
    pub place: TestbedPlace,
    /// HTTP requests per second to the pool.
    #[arg(long, default_value_t = 6.0)]
    pub rate: f64,
    /// KiB of guest memory each request rewrites.
    #[arg(long, default_value_t = 256)]
    pub kib: u32,
    /// Copy bandwidth cap, e.g. `32MiB` (per second).
    #[arg(long, default_value = "32MiB", value_parser = bytes)]
    pub max_bandwidth: u64,
}

/// Arguments of `handover testbed bench`.
#[derive(Debug, clap::Args)]
pub struct TestbedBenchArgs {
    /// Where and how big.
    #[command(flatten)]
    pub place: TestbedPlace,
    /// Request rates to the pool (requests per second), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [15.0, 30.0])]
    pub rates: Vec<f64>,
    /// Copy bandwidth caps in MiB/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1024.0, 12.0])]
    pub bandwidths: Vec<f64>,
    /// Policies: unaware, drain, reduce-0.25, drain-ramp, haproxy, adaptive, adaptive-quiesce
    /// (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "unaware,drain,reduce-0.25,drain-ramp,haproxy,adaptive,adaptive-quiesce"
    )]
    pub policies: Vec<String>,
    /// Repetitions per point and policy.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,
    /// KiB of guest memory each request rewrites.
    #[arg(long, default_value_t = 1024)]
    pub kib: u32,
    /// Long-lived TCP connections through the balancer.
    #[arg(long, default_value_t = 6)]
    pub connections: usize,
    /// Seconds of load before each migration.
    #[arg(long, default_value_t = 4.0)]
    pub warmup: f64,
    /// Seconds of load after each migration (at least the ramp window plus 4).
    #[arg(long, default_value_t = 5.0)]
    pub tail: f64,
    /// Cancel a migration not done after this many seconds.
    #[arg(long, default_value_t = 45.0)]
    pub timeout: f64,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the balancer and the migration module from a configuration file.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Once listening, write the actual addresses (JSON) to this file.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// On SIGTERM or Ctrl-C, how long open connections may finish before exit.
        #[arg(long, default_value = "10s", value_parser = duration)]
        shutdown_grace: Duration,
        /// Worker threads of the data plane (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// After a reload (SIGHUP, `handover reload`) removed a backend, pool or listener, how long
        /// its open connections may go on before they are closed.
        #[arg(long, default_value = "30s", value_parser = duration)]
        drain_grace: Duration,
        /// Answer binary upgrades on this unix socket: a new `handover run --upgrade-from` with it
        /// takes over the listening sockets, and this process finishes its connections and exits.
        #[arg(long)]
        upgrade_socket: Option<PathBuf>,
        /// Take the listening sockets over from the handover running with `--upgrade-socket` at
        /// this path (binary upgrade without refusing a connection; docs/operations.md).
        #[arg(long)]
        upgrade_from: Option<PathBuf>,
    },
    /// Validate a configuration file and print every error with its field and line.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send a migration notice for a VM to a running node.
    Notify(NotifyArgs),
    /// Migrate a VM with QEMU after draining it: prepare, wait for drained, then QMP `migrate`,
    /// follow it with a progress bar, and send completed or failed. Ctrl-C cancels the migration.
    Migrate(MigrateArgs),
    /// The libvirt `qemu` hook: install as /etc/libvirt/hooks/qemu (see docs/integrations.md).
    LibvirtHook(HookArgs),
    /// Simulate live migrations under load behind handover's policies (deterministic).
    Sim(SimArgs),
    /// Real live migrations of tiny Debian guests under load, in a network namespace (root).
    #[command(subcommand)]
    Testbed(TestbedCommand),
    /// Show every VM with its phase, backends, effective weights and open connections.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The control API.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Make a running node re-read its configuration file and apply the difference (as SIGHUP
    /// does); prints what changed, or every error of the file (then nothing changed).
    Reload {
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
        /// The control API.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List the fleet (`[fleet]` on etcd): every node, its lease, the VMs it serves, and its last
    /// acknowledgement of each VM in migration.
    Fleet {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// The control API of any node of the fleet.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) to stdout: handover(1), or handover-COMMAND(1) for one command
    /// (`handover man > /usr/local/share/man/man1/handover.1`).
    Man {
        /// A command (`run`, `notify`, ...): its own page.
        command: Option<String>,
    },
    /// Start three demo backends, the proxy and a load generator, and walk a VM through a
    /// migration (prepare → drained → started → completed → ramp) in about 30 seconds.
    Demo,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn address_move(text: &str) -> Result<(std::net::SocketAddr, std::net::SocketAddr), String> {
    let (from, to) = text
        .split_once('=')
        .ok_or_else(|| format!("expected OLD=NEW, got {text:?}"))?;
    let parse = |a: &str| {
        a.trim()
            .parse()
            .map_err(|_| format!("invalid socket address {a:?} (expected IP:PORT)"))
    };
    Ok((parse(from)?, parse(to)?))
}

fn bytes(text: &str) -> Result<u64, String> {
    handover_core::units::parse_bytes(text).map_err(|e| e.to_string())
}

fn notice(text: &str) -> Result<Notice, String> {
    text.parse()
}
