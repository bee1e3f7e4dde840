//! Scenario files: what to simulate (guest, migration, traffic, backends), which policies to
//! compare, and optionally a sweep over any field (`"migration.max_bandwidth" = ["32MiB", "1GiB"]`)
//! and a fleet (host evacuation, maintenance wave). Durations are `"250ms"`, sizes `"4GiB"`, rates
//! `"128MiB"` (per second). Errors name the line and the field.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use handover_core::model::{Algorithm, DrainShape, Keep, RestoreMode};
use serde::{Deserialize, Deserializer};

/// A duration from `"10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Seconds.
    pub fn secs(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        handover_core::time::parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A byte quantity (or a rate per second) from `"4GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bytes(pub f64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) if n >= 0.0 => Ok(Bytes(n)),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "a size cannot be negative ({n})"
            ))),
            Raw::Text(text) => handover_core::units::parse_bytes(&text)
                .map(|b| Bytes(b as f64))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// How detailed the simulation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fidelity {
    /// Every connection and request is an event; latency percentiles are measured.
    Request,
    /// Pass by pass with the load as rates (fast enough for fleets); no latency percentiles.
    Flow,
}

/// The migrating guest's memory and how requests dirty it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmModel {
    /// Guest RAM.
    pub ram: Bytes,
    /// Page (or chunk) size.
    #[serde(default = "default_page")]
    pub page_size: Bytes,
    /// Fraction of RAM that is not zero (zero pages cost almost nothing to send).
    #[serde(default = "half")]
    pub nonzero: f64,
    /// Region requests write to.
    pub hot_set: Bytes,
    /// Zipf exponent of writes over the hot set (0: uniform).
    #[serde(default)]
    pub zipf: f64,
    /// Pages each request dirties.
    #[serde(default = "four")]
    pub pages_per_request: f64,
    /// Dirtying that does not depend on load (kernel, timers), per second, spread over non-zero memory.
    #[serde(default)]
    pub background_dirty: Bytes,
}

/// How the migration runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationModel {
    /// When the migration starts (request fidelity).
    #[serde(default = "ten_seconds")]
    pub start: Dur,
    /// Link speed per second (the switchover copy runs at it).
    #[serde(default = "ten_gbe")]
    pub link: Bytes,
    /// QEMU's max-bandwidth per second.
    #[serde(default = "qemu_max_bandwidth")]
    pub max_bandwidth: Bytes,
    /// QEMU's downtime-limit.
    #[serde(default = "three_hundred_ms")]
    pub downtime_limit: Dur,
    /// Setup time.
    #[serde(default = "ten_ms")]
    pub setup_time: Dur,
    /// Device state and resume time inside the blackout.
    #[serde(default = "ten_ms")]
    pub device_time: Dur,
    /// `qemu` or `xen`.
    #[serde(default = "qemu")]
    pub stop_rule: String,
    /// QEMU auto-converge.
    #[serde(default)]
    pub auto_converge: bool,
    /// Cancel after this long.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Cancel after this long per GiB of RAM (KubeVirt: 150 s).
    #[serde(default)]
    pub timeout_per_gib: Option<Dur>,
}

/// Client traffic to the pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficModel {
    /// `l4` (a backend per connection) or `l7` (a backend per request).
    #[serde(default = "l4")]
    pub mode: String,
    /// New connections per second (Poisson). Give exactly one of `connection_rate`,
    /// `request_rate`, `utilisation` and `trace`.
    #[serde(default)]
    pub connection_rate: Option<f64>,
    /// Requests per second to the pool (connections arrive at this over `requests_per_connection`).
    #[serde(default)]
    pub request_rate: Option<f64>,
    /// Busy share of the pool's workers (0 to 1): the request rate that keeps them this busy.
    #[serde(default)]
    pub utilisation: Option<f64>,
    /// A file of connection arrival times in seconds from the start, one per line, in order
    /// (`#` starts a comment), relative to the scenario file. Request fidelity replays it; flow
    /// fidelity and fleets use its mean rate. No arrivals after its last line.
    #[serde(default)]
    pub trace: Option<String>,
    /// The trace's arrival times, loaded with the scenario.
    #[serde(skip)]
    pub trace_arrivals: Option<Arc<[f64]>>,
    /// Mean requests per connection (geometric).
    #[serde(default = "one")]
    pub requests_per_connection: f64,
    /// Mean pause between two requests of a connection (exponential).
    #[serde(default)]
    pub think_time: Dur,
    /// A request slower than this counts as failed.
    #[serde(default = "five_seconds")]
    pub request_timeout: Dur,
    /// A SYN lost in a blackout is sent again after this (Linux: 1 s).
    #[serde(default = "one_second")]
    pub syn_retransmit: Dur,
}

