//! Request fidelity: a discrete-event simulation in which every connection and request is an
//! event. New connections (L4) or requests (L7) pick a backend with `core`'s own selector, built
//! from the policy's effective weights; backend 0 is the migrating VM. Its requests dirty pages of
//! a Zipf hot set, tracked page by page; the engine syncs the log at each pass. During the blackout
//! the VM serves nothing: requests in service are delayed by the blackout, new ones queue, and a
//! new connection's SYN is lost and sent again after the retransmission timeout. An adaptive
//! policy's controller is stepped every `progress_interval` with the engine's progress, and its
//! probes count the pages of a second log synced every second.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use handover_core::phase::EndReason;
use handover_core::selection::{LoadSource, Selector};

use crate::adaptive::{Adaptor, PROBE_WINDOW};
use crate::memory::DirtyLog;
use crate::policy::{Policy, Timeline};
use crate::precopy::{Engine, Step};
use crate::rng::{Rng, Stream};
use crate::run::{RunResult, Sample, engine_config};
use crate::scenario::Scenario;
use crate::stats::quantile;

/// How often moving weights (linear drain, ramp) are recomputed.
const POLICY_TICK: f64 = 0.1;
/// How often background dirtying is applied.
const BACKGROUND_TICK: f64 = 0.01;
/// How often the timeline is sampled.
const SAMPLE_TICK: f64 = 0.5;
/// The run goes on this long after the migration ends.
const SETTLE: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    ConnectionArrival,
    ConnectionSyn(usize),
    SendRequest(usize),
    ServiceDone { backend: usize, request: usize },
    MigrationNotice,
    MigrationStart,
    ProbeReset,
    ProbeTick,
    AdaptiveStep,
    PassEnd,
    BlackoutEnd,
    PolicyTick,
    BackgroundTick,
    Sample,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    at: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone)]
struct Connection {
    backend: Option<usize>,
    remaining: u64,
    syn_delay: f64,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    connection: usize,
    sent_at: f64,
    shifted: bool,
}

#[derive(Debug, Default)]
struct Backend {
    busy: usize,
    queue: VecDeque<usize>,
    /// Open connections (L4) plus requests in the backend (L7): what least-connections reads.
    active: u64,
    busy_area: f64,
    last_change: f64,
}

impl Backend {
    fn account(&mut self, now: f64) {
        self.busy_area += self.busy as f64 * (now - self.last_change);
        self.last_change = now;
    }
}

struct Loads<'a>(&'a [Backend]);

impl LoadSource for Loads<'_> {
    fn active(&self, index: usize) -> u64 {
        self.0[index].active
    }
    fn latency_ns(&self, _index: usize) -> u64 {
        0
    }
}

/// One run of a scenario point under a policy.
pub fn run(scenario: &Scenario, policy: &Policy, seed: u64) -> RunResult {
    Sim::new(scenario, policy, seed).run()
}

/// Live items by index, reusing the slots of finished ones (connections and requests churn).
struct Slots<T> {
    items: Vec<T>,
    free: Vec<usize>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// Stores `item` in a free slot (or a new one) and returns its index.
    fn insert(&mut self, item: T) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.items[id] = item;
                id
            }
            None => {
                self.items.push(item);
                self.items.len() - 1
            }
        }
    }

    /// The slot may be reused; its item stays readable until then.
    fn release(&mut self, id: usize) {
        self.free.push(id);
    }
}

impl<T> std::ops::Index<usize> for Slots<T> {
    type Output = T;
    fn index(&self, id: usize) -> &T {
        &self.items[id]
    }
}

impl<T> std::ops::IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, id: usize) -> &mut T {
        &mut self.items[id]
    }
}

struct Sim<'a> {
    s: &'a Scenario,
    policy: &'a Policy,
    now: f64,
    seq: u64,
    events: BinaryHeap<Event>,
    arrivals: Rng,
    /// Next line of the arrival trace, when the scenario replays one.
    trace_next: usize,
    sessions: Rng,
    service: Rng,
    pages: Rng,
    background: Rng,
    balancer: Rng,
    backends: Vec<Backend>,
    connections: Slots<Connection>,
    requests: Slots<Request>,
    selector: Selector,
    moving: bool,
    l7: bool,
    timeline: Timeline,
    engine: Option<Engine>,
    blackout: Option<(f64, f64)>,
    dirty: DirtyLog,
    /// The adaptive controller, and the log its probes count (adaptive and quiescing policies).
    adaptor: Option<Adaptor>,
    probe_log: Option<DirtyLog>,
    hot_pages: u64,
    nonzero_pages: u64,
    end_at: f64,
    latencies: Vec<f64>,
    window_latencies: Vec<f64>,
    failed: u64,
    caught: f64,
    lost_syns: f64,
    new_to_vm_in_migration: u64,
    new_in_migration: u64,
    samples: Vec<Sample>,
    new_since_sample: [u64; 2],
    busy_at_sample: Vec<f64>,
}

