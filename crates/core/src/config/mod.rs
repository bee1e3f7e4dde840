//! The configuration file: TOML in, a validated [`Config`] out, or every error with its field path
//! and line. Nothing starts until a configuration is valid as a whole.
//!
//! This module only parses text; reading the file is the binary's job.

pub mod access_log;
mod adaptive;
mod error;
mod fleet;
mod reader;
pub mod serde_duration;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::DeTable;

pub use access_log::AccessLogConfig;
pub use error::{ConfigError, ConfigErrors};
pub use fleet::{DEFAULT_PREFIX, FleetConfig, valid_node_name};
use reader::{Doc, Field, Fields};

use crate::drain::DrainPolicy;
use crate::model::{Algorithm, DrainShape, Endpoint, Keep, ListenerKind, RestoreMode, VmId};
use crate::ramp::RampPolicy;

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The control API.
    pub control: ControlConfig,
    /// Client-facing listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Backend pools, in file order.
    pub pools: Vec<PoolConfig>,
    /// Other handover nodes that also balance traffic to these VMs.
    pub peers: Vec<PeerConfig>,
    /// Settings of the migration module that are not per pool.
    pub migration: MigrationConfig,
    /// QEMU QMP monitors to watch for migrations.
    pub qmp: Vec<QmpConfig>,
    /// libvirt daemons whose domain events are watched for migrations.
    pub libvirt: Vec<LibvirtConfig>,
    /// Where runtime state (phases, ramps, health, addresses) is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// HAProxy instances handover drives through their runtime API.
    pub haproxy: Vec<HaproxyConfig>,
    /// nginx instances handover drives through a generated upstream file.
    pub nginx: Vec<NginxConfig>,
    /// A fleet of nodes sharing an etcd cluster (instead of `peers`).
    pub fleet: Option<FleetConfig>,
}

/// Policies a driven balancer applies (the same meaning as a pool's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrivenPolicy {
    /// Drain policy.
    pub drain: DrainPolicy,
    /// Ramp policy.
    pub ramp: RampPolicy,
    /// Restore after failed, cancelled or deadline.
    pub restore: RestoreMode,
    /// How often weights are re-sent while they move (ramp, linear drain).
    #[serde(with = "serde_duration")]
    pub step: Duration,
}

/// Which HAProxy servers belong to which VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ServerKey {
    /// `backend/server`.
    Name {
        /// HAProxy backend.
        backend: String,
        /// HAProxy server.
        server: String,
    },
    /// The server's configured address.
    Address(SocketAddr),
}

/// An HAProxy instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaproxyConfig {
    /// Name in replies and metrics.
    pub name: String,
    /// Runtime API socket: a path, `unix:PATH` or `tcp:HOST:PORT` (`stats socket ... level admin`).
    pub socket: Endpoint,
    /// Per-command timeout.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Servers of each VM, by `backend/server` or by address.
    pub vms: Vec<(ServerKey, VmId)>,
    /// A server whose name is a VM id belongs to that VM (when no other mapping matches).
    pub server_name_is_vm: bool,
    /// Drain, ramp, restore.
    pub policy: DrivenPolicy,
}

/// One server of an nginx upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NginxServer {
    /// Address.
    pub address: SocketAddr,
    /// The VM behind it.
    pub vm: VmId,
    /// Weight.
    pub weight: u32,
}

/// An nginx instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NginxConfig {
    /// Name in replies and metrics.
    pub name: String,
    /// Name of the upstream block handover writes.
    pub upstream: String,
    /// File handover writes the upstream block to (include it from `http {}` or `stream {}`).
    pub file: PathBuf,
    /// Command that reloads nginx gracefully (argv).
    pub reload: Vec<String>,
    /// Extra directives inside the upstream block (e.g. `keepalive 64;`).
    pub extra: Vec<String>,
    /// The servers.
    pub servers: Vec<NginxServer>,
    /// Drain, ramp, restore.
    pub policy: DrivenPolicy,
}

/// What an active health check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP GET whose status must match.
    Http {
        /// Path requested.
        path: String,
        /// Expected status.
        expect: StatusMatch,
    },
}

/// The statuses an HTTP check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StatusMatch {
    /// Exactly this status.
    Exact(u16),
    /// Any status of this class (`2` for 2xx).
    Class(u16),
}

impl StatusMatch {
    /// Whether a status matches.
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Self::Exact(code) => status == *code,
            Self::Class(class) => status / 100 == *class,
        }
    }
}

/// A pool's active health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    /// TCP or HTTP.
    pub check: CheckKind,
    /// Time between two checks of a backend.
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    /// Longest a check may take.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Consecutive successes to come back up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
}

/// A pool's passive health check (outlier ejection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    /// Consecutive failed connects or 5xx answers that eject a backend.
    pub consecutive_failures: u32,
    /// How long an ejection lasts.
    #[serde(with = "serde_duration")]
    pub ejection: Duration,
}

/// A QEMU QMP monitor handover watches for one VM's migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QmpConfig {
    /// Unix socket path (`/run/vm-a.qmp`, `unix:/run/vm-a.qmp`) or `tcp:HOST:PORT`.
    pub socket: Endpoint,
    /// The VM that QEMU runs.
    pub vm: VmId,
    /// How often `query-migrate` is polled while a migration runs.
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
}

/// A libvirt daemon whose domain events handover watches (`virsh event`), to learn how migrations
/// to and from this host end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtConfig {
    /// Connection URI (`qemu:///system`).
    pub uri: String,
    /// The `virsh` program (from libvirt-clients).
    pub virsh: PathBuf,
}

/// Where the control API listens and how it is protected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlConfig {
    /// Listen address of the control API (loopback by default).
    pub bind: SocketAddr,
    /// When set, every mutating call needs `Authorization: Bearer <token>`.
    #[serde(skip_serializing)]
    pub token: Option<String>,
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    /// Unique name (metrics, logs).
    pub name: String,
    /// `http` (L7) or `tcp` (L4).
    pub kind: ListenerKind,
    /// Listen address.
    pub bind: SocketAddr,
    /// Pool this listener routes to.
    pub pool: String,
    /// L4: close a connection idle this long in both directions (none by default).
    #[serde(with = "serde_duration::option")]
    pub idle_timeout: Option<Duration>,
    /// L7: how long to wait for a backend's response headers before answering 504.
    #[serde(with = "serde_duration")]
    pub response_timeout: Duration,
    /// L7: how long a client may take to send a request head, or stay without progress while it
    /// sends a request body or reads a response, before its connection is closed.
    #[serde(with = "serde_duration")]
    pub client_timeout: Duration,
    /// Where its access log goes, and in what form (none: off).
    pub access_log: Option<AccessLogConfig>,
    /// L7: TLS termination (none: the listener speaks cleartext HTTP).
    pub tls: Option<ListenerTls>,
    /// L7: HTTP/2 from clients: offered by ALPN on a TLS listener, taken with prior knowledge on
    /// a cleartext one. Default: on with TLS, off without.
    pub http2: bool,
    /// L7: WebSocket upgrades (HTTP/1.1 `Upgrade: websocket` on a GET) are passed to the backend
    /// and the connections joined after its 101. Off: `Upgrade` is dropped as hop-by-hop.
    pub websocket: bool,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// TLS termination of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// The certificates; a client's SNI picks the first that is valid for its name, the first
    /// is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Lowest version accepted.
    pub min_version: TlsVersion,
    /// How often the files are checked for changes (a changed pair is loaded without a restart).
    #[serde(with = "serde_duration")]
    pub reload: Duration,
}