impl Scenario {
    /// New connections per second, from whichever of the three load fields is given.
    pub fn connection_rate(&self) -> f64 {
        let t = &self.traffic;
        let b = &self.backends;
        if let Some(arrivals) = &t.trace_arrivals {
            let span = arrivals.last().copied().unwrap_or(0.0);
            return if span > 0.0 {
                arrivals.len() as f64 / span
            } else {
                0.0
            };
        }
        match (t.connection_rate, t.request_rate, t.utilisation) {
            (Some(rate), _, _) => rate,
            (None, Some(requests), _) => requests / t.requests_per_connection,
            (None, None, Some(u)) => {
                u * (b.count * b.workers) as f64 / b.service_time.secs().max(1e-9) / t.requests_per_connection
            }
            (None, None, None) => 0.0,
        }
    }
}

/// The pool's backends (one of them is the migrating VM).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendModel {
    /// How many.
    #[serde(default = "four_backends")]
    pub count: usize,
    /// Workers per backend.
    #[serde(default = "eight")]
    pub workers: usize,
    /// Mean service time.
    #[serde(default = "five_ms")]
    pub service_time: Dur,
    /// Coefficient of variation of the service time (log-normal).
    #[serde(default = "one")]
    pub service_cv: f64,
    /// Slowdown of the migrating VM while its memory is copied (dirty tracking).
    #[serde(default = "brownout")]
    pub brownout: f64,
    /// Selection algorithm.
    #[serde(default = "round_robin")]
    pub algorithm: Algorithm,
}

/// A balancing policy to compare.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Name in reports.
    pub name: String,
    /// Whether the balancer is told at all (false: the unaware baseline).
    #[serde(default = "yes")]
    pub aware: bool,
    /// Share of its normal share of new work the VM keeps.
    #[serde(default)]
    pub target: f64,
    /// `step` or `linear`.
    #[serde(default = "step")]
    pub shape: DrainShape,
    /// Window of a linear drain.
    #[serde(default)]
    pub drain_window: Dur,
    /// Ramp window after the migration (0: at once).
    #[serde(default)]
    pub ramp_window: Dur,
    /// Ramp aggression.
    #[serde(default = "one")]
    pub aggression: f64,
    /// Ramp floor in percent.
    #[serde(default = "ten")]
    pub min_percent: f64,
    /// How long before the migration the prepare comes.
    #[serde(default)]
    pub lead_time: Dur,
    /// Restore after a cancelled migration.
    #[serde(default = "ramp")]
    pub restore: RestoreMode,
    /// What existing traffic keeps (always connections in the simulator).
    #[serde(default = "connections")]
    pub keep: Keep,
    /// Adaptive drain: `core`'s controller moves the VM's level between 0 and `target` from the
    /// migration's progress (as the pool key `drain.adaptive`).
    #[serde(default)]
    pub adaptive: bool,
    /// Switchover quiescence: no new work from `quiesce_lead` before the predicted switchover.
    #[serde(default)]
    pub quiesce: bool,
    /// As the pool's `drain.quiesce_lead` (2 s).
    #[serde(default)]
    pub quiesce_lead: Option<Dur>,
    /// As the pool's `drain.max_slowdown` (0.05).
    #[serde(default)]
    pub max_slowdown: Option<f64>,
    /// As the pool's `drain.give_back_step` (0.25).
    #[serde(default)]
    pub give_back_step: Option<f64>,
    /// As the pool's `drain.give_back_interval` (1 s).
    #[serde(default)]
    pub give_back_interval: Option<Dur>,
    /// As the pool's `drain.stall_passes` (2).
    #[serde(default)]
    pub stall_passes: Option<u32>,
    /// How often the controller sees the migration's progress (`handover migrate` polls every
    /// 250 ms, the QMP watcher every `poll_interval`).
    #[serde(default = "quarter_second")]
    pub progress_interval: Dur,
    /// Dirty-rate probes: one over the second before the copy, then one a second (`handover
    /// migrate` and the QMP watcher run `calc-dirty-rate` for adaptive VMs). Without them the
    /// controller learns only from QEMU's per-pass rate.
    #[serde(default = "yes")]
    pub probe: bool,
}