impl<'a> Sim<'a> {
    fn new(s: &'a Scenario, policy: &'a Policy, seed: u64) -> Self {
        let pages = (s.vm.ram.0 / s.vm.page_size.0) as usize;
        let nonzero_pages = ((s.vm.ram.0 * s.vm.nonzero) / s.vm.page_size.0) as u64;
        let start = s.migration.start.secs();
        let timeline = Timeline::new(start - policy.spec.lead_time.secs(), start);
        let adaptor = Adaptor::new(policy, timeline.notice_at, s.migration.downtime_limit.secs());
        let probe_log = adaptor
            .as_ref()
            .filter(|_| policy.spec.probe)
            .map(|_| DirtyLog::new(pages));
        let count = s.backends.count;
        let (weights, moving) = policy.weights_at(0.0, &timeline, count);
        let mut sim = Self {
            s,
            policy,
            now: 0.0,
            seq: 0,
            events: BinaryHeap::new(),
            arrivals: Rng::new(seed, Stream::Arrivals),
            trace_next: 0,
            sessions: Rng::new(seed, Stream::Sessions),
            service: Rng::new(seed, Stream::Service),
            pages: Rng::new(seed, Stream::Pages),
            background: Rng::new(seed, Stream::Background),
            balancer: Rng::new(seed, Stream::Balancer),
            backends: (0..count).map(|_| Backend::default()).collect(),
            connections: Slots::default(),
            requests: Slots::default(),
            selector: Selector::build(s.backends.algorithm, &weights, 0),
            moving,
            l7: s.traffic.mode == "l7",
            timeline,
            engine: None,
            blackout: None,
            dirty: DirtyLog::new(pages),
            adaptor,
            probe_log,
            hot_pages: (s.vm.hot_set.0 / s.vm.page_size.0).max(1.0) as u64,
            nonzero_pages: nonzero_pages.max(1),
            end_at: s.duration.secs(),
            latencies: Vec::new(),
            window_latencies: Vec::new(),
            failed: 0,
            caught: 0.0,
            lost_syns: 0.0,
            new_to_vm_in_migration: 0,
            new_in_migration: 0,
            samples: Vec::new(),
            new_since_sample: [0, 0],
            busy_at_sample: vec![0.0; count],
        };
        let first = sim.next_arrival();
        sim.schedule(first, Kind::ConnectionArrival);
        sim.schedule(sim.timeline.notice_at.max(0.0), Kind::MigrationNotice);
        sim.schedule(start, Kind::MigrationStart);
        if sim.probe_log.is_some() {
            sim.schedule((start - PROBE_WINDOW).max(0.0), Kind::ProbeReset);
        }
        sim.schedule(POLICY_TICK, Kind::PolicyTick);
        sim.schedule(BACKGROUND_TICK, Kind::BackgroundTick);
        sim.schedule(SAMPLE_TICK, Kind::Sample);
        sim
    }