/// The protocol a pool's backends are spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (gRPC needs it): streams multiplexed over one connection per backend and worker.
    H2,
}

/// TLS to a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// CA certificates (PEM) the backends' certificates are verified against; `None` with
    /// `insecure`.
    pub ca: Option<PathBuf>,
    /// Skip verification (logged as a warning at start).
    pub insecure: bool,
    /// The name sent as SNI and verified; default: the backend's IP address.
    pub server_name: Option<String>,
}

/// The capacity guard of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuardConfig {
    /// Refuse (or queue) a drain that would leave fewer backends than this not draining.
    pub min_active: usize,
    /// At most this many VMs of the pool draining or migrating at once.
    pub max_concurrent: Option<usize>,
    /// What to do with a prepare that breaks the guard.
    pub on_violation: GuardAction,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            min_active: 0,
            max_concurrent: None,
            on_violation: GuardAction::Refuse,
        }
    }
}

/// What the guard does with a prepare it cannot admit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    /// Answer with a refusal that says why; nothing changes.
    Refuse,
    /// Accept it into a queue; it is applied when another migration of the pool ends.
    Queue,
}

/// Cookie-based session affinity for L7 listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StickyConfig {
    /// Name of the cookie that carries the backend.
    pub cookie: String,
}

/// A pool of backends and its policies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// Selection algorithm.
    pub algorithm: Algorithm,
    /// What happens to a VM's share of new work when it is about to migrate.
    pub drain: DrainPolicy,
    /// How the share comes back.
    pub ramp: RampPolicy,
    /// How a VM comes back after a failed or cancelled migration, or a missed deadline.
    pub restore: RestoreMode,
    /// A migration with no end notice is restored this long after its prepare.
    #[serde(with = "serde_duration")]
    pub deadline: Duration,
    /// A VM counts as drained when its open connections (L4) plus in-flight requests (L7) are at most this.
    pub drained_threshold: u64,
    /// Capacity guard.
    pub guard: GuardConfig,
    /// Upstream connect timeout.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// How many other backends a failed connect is retried on.
    pub retries: u32,
    /// Session affinity (L7).
    pub sticky: Option<StickyConfig>,
    /// Active health check.
    pub health: Option<HealthCheckConfig>,
    /// Passive health check.
    pub outlier: Option<OutlierConfig>,
    /// How long a streak of failures during a migration (and after it ends) is taken for the
    /// blackout rather than a fault.
    #[serde(with = "serde_duration")]
    pub blackout_grace: Duration,
    /// The protocol spoken to the backends (L7).
    pub protocol: UpstreamProtocol,
    /// TLS to the backends (L7).
    pub tls: Option<UpstreamTls>,
    /// The backends.
    pub backends: Vec<BackendConfig>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    /// Address traffic is sent to.
    pub address: SocketAddr,
    /// The VM behind this address.
    pub vm: VmId,
    /// Relative weight, 1 to 10000.
    pub weight: u32,
}

/// Another handover node, notified of every migration this one learns about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerConfig {
    /// Name in replies and metrics (defaults to the URL's host:port).
    pub name: String,
    /// Base URL of the peer's control API, `http://host:port`.
    pub url: String,
    /// Bearer token of the peer's control API.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// Per-call timeout.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
}

/// Settings of the migration module that are not per pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationConfig {
    /// Deadline for a VM that no local pool serves (only peers do).
    #[serde(with = "serde_duration")]
    pub deadline: Duration,
    /// Longest wait for drained when a notice asks to wait but gives no timeout.
    #[serde(with = "serde_duration")]
    pub drain_timeout: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// Default control API address.
pub const DEFAULT_CONTROL_BIND: &str = "127.0.0.1:9090";