impl PolicySpec {
    /// The adaptive settings of this policy, with the pool defaults for what it does not set.
    pub fn adaptive_drain(&self) -> handover_core::adaptive::AdaptiveDrain {
        let d = handover_core::adaptive::AdaptiveDrain::default();
        handover_core::adaptive::AdaptiveDrain {
            enabled: self.adaptive,
            quiesce: self.quiesce,
            quiesce_lead: self.quiesce_lead.map_or(d.quiesce_lead, |l| l.0),
            quiesce_hold: d.quiesce_hold,
            max_slowdown: self.max_slowdown.unwrap_or(d.max_slowdown),
            give_back_step: self.give_back_step.unwrap_or(d.give_back_step),
            give_back_interval: self.give_back_interval.map_or(d.give_back_interval, |i| i.0),
            stall_passes: self.stall_passes.unwrap_or(d.stall_passes),
        }
    }
}

/// A fleet: hosts evacuated one VM at a time, several hosts at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Hosts in the wave.
    pub hosts: usize,
    /// VMs per host (migrated one after another).
    pub vms_per_host: usize,
    /// Hosts evacuated at the same time.
    #[serde(default = "one_usize")]
    pub parallel_hosts: usize,
    /// RAM varies per VM by this coefficient of variation (log-normal).
    #[serde(default)]
    pub ram_cv: f64,
    /// Load varies per VM by this coefficient of variation (log-normal).
    #[serde(default)]
    pub load_cv: f64,
}

/// A whole scenario (one point; a sweep expands into several).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// `request` or `flow`.
    #[serde(default = "request")]
    pub fidelity: Fidelity,
    /// Simulated time per run (request fidelity); the run also ends 5 s after the migration.
    #[serde(default = "sixty_seconds")]
    pub duration: Dur,
    /// Seeds when the command line gives none.
    #[serde(default = "ten_u64")]
    pub seeds: u64,
    /// The guest.
    pub vm: VmModel,
    /// The migration.
    pub migration: MigrationModel,
    /// The traffic.
    pub traffic: TrafficModel,
    /// The backends.
    #[serde(default = "default_backends")]
    pub backends: BackendModel,
    /// Policies to compare.
    pub policies: Vec<PolicySpec>,
    /// Fields to sweep and their values.
    #[serde(default)]
    pub sweep: BTreeMap<String, Vec<toml::Value>>,
    /// A fleet to evacuate (flow fidelity).
    #[serde(default)]
    pub fleet: Option<FleetSpec>,
}

/// Why a scenario was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not TOML, or a field has the wrong type or value.
    #[error("{0}")]
    Parse(String),
    /// A sweep names a field that does not exist.
    #[error("sweep: {0}")]
    Sweep(String),
    /// Values that parse but make no sense together.
    #[error("{0}")]
    Invalid(String),
}

/// One point of a sweep: the scenario, and the swept values that made it.
#[derive(Debug, Clone)]
pub struct Point {
    /// `field = value` of each swept field.
    pub label: Vec<(String, String)>,
    /// The scenario at this point.
    pub scenario: Scenario,
}

/// Parses a scenario file and expands its sweep into points (one when there is no sweep).
pub fn parse(text: &str) -> Result<Vec<Point>, ScenarioError> {
    parse_in(text, Path::new("."))
}

/// Like [`parse`], for a scenario file in `dir` (a `traffic.trace` path is relative to it).
pub fn parse_in(text: &str, dir: &Path) -> Result<Vec<Point>, ScenarioError> {
    // The file as written first, so that errors carry its own line numbers.
    let base: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
    validate(&base)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ScenarioError::Parse(e.to_string()))?;
    let sweep: BTreeMap<String, Vec<toml::Value>> = match table.get("sweep") {
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ScenarioError::Parse(format!("sweep: {e}")))?,
        None => BTreeMap::new(),
    };
    let mut points: Vec<(Vec<(String, String)>, toml::Table)> = vec![(Vec::new(), table)];
    for (field, values) in &sweep {
        if values.is_empty() {
            return Err(ScenarioError::Sweep(format!("{field}: no values")));
        }
        let mut next = Vec::new();
        for (label, table) in &points {
            for value in values {
                let mut table = table.clone();
                set(&mut table, field, value.clone())?;
                let mut label = label.clone();
                label.push((field.clone(), display(value)));
                next.push((label, table));
            }
        }
        points = next;
    }
    let mut traces: HashMap<String, Arc<[f64]>> = HashMap::new();
    points
        .into_iter()
        .map(|(label, table)| {
            let at = if label.is_empty() {
                String::new()
            } else {
                format!(" (sweep point {label:?})")
            };
            let text = toml::to_string(&table).map_err(|e| ScenarioError::Parse(e.to_string()))?;
            let mut scenario: Scenario =
                toml::from_str(&text).map_err(|e| ScenarioError::Parse(format!("{e}{at}")))?;
            validate(&scenario).map_err(|e| ScenarioError::Invalid(format!("{e}{at}")))?;
            if let Some(trace) = scenario.traffic.trace.clone() {
                let arrivals = match traces.get(&trace) {
                    Some(arrivals) => arrivals.clone(),
                    None => {
                        let loaded = load_trace(&dir.join(&trace))?;
                        traces.insert(trace, loaded.clone());
                        loaded
                    }
                };
                scenario.traffic.trace_arrivals = Some(arrivals);
            }
            Ok(Point { label, scenario })
        })
        .collect()
}