    fn schedule(&mut self, at: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn next_arrival(&mut self) -> f64 {
        if let Some(arrivals) = &self.s.traffic.trace_arrivals {
            self.trace_next += 1;
            return arrivals
                .get(self.trace_next - 1)
                .copied()
                .unwrap_or(f64::INFINITY);
        }
        if self.s.connection_rate() <= 0.0 {
            return f64::INFINITY;
        }
        self.now + self.arrivals.exponential(1.0 / self.s.connection_rate())
    }

    fn migration_running(&self) -> bool {
        self.engine.is_some() && self.timeline.ended_at.is_none()
    }

    fn in_blackout(&self, backend: usize) -> bool {
        backend == 0 && self.blackout.is_some_and(|(_, until)| self.now < until)
    }

    fn run(mut self) -> RunResult {
        while let Some(event) = self.events.pop() {
            if event.at > self.end_at {
                break;
            }
            self.now = event.at;
            match event.kind {
                Kind::ConnectionArrival => self.connection_arrival(),
                Kind::ConnectionSyn(c) => self.connection_syn(c),
                Kind::SendRequest(c) => self.send_request(c),
                Kind::ServiceDone { backend, request } => self.service_done(backend, request),
                Kind::MigrationNotice => self.rebuild(),
                Kind::MigrationStart => self.migration_start(),
                Kind::ProbeReset => {
                    if let Some(log) = self.probe_log.as_mut() {
                        log.sync();
                    }
                }
                Kind::ProbeTick => self.probe_tick(),
                Kind::AdaptiveStep => self.adaptive_step(),
                Kind::PassEnd => self.pass_end(),
                Kind::BlackoutEnd => self.blackout_end(),
                Kind::PolicyTick => {
                    if self.moving {
                        self.rebuild();
                    }
                    self.schedule(self.now + POLICY_TICK, Kind::PolicyTick);
                }
                Kind::BackgroundTick => self.background_tick(),
                Kind::Sample => self.sample(),
            }
        }
        self.finish()
    }

    fn rebuild(&mut self) {
        let (weights, moving) = self
            .policy
            .weights_at(self.now, &self.timeline, self.backends.len());
        self.selector = Selector::build(self.s.backends.algorithm, &weights, self.selector.cursor());
        self.moving = moving;
    }

    fn pick(&mut self) -> usize {
        let random = self.balancer.next_u64();
        let backend = self.selector.pick(&Loads(&self.backends), random).unwrap_or(0);
        if self.migration_running() {
            self.new_in_migration += 1;
            if backend == 0 {
                self.new_to_vm_in_migration += 1;
            }
        }
        self.new_since_sample[usize::from(backend == 0)] += 1;
        backend
    }

    fn connection_arrival(&mut self) {
        let remaining = self.sessions.geometric(self.s.traffic.requests_per_connection);
        let backend = if self.l7 { None } else { Some(self.pick()) };
        let connection = Connection {
            backend,
            remaining,
            syn_delay: self.s.traffic.syn_retransmit.secs(),
        };
        let id = self.connections.insert(connection);
        self.connection_syn(id);
        let next = self.next_arrival();
        self.schedule(next, Kind::ConnectionArrival);
    }

    fn connection_syn(&mut self, id: usize) {
        if let Some(backend) = self.connections[id].backend
            && self.in_blackout(backend)
        {
            // The SYN is lost in the blackout; the client sends it again after its RTO.
            self.lost_syns += 1.0;
            self.caught += 1.0;
            let delay = self.connections[id].syn_delay;
            self.connections[id].syn_delay *= 2.0;
            self.schedule(self.now + delay, Kind::ConnectionSyn(id));
            return;
        }
        if let Some(backend) = self.connections[id].backend {
            self.backends[backend].active += 1;
        }
        self.send_request(id);
    }

    fn send_request(&mut self, connection: usize) {
        let backend = match self.connections[connection].backend {
            Some(b) => b,
            None => self.pick(),
        };
        let request = Request {
            connection,
            sent_at: self.now,
            shifted: false,
        };
        let id = self.requests.insert(request);
        if self.l7 {
            self.backends[backend].active += 1;
        }
        if self.in_blackout(backend) {
            self.caught += 1.0;
        }
        if self.backends[backend].busy < self.s.backends.workers && !self.in_blackout(backend) {
            self.start_service(backend, id);
        } else {
            self.backends[backend].queue.push_back(id);
        }
    }

    fn start_service(&mut self, backend: usize, request: usize) {
        let mut duration = self
            .service
            .lognormal(self.s.backends.service_time.secs(), self.s.backends.service_cv);
        if backend == 0 {
            if self.migration_running() {
                duration *= self.s.backends.brownout;
            }
            let throttle = self
                .engine
                .as_ref()
                .filter(|_| self.migration_running())
                .map_or(0.0, Engine::throttle);
            duration /= (1.0 - throttle).max(0.01);
            self.dirty_pages();
        }
        let b = &mut self.backends[backend];
        b.account(self.now);
        b.busy += 1;
        self.schedule(self.now + duration, Kind::ServiceDone { backend, request });
    }

    fn dirty_pages(&mut self) {
        let k = self.s.vm.pages_per_request;
        let whole = k.floor() as u64 + u64::from(self.pages.unit() < k.fract());
        for _ in 0..whole {
            let page = self.pages.zipf(self.hot_pages, self.s.vm.zipf);
            self.dirty.mark(page as usize);
            if let Some(log) = self.probe_log.as_mut() {
                log.mark(page as usize);
            }
        }
    }

    fn service_done(&mut self, backend: usize, request: usize) {
        if self.in_blackout(backend) && !self.requests[request].shifted {
            // Caught in service by the blackout: it finishes that much later.
            let (start, until) = self.blackout.expect("in blackout");
            self.requests[request].shifted = true;
            self.schedule(self.now + (until - start), Kind::ServiceDone { backend, request });
            return;
        }
        let r = self.requests[request];
        let latency = self.now - r.sent_at;
        if latency > self.s.traffic.request_timeout.secs() {
            self.failed += 1;
        } else {
            self.latencies.push(latency);
            let window_start = self.timeline.started_at;
            let window_end = self.timeline.ended_at.unwrap_or(f64::INFINITY) + 1.0;
            if r.sent_at >= window_start && r.sent_at <= window_end {
                self.window_latencies.push(latency);
            }
        }
        self.requests.release(request);
        let b = &mut self.backends[backend];
        b.account(self.now);
        b.busy -= 1;
        if self.l7 {
            b.active -= 1;
        }
        if !self.in_blackout(backend)
            && let Some(next) = self.backends[backend].queue.pop_front()
        {
            self.start_service(backend, next);
        }
        let c = r.connection;
        self.connections[c].remaining -= 1;
        if self.connections[c].remaining > 0 {
            let think = self
                .sessions
                .exponential(self.s.traffic.think_time.secs().max(1e-9));
            self.schedule(self.now + think, Kind::SendRequest(c));
        } else {
            if let Some(b) = self.connections[c].backend {
                self.backends[b].active -= 1;
            }
            self.connections.release(c);
        }
    }

    fn migration_start(&mut self) {
        let config = engine_config(self.s);
        let nonzero = self.s.vm.ram.0 * self.s.vm.nonzero;
        let (engine, step) = Engine::start(config, self.now, nonzero);
        let first_pass = engine.outcome.pass_bytes[0];
        self.engine = Some(engine);
        self.dirty.sync();
        if self.adaptor.is_some() {
            let probe = self.take_probe();
            let adaptor = self.adaptor.as_mut().expect("checked");
            let level = adaptor.before_copy(self.now, first_pass, config.bandwidth, probe);
            let next = adaptor.next_at();
            self.timeline.set_level(self.now, level);
            self.schedule(next, Kind::AdaptiveStep);
            if probe.is_some() {
                self.schedule(self.now + PROBE_WINDOW, Kind::ProbeTick);
            }
        }
        self.rebuild();
        self.handle(step);
    }

    /// Bytes/s of distinct pages dirtied since the probe log was last synced (a window ago).
    fn take_probe(&mut self) -> Option<f64> {
        let log = self.probe_log.as_mut()?;
        Some(log.sync() as f64 * self.s.vm.page_size.0 / PROBE_WINDOW)
    }

    fn probe_tick(&mut self) {
        if !self.migration_running() {
            return;
        }
        if let Some(rate) = self.take_probe()
            && let Some(adaptor) = self.adaptor.as_mut()
        {
            adaptor.probed(self.now, rate);
        }
        self.schedule(self.now + PROBE_WINDOW, Kind::ProbeTick);
    }

    fn adaptive_step(&mut self) {
        if !self.migration_running() || self.blackout.is_some() {
            return;
        }
        let Some(engine) = self.engine.as_ref() else {
            return;
        };
        let progress = engine.progress(self.now);
        let adaptor = self.adaptor.as_mut().expect("scheduled only with a controller");
        let level = adaptor.step(self.now, &progress);
        let next = adaptor.next_at();
        if self.timeline.level_at(self.now) != Some(level) {
            self.timeline.set_level(self.now, level);
            self.rebuild();
        }
        self.schedule(next, Kind::AdaptiveStep);
    }

    fn handle(&mut self, step: Step) {
        match step {
            Step::Pass { ends_at } => self.schedule(ends_at, Kind::PassEnd),
            Step::Switchover { downtime } => {
                let until = self.now + downtime;
                self.blackout = Some((self.now, until));
                let vm = &self.backends[0];
                self.caught += (vm.busy + vm.queue.len()) as f64;
                self.schedule(until, Kind::BlackoutEnd);
            }
            Step::Cancelled => {
                self.timeline.ended_at = Some(self.now);
                self.timeline.reason = EndReason::Cancelled;
                self.end_at = self.end_at.max(self.now + SETTLE);
                self.rebuild();
            }
        }
    }

    fn pass_end(&mut self) {
        let dirtied = self.dirty.sync() as f64 * self.s.vm.page_size.0;
        let step = self
            .engine
            .as_mut()
            .expect("migrating")
            .end_of_pass(self.now, dirtied);
        self.handle(step);
    }

    fn blackout_end(&mut self) {
        self.timeline.ended_at = Some(self.now);
        self.timeline.reason = EndReason::Completed;
        self.end_at = self.end_at.max(self.now + SETTLE);
        while self.backends[0].busy < self.s.backends.workers {
            let Some(next) = self.backends[0].queue.pop_front() else {
                break;
            };
            self.start_service(0, next);
        }
        self.rebuild();
    }

    fn background_tick(&mut self) {
        let rate = self.s.vm.background_dirty.0 / self.s.vm.page_size.0;
        let throttle = self
            .engine
            .as_ref()
            .filter(|_| self.migration_running())
            .map_or(0.0, Engine::throttle);
        let expected = rate * BACKGROUND_TICK * (1.0 - throttle);
        let count = expected.floor() as u64 + u64::from(self.background.unit() < expected.fract());
        for _ in 0..count {
            let page = self.background.below(self.nonzero_pages);
            self.dirty.mark(page as usize);
            if let Some(log) = self.probe_log.as_mut() {
                log.mark(page as usize);
            }
        }
        self.schedule(self.now + BACKGROUND_TICK, Kind::BackgroundTick);
    }

    fn sample(&mut self) {
        let total = self.new_since_sample[0] + self.new_since_sample[1];
        let share = if total > 0 {
            self.new_since_sample[1] as f64 / total as f64
        } else {
            f64::NAN
        };
        self.new_since_sample = [0, 0];
        let workers = self.s.backends.workers as f64;
        let mut utilisation = Vec::with_capacity(self.backends.len());
        for (i, b) in self.backends.iter_mut().enumerate() {
            b.account(self.now);
            utilisation.push((b.busy_area - self.busy_at_sample[i]) / (workers * SAMPLE_TICK));
            self.busy_at_sample[i] = b.busy_area;
        }
        let remaining = match (&self.engine, self.timeline.ended_at) {
            (Some(engine), None) => engine.outcome.pass_bytes.last().copied().unwrap_or(0.0),
            _ => 0.0,
        };
        self.samples.push(Sample {
            t: self.now,
            vm_share: share,
            remaining_bytes: remaining,
            utilisation,
        });
        self.schedule(self.now + SAMPLE_TICK, Kind::Sample);
    }

    fn finish(mut self) -> RunResult {
        let share = if self.new_in_migration > 0 {
            self.new_to_vm_in_migration as f64 / self.new_in_migration as f64
        } else {
            f64::NAN
        };
        let outcome = self
            .engine
            .as_ref()
            .map(|e| e.outcome.clone())
            .unwrap_or_default();
        let requests = self.latencies.len() as u64 + self.failed;
        let normal = 1.0 / self.backends.len() as f64;
        let end = self.timeline.ended_at;
        let back_to_full = end.and_then(|end| {
            self.samples
                .iter()
                .filter(|s| s.t > end && s.vm_share.is_finite())
                .find(|s| s.vm_share >= 0.9 * normal)
                .map(|s| s.t - end)
        });
        RunResult {
            migration: outcome,
            requests,
            failed: self.failed,
            caught_in_blackout: self.caught,
            lost_syns: self.lost_syns,
            latency_p50_ms: quantile(&mut self.latencies, 0.5) * 1000.0,
            latency_p99_ms: quantile(&mut self.latencies, 0.99) * 1000.0,
            latency_p999_ms: quantile(&mut self.latencies, 0.999) * 1000.0,
            window_p99_ms: quantile(&mut self.window_latencies, 0.99) * 1000.0,
            window_max_ms: self.window_latencies.iter().copied().fold(f64::NAN, f64::max) * 1000.0,
            vm_share_in_migration: share,
            share_kept: share * self.backends.len() as f64,
            back_to_full_s: back_to_full.unwrap_or(f64::NAN),
            samples: self.samples,
        }
    }
}