/// Parses and validates a configuration file's text.
pub fn parse(src: &str) -> Result<Config, ConfigErrors> {
    let (tree, syntax_errors) = DeTable::parse_recoverable(src);
    let mut doc = Doc::new(src, syntax_errors.is_empty().then_some(&tree));
    if !syntax_errors.is_empty() {
        for (i, e) in syntax_errors.iter().enumerate() {
            let message = format!("TOML syntax: {}", e.message());
            match e.span() {
                Some(span) => doc.error("", Some(span), message),
                None => {
                    let nth = syntax_errors[..=i]
                        .iter()
                        .filter(|o| o.span().is_none() && o.message() == e.message())
                        .count();
                    // toml reports errors in reading order: the placed ones around it bound it.
                    let near = (
                        syntax_errors[..i].iter().rev().find_map(|o| o.span()),
                        syntax_errors[i + 1..].iter().find_map(|o| o.span()),
                    );
                    doc.errors.push(ConfigError {
                        path: String::new(),
                        line: Some(line_of_unplaced(src, e.message(), nth, near)),
                        column: None,
                        message,
                    });
                }
            }
        }
        return Err(ConfigErrors(doc.errors));
    }
    let mut root = Fields::new("", tree.get_ref(), tree.span());

    let control = match root.get("control") {
        Some(field) => read_control(&mut doc, &field),
        None => Some(ControlConfig {
            bind: DEFAULT_CONTROL_BIND.parse().expect("valid default"),
            token: None,
        }),
    };
    let listeners = match root.get("listeners") {
        Some(field) => read_elements(&mut doc, &field, read_listener),
        None => Some(Vec::new()),
    };
    let (pools, pool_names) = match root.get("pools") {
        Some(field) => read_pools(&mut doc, &field),
        None => (Some(Vec::new()), Vec::new()),
    };
    let peers = match root.get("peers") {
        Some(field) => read_elements(&mut doc, &field, read_peer),
        None => Some(Vec::new()),
    };
    let migration = match root.get("migration") {
        Some(field) => read_migration(&mut doc, &field),
        None => Some(MigrationConfig::default()),
    };
    let qmp = match root.get("qmp") {
        Some(field) => read_elements(&mut doc, &field, read_qmp),
        None => Some(Vec::new()),
    };
    let libvirt = match root.get("libvirt") {
        Some(field) => read_elements(&mut doc, &field, read_libvirt),
        None => Some(Vec::new()),
    };
    let state_file = match root.get("state") {
        Some(field) => read_state(&mut doc, &field).map(Some),
        None => Some(None),
    };
    let haproxy = match root.get("haproxy") {
        Some(field) => read_elements(&mut doc, &field, read_haproxy),
        None => Some(Vec::new()),
    };
    let nginx = match root.get("nginx") {
        Some(field) => read_elements(&mut doc, &field, read_nginx),
        None => Some(Vec::new()),
    };
    let fleet = match root.get("fleet") {
        Some(field) => fleet::read_fleet(&mut doc, &field).map(Some),
        None => Some(None),
    };
    root.finish(&mut doc);
    let listeners = listeners.unwrap_or_default();
    let (peers, qmp) = (peers.unwrap_or_default(), qmp.unwrap_or_default());
    let (haproxy, nginx) = (haproxy.unwrap_or_default(), nginx.unwrap_or_default());
    let libvirt = libvirt.unwrap_or_default();
    check_listener_pools(&mut doc, &listeners, &pool_names);
    // Checks across sections run on every element that was read, so one run of `check` reports
    // every error, duplicates included, even when other fields are wrong.
    cross_check(
        &mut doc,
        &Parts {
            control: control.as_ref(),
            listeners: &listeners,
            pools: pools.as_deref(),
            peers: &peers,
            qmp: &qmp,
            haproxy: &haproxy,
            nginx: &nginx,
            libvirt: &libvirt,
            fleet: fleet.as_ref().and_then(|f| f.as_ref()),
        },
    );

    let whole = (|| {
        Some(Config {
            control: control?,
            listeners: all(listeners)?,
            pools: pools?,
            peers: all(peers)?,
            migration: migration?,
            qmp: all(qmp)?,
            libvirt: all(libvirt)?,
            state_file: state_file?,
            haproxy: all(haproxy)?,
            nginx: all(nginx)?,
            fleet: fleet?,
        })
    })();
    if let Some(config) = whole
        && doc.errors.is_empty()
    {
        return Ok(config);
    }
    doc.errors
        .sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
    Err(ConfigErrors(doc.errors))
}

/// Reads every element of an array of tables with `read`, keeping each at its index (`None` where
/// it had errors); `None` when the field is not an array.
fn read_elements<'a, 'i, T>(
    doc: &mut Doc<'_, '_>,
    field: &Field<'a, 'i>,
    read: impl Fn(&mut Doc<'_, '_>, &Field<'a, 'i>) -> Option<T>,
) -> Option<Vec<Option<T>>> {
    let items = field.array(doc)?;
    Some(items.iter().map(|item| read(doc, item)).collect())
}

/// Every element, if none had errors.
fn all<T>(elements: Vec<Option<T>>) -> Option<Vec<T>> {
    elements.into_iter().collect()
}

/// The line of a syntax error that toml reports without a position (a dotted key of too many
/// parts): the first line whose text, up to and including it, already has `nth` errors with this
/// message. toml reads from the start, so a longer prefix of the text has the same errors and more.
/// The lines of the placed errors reported just before and after it (`near`) are searched first,
/// each prefix costing a parse; the whole text when the answer is not between them.
fn line_of_unplaced(
    src: &str,
    message: &str,
    nth: usize,
    near: (Option<Range<usize>>, Option<Range<usize>>),
) -> usize {
    let ends: Vec<usize> = src
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain([src.len()])
        .collect();
    let fewer = |line: usize| {
        DeTable::parse_recoverable(&src[..ends[line]])
            .1
            .iter()
            .filter(|e| e.span().is_none() && e.message() == message)
            .count()
            < nth
    };
    let last = ends.len() - 1;
    let line_at = |offset: usize| ends.partition_point(|end| *end <= offset).min(last);
    let low = near.0.map_or(0, |span| line_at(span.start));
    let high = near.1.map_or(last, |span| line_at(span.start)).max(low);
    let line = low
        + (low..=high)
            .collect::<Vec<_>>()
            .partition_point(|line| fewer(*line));
    // Inside the bounds the search relies on the line before `low` having fewer: checked when the
    // answer is `low`.
    if line <= high && (line > low || line == 0 || fewer(line - 1)) {
        return line + 1;
    }
    (0..=last)
        .collect::<Vec<_>>()
        .partition_point(|line| fewer(*line))
        .min(last)
        + 1
}