/// Reads a trace of connection arrival times (seconds, one per line, in order; `#` comments).
pub fn load_trace(path: &Path) -> Result<Arc<[f64]>, ScenarioError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScenarioError::Invalid(format!("traffic.trace: cannot read {shown}: {e}")))?;
    let mut arrivals = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at: f64 = line.parse().map_err(|_| {
            ScenarioError::Invalid(format!(
                "traffic.trace: {shown} line {}: {line:?} is not a time in seconds",
                number + 1
            ))
        })?;
        if !at.is_finite() || at < 0.0 || arrivals.last().is_some_and(|last| at < *last) {
            return Err(ScenarioError::Invalid(format!(
                "traffic.trace: {shown} line {}: {line} is negative or earlier than the line before",
                number + 1
            )));
        }
        arrivals.push(at);
    }
    if arrivals.is_empty() {
        return Err(ScenarioError::Invalid(format!(
            "traffic.trace: {shown} has no arrivals"
        )));
    }
    Ok(arrivals.into())
}

fn set(table: &mut toml::Table, field: &str, value: toml::Value) -> Result<(), ScenarioError> {
    // `policies.FIELD` sets the field of every policy.
    if let Some(policy_field) = field.strip_prefix("policies.") {
        let policies = table
            .get_mut("policies")
            .and_then(toml::Value::as_array_mut)
            .ok_or_else(|| ScenarioError::Sweep(format!("{field}: the scenario has no policies")))?;
        for policy in policies.iter_mut().filter_map(toml::Value::as_table_mut) {
            policy.insert(policy_field.to_string(), value.clone());
        }
        return Ok(());
    }
    let mut parts = field.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            if !current.contains_key(part) && !known_optional(field) {
                return Err(ScenarioError::Sweep(format!(
                    "{field}: no such field in the scenario (set it once outside the sweep)"
                )));
            }
            current.insert(part.to_string(), value);
            return Ok(());
        }
        current = current
            .get_mut(part)
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| ScenarioError::Sweep(format!("{field}: no table {part:?}")))?;
    }
    Err(ScenarioError::Sweep(format!("{field}: empty field name")))
}

/// Fields with defaults that a sweep may set without the file naming them.
fn known_optional(field: &str) -> bool {
    matches!(
        field,
        "migration.max_bandwidth"
            | "migration.link"
            | "migration.downtime_limit"
            | "migration.auto_converge"
            | "migration.stop_rule"
            | "vm.background_dirty"
            | "vm.zipf"
            | "vm.pages_per_request"
            | "traffic.requests_per_connection"
            | "traffic.connection_rate"
            | "traffic.request_rate"
            | "traffic.utilisation"
            | "traffic.think_time"
            | "backends.count"
            | "backends.workers"
            | "backends.service_time"
    )
}

fn display(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn validate(s: &Scenario) -> Result<(), ScenarioError> {
    let bad = |m: String| Err(ScenarioError::Invalid(m));
    if s.seeds == 0 {
        return bad("seeds: at least 1".into());
    }
    if s.duration.0.is_zero() {
        return bad("duration: above zero".into());
    }
    if s.vm.page_size.0 < 512.0 {
        return bad("vm.page_size: at least 512 bytes".into());
    }
    if s.vm.ram.0 < s.vm.page_size.0 {
        return bad("vm.ram: smaller than one page".into());
    }
    if !(0.0..=1.0).contains(&s.vm.nonzero) {
        return bad("vm.nonzero: a fraction between 0 and 1".into());
    }
    if s.vm.hot_set.0 > s.vm.ram.0 * s.vm.nonzero {
        return bad("vm.hot_set: larger than the guest's non-zero memory (vm.ram × vm.nonzero)".into());
    }
    if s.vm.ram.0 / s.vm.page_size.0 > 64e6 {
        return bad(
            "vm.page_size: more than 64 million pages; use larger pages (chunks) for large guests".into(),
        );
    }
    if s.migration.max_bandwidth.0 <= 0.0 || s.migration.link.0 <= 0.0 {
        return bad("migration.max_bandwidth and migration.link must be above zero".into());
    }
    if !matches!(s.migration.stop_rule.as_str(), "qemu" | "xen") {
        return bad(format!(
            "migration.stop_rule: {:?} is not qemu or xen",
            s.migration.stop_rule
        ));
    }
    if !matches!(s.traffic.mode.as_str(), "l4" | "l7") {
        return bad(format!("traffic.mode: {:?} is not l4 or l7", s.traffic.mode));
    }
    let given = [
        s.traffic.connection_rate,
        s.traffic.request_rate,
        s.traffic.utilisation,
    ];
    if given.iter().filter(|g| g.is_some()).count() + usize::from(s.traffic.trace.is_some()) != 1 {
        return bad(
            "traffic: give exactly one of connection_rate, request_rate, utilisation and trace".into(),
        );
    }
    if given.iter().flatten().any(|v| *v < 0.0) || s.traffic.requests_per_connection < 1.0 {
        return bad("traffic: rates ≥ 0 and requests_per_connection ≥ 1".into());
    }
    if s.backends.count < 2 || s.backends.workers == 0 {
        return bad("backends: at least 2 backends with at least 1 worker".into());
    }
    if s.policies.is_empty() {
        return bad("policies: at least one".into());
    }
    for p in &s.policies {
        if !(0.0..=1.0).contains(&p.target) {
            return bad(format!("policies.{}.target: between 0 and 1", p.name));
        }
        if p.shape == DrainShape::Linear && p.drain_window.0.is_zero() {
            return bad(format!(
                "policies.{}.drain_window: a linear drain needs a window",
                p.name
            ));
        }
        validate_adaptive(p)?;
    }
    if let Some(fleet) = &s.fleet
        && (fleet.hosts == 0 || fleet.vms_per_host == 0 || fleet.parallel_hosts == 0)
    {
        return bad("fleet: hosts, vms_per_host and parallel_hosts above zero".into());
    }
    Ok(())
}

/// The adaptive keys of a policy: tunables only with their switch, values in range.
fn validate_adaptive(p: &PolicySpec) -> Result<(), ScenarioError> {
    let bad = |field: &str, m: &str| {
        Err(ScenarioError::Invalid(format!(
            "policies.{}.{field}: {m}",
            p.name
        )))
    };
    let adaptive_tunables = [
        ("max_slowdown", p.max_slowdown.is_some()),
        ("give_back_step", p.give_back_step.is_some()),
        ("give_back_interval", p.give_back_interval.is_some()),
        ("stall_passes", p.stall_passes.is_some()),
    ];
    for (field, given) in adaptive_tunables {
        if given && !p.adaptive {
            return bad(field, "only used with adaptive = true");
        }
    }
    if p.quiesce_lead.is_some() && !p.quiesce {
        return bad("quiesce_lead", "only used with quiesce = true");
    }
    if (p.adaptive || p.quiesce) && !p.aware {
        return bad("aware", "an unaware balancer cannot adapt or quiesce");
    }
    if p.max_slowdown.is_some_and(|m| !(0.0..=10.0).contains(&m)) {
        return bad("max_slowdown", "between 0 and 10");
    }
    if p.give_back_step.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
        return bad("give_back_step", "above 0 and at most 1");
    }
    if p.stall_passes == Some(0) {
        return bad("stall_passes", "at least 1");
    }
    if p.quiesce_lead.is_some_and(|l| l.0.is_zero()) {
        return bad("quiesce_lead", "above zero");
    }
    if p.progress_interval.0.is_zero() {
        return bad("progress_interval", "above zero");
    }
    Ok(())
}

fn quarter_second() -> Dur {
    Dur(Duration::from_millis(250))
}