/// Reads every element of an array of tables with `read`; `None` if any element failed.
fn read_array<'a, 'i, T>(
    doc: &mut Doc<'_, '_>,
    field: &Field<'a, 'i>,
    read: impl Fn(&mut Doc<'_, '_>, &Field<'a, 'i>) -> Option<T>,
) -> Option<Vec<T>> {
    let items = field.array(doc)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in &items {
        match read(doc, item) {
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `Some(value)` from an optional field, the default when absent, `None` after an error.
fn or_default<T>(
    field: Option<Field<'_, '_>>,
    default: T,
    read: impl FnOnce(&Field<'_, '_>) -> Option<T>,
) -> Option<T> {
    match field {
        Some(f) => read(&f),
        None => Some(default),
    }
}

fn read_control(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<ControlConfig> {
    let mut t = Fields::of(doc, field)?;
    let bind = or_default(
        t.get("bind"),
        DEFAULT_CONTROL_BIND.parse().expect("valid default"),
        |f| f.socket_addr(doc),
    );
    let token = match t.get("token") {
        Some(f) => f.non_empty_string(doc).map(Some),
        None => Some(None),
    };
    t.finish(doc);
    Some(ControlConfig {
        bind: bind?,
        token: token?,
    })
}

fn read_listener(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<ListenerConfig> {
    let mut t = Fields::of(doc, field)?;
    let name = t.require(doc, "name").and_then(|f| f.non_empty_string(doc));
    let kind = t
        .require(doc, "kind")
        .and_then(|f| f.choice(doc, &[("http", ListenerKind::Http), ("tcp", ListenerKind::Tcp)]));
    let bind = t.require(doc, "bind").and_then(|f| f.socket_addr(doc));
    let pool = t.require(doc, "pool").and_then(|f| f.non_empty_string(doc));
    // L4: a connection idle both ways; L7: an HTTP/2 client connection without a stream.
    let idle_timeout = match t.get("idle_timeout") {
        Some(f) => f.duration(doc).map(Some),
        None => Some(None),
    };
    let response_timeout = or_default(t.get("response_timeout"), Duration::from_secs(60), |f| {
        positive(doc, f)
    });
    let client_timeout = or_default(t.get("client_timeout"), Duration::from_secs(60), |f| {
        positive(doc, f)
    });
    let tls_field = t.get("tls");
    let tls = match &tls_field {
        Some(f) => read_listener_tls(doc, f).map(Some),
        None => Some(None),
    };
    let http2_field = t.get("http2");
    let http2 = match &http2_field {
        Some(f) => boolean(doc, f).map(Some),
        None => Some(None),
    };
    let websocket_field = t.get("websocket");
    let websocket = match &websocket_field {
        Some(f) => boolean(doc, f),
        None => Some(true),
    };
    let access_log = match t.get("access_log") {
        Some(f) => access_log::read_access_log(doc, &f),
        None => Some(None),
    };
    t.finish(doc);
    let kind = kind?;
    if kind == ListenerKind::Tcp {
        // A tcp listener relays bytes: TLS passes through it untouched.
        for f in [&tls_field, &http2_field, &websocket_field].into_iter().flatten() {
            doc.error(
                &f.path,
                f.span(),
                "only http listeners have this field (a tcp listener passes TLS and every protocol through)",
            );
        }
    }
    let tls = tls?;
    Some(ListenerConfig {
        name: name?,
        kind,
        bind: bind?,
        pool: pool?,
        idle_timeout: idle_timeout?,
        response_timeout: response_timeout?,
        client_timeout: client_timeout?,
        http2: http2?.unwrap_or(tls.is_some()),
        tls,
        websocket: websocket?,
        access_log: access_log?,
    })
}

/// A migration deadline: at least a second, at most a week (what notices and peers accept).
fn deadline(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<Duration> {
    let d = field.duration(doc)?;
    let ms = d.as_millis();
    if !(1000..=u128::from(crate::phase::MAX_DEADLINE_MS)).contains(&ms) {
        doc.error(&field.path, field.span(), "must be from 1s to 168h (7 days)");
        return None;
    }
    Some(d)
}

/// `true` or `false`.
fn boolean(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<bool> {
    match field.value.get_ref().as_bool() {
        Some(b) => Some(b),
        None => {
            doc.error(&field.path, field.span(), "expected true or false");
            None
        }
    }
}

/// A path that must not be empty.
fn path(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<PathBuf> {
    field.non_empty_string(doc).map(PathBuf::from)
}

fn read_listener_tls(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<ListenerTls> {
    let mut t = Fields::of(doc, field)?;
    let certificates = t.require(doc, "certificates").and_then(|f| {
        let list = read_array(doc, &f, |doc, item| {
            let mut c = Fields::of(doc, item)?;
            let cert = c.require(doc, "cert").and_then(|f| path(doc, &f));
            let key = c.require(doc, "key").and_then(|f| path(doc, &f));
            c.finish(doc);
            Some(CertificateFiles {
                cert: cert?,
                key: key?,
            })
        })?;
        if list.is_empty() {
            doc.error(
                &f.path,
                f.span(),
                "at least one certificate: certificates = [{ cert = \"cert.pem\", key = \"key.pem\" }]",
            );
            return None;
        }
        Some(list)
    });
    let min_version = or_default(t.get("min_version"), TlsVersion::Tls12, |f| {
        f.choice(doc, &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)])
    });
    let reload = or_default(t.get("reload"), Duration::from_secs(5), |f| positive(doc, f));
    t.finish(doc);
    Some(ListenerTls {
        certificates: certificates?,
        min_version: min_version?,
        reload: reload?,
    })
}

fn read_upstream_tls(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<UpstreamTls> {
    let mut t = Fields::of(doc, field)?;
    let ca = match t.get("ca") {
        Some(f) => path(doc, &f).map(Some),
        None => Some(None),
    };
    let insecure = match t.get("insecure") {
        Some(f) => boolean(doc, &f),
        None => Some(false),
    };
    let server_name = match t.get("server_name") {
        Some(f) => f.non_empty_string(doc).map(Some),
        None => Some(None),
    };
    t.finish(doc);
    let tls = UpstreamTls {
        ca: ca?,
        insecure: insecure?,
        server_name: server_name?,
    };
    match (&tls.ca, tls.insecure) {
        (None, false) => {
            doc.error(
                &field.path,
                field.span(),
                "say how backends are verified: ca = \"ca.pem\", or insecure = true to skip verification",
            );
            None
        }
        (Some(_), true) => {
            doc.error(
                &format!("{}.insecure", field.path),
                field.span(),
                "insecure = true skips verification: it cannot go with ca",
            );
            None
        }
        _ => Some(tls),
    }
}

/// A duration that must be above zero.
fn positive(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<Duration> {
    let d = field.duration(doc)?;
    if d.is_zero() {
        doc.error(&field.path, field.span(), "must be longer than zero");
        return None;
    }
    Some(d)
}

/// The pools, and the names of every pool in the file (even those with errors), so that listeners
/// can be checked against them in the same run.
fn read_pools(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> (Option<Vec<PoolConfig>>, Vec<String>) {
    let Some(mut t) = Fields::of(doc, field) else {
        return (None, Vec::new());
    };
    let mut pools = Vec::new();
    let mut names = Vec::new();
    let mut ok = true;
    for (name, key_span, pool_field) in t.entries() {
        names.push(name.clone());
        if !valid_name(&name) {
            doc.error(
                &pool_field.path,
                Some(key_span),
                "pool names use letters, digits, '.', '_' and '-' only",
            );
            ok = false;
            continue;
        }
        match read_pool(doc, &name, &pool_field) {
            Some(pool) => pools.push(pool),
            None => ok = false,
        }
    }
    t.finish(doc);
    (ok.then_some(pools), names)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn read_pool(doc: &mut Doc<'_, '_>, name: &str, field: &Field<'_, '_>) -> Option<PoolConfig> {
    let mut t = Fields::of(doc, field)?;
    let algorithm = or_default(t.get("algorithm"), Algorithm::RoundRobin, |f| {
        f.choice(
            doc,
            &[
                ("round_robin", Algorithm::RoundRobin),
                ("least_connections", Algorithm::LeastConnections),
                ("p2c_ewma", Algorithm::P2cEwma),
            ],
        )
    });
    let drain = or_default(t.get("drain"), DrainPolicy::default(), |f| {
        read_drain(doc, f, true)
    });
    let ramp = or_default(t.get("ramp"), RampPolicy::default(), |f| read_ramp(doc, f));
    let restore = or_default(t.get("restore"), RestoreMode::Ramp, |f| {
        f.choice(
            doc,
            &[("ramp", RestoreMode::Ramp), ("immediate", RestoreMode::Immediate)],
        )
    });
    let deadline = or_default(t.get("deadline"), Duration::from_secs(600), |f| deadline(doc, f));
    let drained_threshold = or_default(t.get("drained_threshold"), 0, |f| {
        f.integer(doc, 0, 1_000_000).map(|v| v as u64)
    });
    let guard = or_default(t.get("guard"), GuardConfig::default(), |f| read_guard(doc, f));
    let connect_timeout = or_default(t.get("connect_timeout"), Duration::from_secs(2), |f| {
        positive(doc, f)
    });
    let retries = or_default(t.get("retries"), 2, |f| f.integer(doc, 0, 16).map(|v| v as u32));
    let sticky = match t.get("sticky") {
        Some(f) => read_sticky(doc, &f).map(Some),
        None => Some(None),
    };
    let health = match t.get("health") {
        Some(f) => read_health(doc, &f).map(Some),
        None => Some(None),
    };
    let outlier = match t.get("outlier") {
        Some(f) => read_outlier(doc, &f).map(Some),
        None => Some(None),
    };
    let blackout_grace = or_default(t.get("blackout_grace"), Duration::from_secs(2), |f| {
        f.duration(doc)
    });
    let protocol = or_default(t.get("protocol"), UpstreamProtocol::Http1, |f| {
        f.choice(
            doc,
            &[("http1", UpstreamProtocol::Http1), ("h2", UpstreamProtocol::H2)],
        )
    });
    let tls = match t.get("tls") {
        Some(f) => read_upstream_tls(doc, &f).map(Some),
        None => Some(None),
    };
    let backends = match t.require(doc, "backends") {
        Some(f) => read_elements(doc, &f, read_backend),
        None => None,
    };
    t.finish(doc);
    // Duplicates among the backends that were read, whatever else is wrong with the pool.
    let mut seen = HashSet::new();
    for (i, backend) in backends.iter().flatten().enumerate() {
        if let Some(backend) = backend
            && !seen.insert(backend.address)
        {
            doc.error(
                &format!("pools.{name}.backends[{i}].address"),
                None,
                format!("duplicate backend address {} in pool {name:?}", backend.address),
            );
        }
    }
    let backends = backends.and_then(all);
    let pool = PoolConfig {
        name: name.to_string(),
        algorithm: algorithm?,
        drain: drain?,
        ramp: ramp?,
        restore: restore?,
        deadline: deadline?,
        drained_threshold: drained_threshold?,
        guard: guard?,
        connect_timeout: connect_timeout?,
        retries: retries?,
        sticky: sticky?,
        health: health?,
        outlier: outlier?,
        blackout_grace: blackout_grace?,
        protocol: protocol?,
        tls: tls?,
        backends: backends?,
    };
    let path = &field.path;
    if pool.backends.is_empty() {
        doc.error(
            &format!("{path}.backends"),
            field.span(),
            "a pool needs at least one backend",
        );
    }
    if pool.drain.keep == Keep::Sessions && pool.sticky.is_none() {
        doc.error(
            &format!("{path}.drain.keep"),
            field.span(),
            "keep = \"sessions\" needs session affinity: add sticky = { cookie = \"...\" } to the pool",
        );
    }
    Some(pool)
}

/// A drain policy; `long_lived` is only for the embedded proxy's pools (the balancers handover
/// drives have no such lever).
fn read_drain(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>, long_lived: bool) -> Option<DrainPolicy> {
    let mut t = Fields::of(doc, field)?;
    let target = or_default(t.get("target"), 0.0, |f| f.number(doc, 0.0, 1.0));
    let shape = or_default(t.get("shape"), DrainShape::Step, |f| {
        f.choice(doc, &[("step", DrainShape::Step), ("linear", DrainShape::Linear)])
    });
    let window_field = t.get("window");
    let window_span = window_field.as_ref().and_then(Field::span);
    let window = or_default(window_field, Duration::ZERO, |f| f.duration(doc));
    let keep = or_default(t.get("keep"), Keep::Connections, |f| {
        f.choice(
            doc,
            &[
                ("connections", Keep::Connections),
                ("sessions", Keep::Sessions),
                ("in-flight", Keep::InFlight),
            ],
        )
    });
    let adaptive = adaptive::read_adaptive(doc, &mut t, &field.path);
    let long_lived_close_after = match t.get("long_lived") {
        Some(f) if !long_lived => {
            doc.error(
                &f.path,
                f.span(),
                "only the embedded proxy's pools can close long-lived connections",
            );
            None
        }
        Some(f) => Fields::of(doc, &f).and_then(|mut l| {
            let close_after = l.require(doc, "close_after").and_then(|f| f.duration(doc));
            l.finish(doc);
            close_after.map(Some)
        }),
        None => Some(None),
    };
    t.finish(doc);
    let policy = DrainPolicy {
        target: target?,
        shape: shape?,
        window: window?,
        keep: keep?,
        adaptive: adaptive?,
        long_lived_close_after: long_lived_close_after?,
    };
    if policy.shape == DrainShape::Linear && policy.window.is_zero() {
        doc.error(
            &format!("{}.window", field.path),
            window_span.or(field.span()),
            "shape = \"linear\" needs a window longer than zero (e.g. window = \"5s\")",
        );
        return None;
    }
    Some(policy)
}

fn read_ramp(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<RampPolicy> {
    let mut t = Fields::of(doc, field)?;
    let defaults = RampPolicy::default();
    let window = or_default(t.get("window"), defaults.window, |f| f.duration(doc));
    let aggression = match t.get("aggression") {
        Some(f) => f.number(doc, 0.0, 100.0).and_then(|a| {
            if a <= 0.0 {
                doc.error(&f.path, f.span(), "must be above zero (1.0 is linear)");
                None
            } else {
                Some(a)
            }
        }),
        None => Some(defaults.aggression),
    };
    let min_percent = or_default(t.get("min_percent"), defaults.min_percent, |f| {
        f.number(doc, 0.0, 100.0)
    });
    t.finish(doc);
    Some(RampPolicy {
        window: window?,
        aggression: aggression?,
        min_percent: min_percent?,
    })
}

fn read_guard(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<GuardConfig> {
    let mut t = Fields::of(doc, field)?;
    let min_active = or_default(t.get("min_active"), 0, |f| {
        f.integer(doc, 0, 100_000).map(|v| v as usize)
    });
    let max_concurrent = match t.get("max_concurrent") {
        Some(f) => f.integer(doc, 1, 100_000).map(|v| Some(v as usize)),
        None => Some(None),
    };
    let on_violation = or_default(t.get("on_violation"), GuardAction::Refuse, |f| {
        f.choice(
            doc,
            &[("refuse", GuardAction::Refuse), ("queue", GuardAction::Queue)],
        )
    });
    t.finish(doc);
    Some(GuardConfig {
        min_active: min_active?,
        max_concurrent: max_concurrent?,
        on_violation: on_violation?,
    })
}

fn read_sticky(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<StickyConfig> {
    let mut t = Fields::of(doc, field)?;
    let cookie = t.require(doc, "cookie").and_then(|f| {
        let name = f.non_empty_string(doc)?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            doc.error(
                &f.path,
                f.span(),
                "cookie names use letters, digits, '_', '-' and '.' only",
            );
            return None;
        }
        Some(name)
    });
    t.finish(doc);
    Some(StickyConfig { cookie: cookie? })
}

fn read_health(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<HealthCheckConfig> {
    let mut t = Fields::of(doc, field)?;
    let kind = t
        .require(doc, "kind")
        .and_then(|f| f.choice(doc, &[("tcp", false), ("http", true)]));
    let path_field = t.get("path");
    let expect_field = t.get("expect");
    let interval = or_default(t.get("interval"), Duration::from_secs(2), |f| positive(doc, f));
    let timeout = or_default(t.get("timeout"), Duration::from_secs(1), |f| positive(doc, f));
    let rise = or_default(t.get("rise"), 2, |f| f.integer(doc, 1, 100).map(|v| v as u32));
    let fall = or_default(t.get("fall"), 3, |f| f.integer(doc, 1, 100).map(|v| v as u32));
    let check = match kind? {
        false => {
            for f in [&path_field, &expect_field].into_iter().flatten() {
                doc.error(
                    &f.path,
                    f.span(),
                    "only HTTP checks have this field (kind = \"http\")",
                );
            }
            Some(CheckKind::Tcp)
        }
        true => {
            let path = match &path_field {
                Some(f) => f.non_empty_string(doc).and_then(|p| {
                    if p.starts_with('/') {
                        Some(p)
                    } else {
                        doc.error(&f.path, f.span(), "must start with '/'");
                        None
                    }
                }),
                None => Some("/".to_string()),
            };
            let expect = match &expect_field {
                Some(f) => read_status_match(doc, f),
                None => Some(StatusMatch::Exact(200)),
            };
            Some(CheckKind::Http {
                path: path?,
                expect: expect?,
            })
        }
    };
    t.finish(doc);
    Some(HealthCheckConfig {
        check: check?,
        interval: interval?,
        timeout: timeout?,
        rise: rise?,
        fall: fall?,
    })
}

/// `200` (exactly) or `"2xx"` (a class).
fn read_status_match(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<StatusMatch> {
    if let Some(text) = field.value.get_ref().as_str() {
        let class = text
            .strip_suffix("xx")
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (1..=5).contains(c));
        if class.is_none() {
            doc.error(
                &field.path,
                field.span(),
                format!("invalid status {text:?}: expected a code like 200 or a class like \"2xx\""),
            );
        }
        return class.map(StatusMatch::Class);
    }
    field
        .integer(doc, 100, 599)
        .map(|code| StatusMatch::Exact(code as u16))
}

fn read_outlier(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<OutlierConfig> {
    let mut t = Fields::of(doc, field)?;
    let consecutive = or_default(t.get("consecutive_failures"), 5, |f| {
        f.integer(doc, 1, 1000).map(|v| v as u32)
    });
    let ejection = or_default(t.get("ejection"), Duration::from_secs(10), |f| positive(doc, f));
    t.finish(doc);
    Some(OutlierConfig {
        consecutive_failures: consecutive?,
        ejection: ejection?,
    })
}

fn read_backend(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<BackendConfig> {
    let mut t = Fields::of(doc, field)?;
    let address = t.require(doc, "address").and_then(|f| f.socket_addr(doc));
    let vm = t.require(doc, "vm").and_then(|f| {
        let text = f.string(doc)?;
        match VmId::new(text) {
            Ok(vm) => Some(vm),
            Err(e) => {
                doc.error(&f.path, f.span(), e.to_string());
                None
            }
        }
    });
    let weight = or_default(t.get("weight"), 1, |f| {
        f.integer(doc, 1, 10_000).map(|v| v as u32)
    });
    t.finish(doc);
    Some(BackendConfig {
        address: address?,
        vm: vm?,
        weight: weight?,
    })
}

fn read_peer(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<PeerConfig> {
    let mut t = Fields::of(doc, field)?;
    let url = t.require(doc, "url").and_then(|f| {
        let text = f.non_empty_string(doc)?;
        match normalize_peer_url(&text) {
            Ok(url) => Some(url),
            Err(message) => {
                doc.error(&f.path, f.span(), message);
                None
            }
        }
    });
    let name = match t.get("name") {
        Some(f) => f.non_empty_string(doc).map(Some),
        None => Some(None),
    };
    let token = match t.get("token") {
        Some(f) => f.non_empty_string(doc).map(Some),
        None => Some(None),
    };
    let timeout = or_default(t.get("timeout"), Duration::from_secs(2), |f| positive(doc, f));
    t.finish(doc);
    let url = url?;
    let name = name?.unwrap_or_else(|| url.trim_start_matches("http://").to_string());
    Some(PeerConfig {
        name,
        url,
        token: token?,
        timeout: timeout?,
    })
}

/// Accepts `http://host:port` (optionally with a trailing `/`); returns it without the slash.
pub fn normalize_peer_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or_else(|| format!("invalid URL {text:?}: only http://HOST:PORT is supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('?') {
        return Err(format!(
            "invalid URL {text:?}: expected http://HOST:PORT with no path"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid URL {text:?}: the port is missing (http://HOST:PORT)"))?;
    if !valid_host(host) {
        return Err(format!(
            "invalid URL {text:?}: {host:?} is not a host name, an IPv4 address or an [IPv6] address"
        ));
    }
    // Digits only: `str::parse` would take "+80".
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p > 0);
    if !port_ok {
        return Err(format!(
            "invalid URL {text:?}: the port {port:?} is not a number from 1 to 65535"
        ));
    }
    Ok(format!("http://{authority}"))
}

/// A DNS name (letters, digits, '-', dot-separated labels of 1 to 63), an IPv4 address, or an
/// IPv6 address in brackets.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All digits and dots but not an IPv4 address (e.g. 10.0.0.300) is a typo, not a name.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn read_migration(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<MigrationConfig> {
    let mut t = Fields::of(doc, field)?;
    let defaults = MigrationConfig::default();
    let deadline = or_default(t.get("deadline"), defaults.deadline, |f| deadline(doc, f));
    let drain_timeout = or_default(t.get("drain_timeout"), defaults.drain_timeout, |f| {
        positive(doc, f)
    });
    t.finish(doc);
    Some(MigrationConfig {
        deadline: deadline?,
        drain_timeout: drain_timeout?,
    })
}

/// Every listener must name a pool of the file.
fn check_listener_pools(doc: &mut Doc<'_, '_>, listeners: &[Option<ListenerConfig>], pools: &[String]) {
    for (i, listener) in listeners.iter().enumerate() {
        let Some(listener) = listener else { continue };
        if !pools.contains(&listener.pool) {
            let mut known: Vec<&str> = pools.iter().map(String::as_str).collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            doc.error(
                &format!("listeners[{i}].pool"),
                None,
                format!("no pool named {:?} (pools: {known})", listener.pool),
            );
        }
    }
}

/// Drain, ramp, restore and step of a driven balancer.
fn read_policy(
    doc: &mut Doc<'_, '_>,
    t: &mut Fields<'_, '_>,
    default_step: Duration,
) -> Option<DrivenPolicy> {
    let drain = or_default(t.get("drain"), DrainPolicy::default(), |f| {
        read_drain(doc, f, false)
    });
    let ramp = or_default(t.get("ramp"), RampPolicy::default(), |f| read_ramp(doc, f));
    let restore = or_default(t.get("restore"), RestoreMode::Ramp, |f| {
        f.choice(
            doc,
            &[("ramp", RestoreMode::Ramp), ("immediate", RestoreMode::Immediate)],
        )
    });
    let step = or_default(t.get("step"), default_step, |f| positive(doc, f));
    Some(DrivenPolicy {
        drain: drain?,
        ramp: ramp?,
        restore: restore?,
        step: step?,
    })
}

fn read_haproxy(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<HaproxyConfig> {
    let mut t = Fields::of(doc, field)?;
    let name = t.require(doc, "name").and_then(|f| f.non_empty_string(doc));
    let socket = t.require(doc, "socket").and_then(|f| {
        let text = f.non_empty_string(doc)?;
        text.parse::<Endpoint>()
            .map_err(|e| doc.error(&f.path, f.span(), e))
            .ok()
    });
    let timeout = or_default(t.get("timeout"), Duration::from_secs(1), |f| positive(doc, f));
    let vms = match t.get("vms") {
        Some(f) => {
            let mut vms_table = Fields::of(doc, &f);
            let mut vms = Some(Vec::new());
            if let Some(table) = vms_table.as_mut() {
                for (key, key_span, value) in table.entries() {
                    let server = if let Some((backend, server)) = key.split_once('/') {
                        (!backend.is_empty() && !server.is_empty()).then(|| ServerKey::Name {
                            backend: backend.to_string(),
                            server: server.to_string(),
                        })
                    } else {
                        key.parse::<SocketAddr>().ok().map(ServerKey::Address)
                    };
                    if server.is_none() {
                        doc.error(
                            &value.path,
                            Some(key_span),
                            format!("invalid server {key:?}: expected \"BACKEND/SERVER\" or \"IP:PORT\""),
                        );
                    }
                    let vm = value.string(doc).and_then(|text| {
                        VmId::new(text)
                            .map_err(|e| doc.error(&value.path, value.span(), e.to_string()))
                            .ok()
                    });
                    match (server, vm, vms.as_mut()) {
                        (Some(server), Some(vm), Some(list)) => list.push((server, vm)),
                        _ => vms = None,
                    }
                }
            } else {
                vms = None;
            }
            if let Some(table) = vms_table {
                table.finish(doc);
            }
            vms
        }
        None => Some(Vec::new()),
    };
    let server_name_is_vm = match t.get("server_name_is_vm") {
        Some(f) => match f.value.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                doc.error(&f.path, f.span(), "expected true or false");
                None
            }
        },
        None => Some(false),
    };
    let policy = read_policy(doc, &mut t, Duration::from_millis(500));
    t.finish(doc);
    let config = HaproxyConfig {
        name: name?,
        socket: socket?,
        timeout: timeout?,
        vms: vms?,
        server_name_is_vm: server_name_is_vm?,
        policy: policy?,
    };
    if config.vms.is_empty() && !config.server_name_is_vm {
        doc.error(&format!("{}.vms", field.path), field.span(), "map at least one server to a VM (vms = { \"backend/server\" = \"vm-a\" }), or set server_name_is_vm = true");
        return None;
    }
    Some(config)
}

fn read_nginx(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<NginxConfig> {
    let mut t = Fields::of(doc, field)?;
    let name = t.require(doc, "name").and_then(|f| f.non_empty_string(doc));
    let upstream = t.require(doc, "upstream").and_then(|f| {
        let text = f.non_empty_string(doc)?;
        if valid_name(&text) {
            Some(text)
        } else {
            doc.error(
                &f.path,
                f.span(),
                "upstream names use letters, digits, '.', '_' and '-' only",
            );
            None
        }
    });
    let file = t
        .require(doc, "file")
        .and_then(|f| f.non_empty_string(doc))
        .map(PathBuf::from);
    let reload = t.require(doc, "reload").and_then(|f| {
        let items = f.array(doc)?;
        let argv: Option<Vec<String>> = items.iter().map(|i| i.non_empty_string(doc)).collect();
        let argv = argv?;
        if argv.is_empty() {
            doc.error(
                &f.path,
                f.span(),
                "the reload command needs at least the program, e.g. [\"nginx\", \"-s\", \"reload\"]",
            );
            return None;
        }
        Some(argv)
    });
    let extra = match t.get("extra") {
        Some(f) => f.array(doc).and_then(|items| {
            items
                .iter()
                .map(|i| i.non_empty_string(doc))
                .collect::<Option<Vec<_>>>()
        }),
        None => Some(Vec::new()),
    };
    let servers = t.require(doc, "servers").and_then(|f| {
        read_array(doc, &f, |doc, item| {
            let backend = read_backend(doc, item)?;
            Some(NginxServer {
                address: backend.address,
                vm: backend.vm,
                weight: backend.weight,
            })
        })
    });
    let policy = read_policy(doc, &mut t, Duration::from_secs(1));
    t.finish(doc);
    Some(NginxConfig {
        name: name?,
        upstream: upstream?,
        file: file?,
        reload: reload?,
        extra: extra?,
        servers: servers?,
        policy: policy?,
    })
}

fn read_state(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<PathBuf> {
    let mut t = Fields::of(doc, field)?;
    let file = t
        .require(doc, "file")
        .and_then(|f| f.non_empty_string(doc))
        .map(PathBuf::from);
    t.finish(doc);
    file
}

fn read_qmp(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<QmpConfig> {
    let mut t = Fields::of(doc, field)?;
    let socket = t.require(doc, "socket").and_then(|f| {
        let text = f.non_empty_string(doc)?;
        match text.parse::<Endpoint>() {
            Ok(address) => Some(address),
            Err(message) => {
                doc.error(&f.path, f.span(), message);
                None
            }
        }
    });
    let vm = t.require(doc, "vm").and_then(|f| {
        let text = f.string(doc)?;
        VmId::new(text)
            .map_err(|e| doc.error(&f.path, f.span(), e.to_string()))
            .ok()
    });
    let poll_interval = or_default(t.get("poll_interval"), Duration::from_secs(1), |f| {
        positive(doc, f)
    });
    t.finish(doc);
    Some(QmpConfig {
        socket: socket?,
        vm: vm?,
        poll_interval: poll_interval?,
    })
}

fn read_libvirt(doc: &mut Doc<'_, '_>, field: &Field<'_, '_>) -> Option<LibvirtConfig> {
    let mut t = Fields::of(doc, field)?;
    let uri = t.require(doc, "uri").and_then(|f| {
        let text = f.non_empty_string(doc)?;
        if text.contains(char::is_whitespace) {
            doc.error(&f.path, f.span(), "a libvirt URI has no spaces (qemu:///system)");
            return None;
        }
        Some(text)
    });
    let virsh = or_default(t.get("virsh"), PathBuf::from("virsh"), |f| {
        f.non_empty_string(doc).map(PathBuf::from)
    });
    t.finish(doc);
    Some(LibvirtConfig {
        uri: uri?,
        virsh: virsh?,
    })
}

/// What was read of each section, for the checks across sections.
struct Parts<'c> {
    control: Option<&'c ControlConfig>,
    listeners: &'c [Option<ListenerConfig>],
    /// `None` when a pool had errors (the VMs they serve are then not all known).
    pools: Option<&'c [PoolConfig]>,
    peers: &'c [Option<PeerConfig>],
    qmp: &'c [Option<QmpConfig>],
    haproxy: &'c [Option<HaproxyConfig>],
    nginx: &'c [Option<NginxConfig>],
    libvirt: &'c [Option<LibvirtConfig>],
    fleet: Option<&'c FleetConfig>,
}

/// Checks across sections: duplicates, a QMP monitor of a VM nothing serves, and what `[fleet]`
/// excludes. Each runs on the elements that were read, whatever errors the others had.
fn cross_check(doc: &mut Doc<'_, '_>, parts: &Parts<'_>) {
    fleet::cross_check(doc, parts.fleet, !parts.peers.is_empty(), parts.pools);
    let mut listener_names = HashSet::new();
    let mut binds: BTreeMap<SocketAddr, &str> = BTreeMap::new();
    for (i, listener) in parts.listeners.iter().enumerate() {
        let Some(listener) = listener else { continue };
        let path = format!("listeners[{i}]");
        if !listener_names.insert(listener.name.as_str()) {
            doc.error(
                &format!("{path}.name"),
                None,
                format!("duplicate listener name {:?}", listener.name),
            );
        }
        if listener.bind.port() != 0
            && let Some(other) = binds.insert(listener.bind, &listener.name)
        {
            doc.error(
                &format!("{path}.bind"),
                None,
                format!("{} is already used by listener {other:?}", listener.bind),
            );
        }
        if let Some(control) = parts.control
            && listener.bind == control.bind
            && listener.bind.port() != 0
        {
            doc.error(
                &format!("{path}.bind"),
                None,
                "is the control API's address (control.bind)",
            );
        }
    }
    if let Some(pools) = parts.pools {
        adaptive::check_one_controller_per_vm(doc, pools);
    }
    let mut watched = HashSet::new();
    for (i, qmp) in parts.qmp.iter().enumerate() {
        let Some(qmp) = qmp else { continue };
        if !watched.insert(&qmp.vm) {
            doc.error(
                &format!("qmp[{i}].vm"),
                None,
                format!("{} already has a QMP monitor", qmp.vm),
            );
        }
    }
    let mut uris = HashSet::new();
    for (i, libvirt) in parts.libvirt.iter().enumerate() {
        let Some(libvirt) = libvirt else { continue };
        if !uris.insert(&libvirt.uri) {
            doc.error(
                &format!("libvirt[{i}].uri"),
                None,
                format!("{} is already watched", libvirt.uri),
            );
        }
    }

    check_qmp_vms_are_served(doc, parts);
    // Balancer names appear in replies and metrics: they must be unique.
    let mut names: HashSet<&str> = HashSet::from(["embedded"]);
    let named = parts
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (format!("peers[{i}].name"), p.name.as_str())))
        .chain(parts.haproxy.iter().enumerate().filter_map(|(i, h)| {
            h.as_ref()
                .map(|h| (format!("haproxy[{i}].name"), h.name.as_str()))
        }))
        .chain(
            parts
                .nginx
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (format!("nginx[{i}].name"), n.name.as_str()))),
        );
    for (path, name) in named {
        if !names.insert(name) {
            doc.error(&path, None, format!("balancer name {name:?} is already used"));
        }
    }
}

/// A QMP monitor's VM must be served by something this node knows of: a pool, a `[[haproxy]]`
/// `vms` entry or an `[[nginx]]` server. With peers (or `server_name_is_vm`) it may be served
/// where this file cannot tell, so nothing is said then; nor when a section had errors.
fn check_qmp_vms_are_served(doc: &mut Doc<'_, '_>, parts: &Parts<'_>) {
    let Some(pools) = parts.pools else { return };
    let (Some(haproxy), Some(nginx)) = (
        parts.haproxy.iter().cloned().collect::<Option<Vec<_>>>(),
        parts.nginx.iter().cloned().collect::<Option<Vec<_>>>(),
    ) else {
        return;
    };
    // Peers and a fleet's other nodes may serve it.
    if !parts.peers.is_empty() || parts.fleet.is_some() || haproxy.iter().any(|h| h.server_name_is_vm) {
        return;
    }
    for (i, qmp) in parts.qmp.iter().enumerate() {
        let Some(qmp) = qmp else { continue };
        let vm = &qmp.vm;
        let served = pools.iter().any(|p| p.backends.iter().any(|b| &b.vm == vm))
            || haproxy.iter().any(|h| h.vms.iter().any(|(_, v)| v == vm))
            || nginx.iter().any(|n| n.servers.iter().any(|s| &s.vm == vm));
        if !served {
            doc.error(
                &format!("qmp[{i}].vm"),
                None,
                format!(
                    "no pool, [[haproxy]] vms entry or [[nginx]] server serves {vm}, and there are no peers: its migrations would reach no balancer"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