fn default_page() -> Bytes {
    Bytes(4096.0)
}
fn half() -> f64 {
    0.5
}
fn four() -> f64 {
    4.0
}
fn one() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}
fn ten_u64() -> u64 {
    10
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn ten_seconds() -> Dur {
    Dur(Duration::from_secs(10))
}
fn sixty_seconds() -> Dur {
    Dur(Duration::from_secs(60))
}
fn five_seconds() -> Dur {
    Dur(Duration::from_secs(5))
}
fn one_second() -> Dur {
    Dur(Duration::from_secs(1))
}
fn three_hundred_ms() -> Dur {
    Dur(Duration::from_millis(300))
}
fn ten_ms() -> Dur {
    Dur(Duration::from_millis(10))
}
fn five_ms() -> Dur {
    Dur(Duration::from_millis(5))
}
fn ten_gbe() -> Bytes {
    Bytes(1.25e9)
}
fn qemu_max_bandwidth() -> Bytes {
    Bytes(128.0 * 1024.0 * 1024.0)
}
fn qemu() -> String {
    "qemu".into()
}
fn l4() -> String {
    "l4".into()
}
fn request() -> Fidelity {
    Fidelity::Request
}
fn four_backends() -> usize {
    4
}
fn eight() -> usize {
    8
}
fn brownout() -> f64 {
    1.1
}
fn round_robin() -> Algorithm {
    Algorithm::RoundRobin
}
fn step() -> DrainShape {
    DrainShape::Step
}
fn ramp() -> RestoreMode {
    RestoreMode::Ramp
}
fn connections() -> Keep {
    Keep::Connections
}
fn default_backends() -> BackendModel {
    toml::from_str("").expect("every backend field has a default")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
[vm]
ram = "1GiB"
hot_set = "64MiB"
[migration]
max_bandwidth = "128MiB"
[traffic]
connection_rate = 100
[[policies]]
name = "unaware"
aware = false
[[policies]]
name = "drain"
"#;

    #[test]
    fn a_scenario_parses_with_defaults() {
        let points = parse(BASE).unwrap();
        assert_eq!(points.len(), 1);
        let s = &points[0].scenario;
        assert_eq!(s.vm.ram.0, 1024.0 * 1024.0 * 1024.0);
        assert_eq!(s.backends.count, 4);
        assert_eq!(s.migration.downtime_limit.0, Duration::from_millis(300));
        assert_eq!(s.policies.len(), 2);
    }

    #[test]
    fn a_sweep_expands_into_points() {
        let text = format!(
            "{BASE}\n[sweep]\n\"migration.max_bandwidth\" = [\"32MiB\", \"1GiB\"]\n\"traffic.connection_rate\" = [10, 20, 30]\n"
        );
        let points = parse(&text).unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(
            points[5].label,
            vec![
                ("migration.max_bandwidth".into(), "1GiB".into()),
                ("traffic.connection_rate".into(), "30".into())
            ]
        );
        assert_eq!(points[5].scenario.connection_rate(), 30.0);
    }

    #[test]
    fn load_can_be_a_utilisation() {
        let text = BASE.replace(
            "connection_rate = 100",
            "utilisation = 0.5\nrequests_per_connection = 2",
        );
        let s = &parse(&text).unwrap()[0].scenario;
        // 0.5 × 4 backends × 8 workers / 5 ms = 3200 requests/s, over 2 requests per connection.
        assert!((s.connection_rate() - 1600.0).abs() < 1e-6);
        let both = BASE.replace("connection_rate = 100", "connection_rate = 100\nrequest_rate = 5");
        assert!(parse(&both).unwrap_err().to_string().contains("exactly one"));
    }

    #[test]
    fn a_policy_field_sweeps_every_policy() {
        let text = format!("{BASE}\n[sweep]\n\"policies.lead_time\" = [\"0s\", \"5s\"]\n");
        let points = parse(&text).unwrap();
        assert!(
            points[1]
                .scenario
                .policies
                .iter()
                .all(|p| p.lead_time.0 == Duration::from_secs(5))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(&BASE.replace("ram = \"1GiB\"", "ram = \"lots\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lots") && e.contains("line"), "{e}");
        let e = parse(&BASE.replace("connection_rate = 100", "connection_rate = 100\nburst = 3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `burst`"), "{e}");
        // The line is the file's own, not that of a re-serialised copy.
        let line = BASE
            .lines()
            .position(|l| l.starts_with("connection_rate"))
            .unwrap()
            + 2;
        assert!(e.contains(&format!("line {line}")), "{e}");
        let e = parse(&format!("{BASE}\n[sweep]\n\"vm.nothing\" = [1]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.nothing"), "{e}");
        let e = parse(&BASE.replace("hot_set = \"64MiB\"", "hot_set = \"2GiB\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.hot_set"), "{e}");
    }
}
