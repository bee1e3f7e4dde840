//! The pre-copy live-migration engine, pass by pass, as QEMU (and Xen's legacy code) run it.
//!
//! Pass 0 sends every non-zero page (a zero page costs a 9-byte header). Each later pass sends the
//! pages dirtied during the previous one (the dirty log is synced at the start of a pass). After a
//! sync, QEMU switches over when what remains fits in `bandwidth × downtime_limit`: the VM stops,
//! the rest goes at link speed with no rate limit, and the blackout is that copy plus the device
//! state time. QEMU has no pass limit; Xen stops after 30 iterations, below 50 pages, or beyond 3×
//! memory sent. Auto-converge throttles the guest 20 %, then +10 % steps up to 99 %, when the
//! bytes dirtied in a period of more than 1 s exceed half the bytes sent, twice. A management
//! timeout cancels the migration.
//!
//! The engine is pure: the caller says when a pass ends and how many bytes were dirtied meanwhile.
//! It reports its progress as `query-migrate` does (what remains of the current pass, syncs, the
//! dirty rate QEMU recomputes once a period of a second or more ended), for the adaptive drain.

/// Bytes a zero page costs on the wire.
pub const ZERO_PAGE_BYTES: f64 = 9.0;

/// When pre-copy stops iterating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopRule {
    /// QEMU: when the rest fits in `bandwidth × downtime_limit`; no iteration limit.
    Qemu,
    /// Xen's legacy `xc_domain_save`.
    Xen {
        /// Last iteration number (29: 30 rounds).
        max_iters: u32,
        /// Stop once this many times memory was sent.
        max_factor: f64,
        /// Stop when a pass has fewer pages than this.
        min_pages: u64,
    },
}

/// QEMU's auto-converge parameters, in percent as QEMU keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoConverge {
    /// First throttle (`cpu-throttle-initial`, 20).
    pub initial: u32,
    /// Step (`cpu-throttle-increment`, 10).
    pub increment: u32,
    /// Ceiling (`max-cpu-throttle`, 99).
    pub max: u32,
    /// Dirty bytes above this percentage of sent bytes count as high (`throttle-trigger-threshold`, 50).
    pub threshold: u32,
}

impl Default for AutoConverge {
    fn default() -> Self {
        Self {
            initial: 20,
            increment: 10,
            max: 99,
            threshold: 50,
        }
    }
}

/// Migration settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Copy bandwidth during passes, bytes/s (`min(link, max-bandwidth)`).
    pub bandwidth: f64,
    /// Link speed for the final copy (no rate limit), bytes/s.
    pub link: f64,
    /// Planned downtime limit, seconds.
    pub downtime_limit: f64,
    /// Setup time before pass 0, seconds.
    pub setup: f64,
    /// Device state and resume time in the blackout, seconds.
    pub device: f64,
    /// Stop rule.
    pub rule: StopRule,
    /// Auto-converge, if on.
    pub auto_converge: Option<AutoConverge>,
    /// Cancel after this many seconds, if set.
    pub timeout: Option<f64>,
    /// Page size, bytes.
    pub page_size: f64,
    /// Guest memory, bytes.
    pub ram: f64,
}

/// What happens next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Another pass, ending at this time.
    Pass {
        /// When it ends.
        ends_at: f64,
    },
    /// The VM stops now for `downtime` seconds; the migration completes after it.
    Switchover {
        /// Blackout length.
        downtime: f64,
    },
    /// The migration is cancelled (timeout); the VM stays.
    Cancelled,
}

/// How a migration went, in the names of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// Whether it completed.
    pub converged: bool,
    /// Passes (dirty-bitmap syncs) before the switchover.
    pub passes: u32,
    /// Bytes sent in all.
    pub bytes_sent: f64,
    /// From start to completion (or cancel), seconds.
    pub total_time: f64,
    /// Blackout, seconds (0 if cancelled).
    pub downtime: f64,
    /// Highest auto-converge throttle reached.
    pub max_throttle: f64,
    /// Throttle after each increase: (time, throttle).
    pub throttle_steps: Vec<(f64, f64)>,
    /// Bytes of each pass.
    pub pass_bytes: Vec<f64>,
}

/// A migration in progress.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    started: f64,
    pass_bytes: f64,
    throttle_percent: u32,
    period_start: f64,
    period_sent: f64,
    period_dirty: f64,
    high_periods: u32,
    /// When the current pass began sending.
    pass_started: f64,
    /// Bytes dirtied (found at syncs) since QEMU last computed its dirty rate, and when that was.
    rate_dirtied: f64,
    rate_at: f64,
    /// QEMU's `dirty-pages-rate` in bytes/s (0 until a period of a second ended).
    dirty_rate: f64,
    /// The result so far.
    pub outcome: Outcome,
}

/// The engine's state as `query-migrate` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The copy runs (false during setup).
    pub active: bool,
    /// Bytes still to send in the current pass.
    pub remaining: f64,
    /// Dirty-bitmap syncs (`dirty-sync-count`: 1 during the first pass).
    pub syncs: u64,
    /// QEMU's dirty rate, bytes/s.
    pub dirty_rate: f64,
    /// Copy bandwidth, bytes/s.
    pub bandwidth: f64,
}

impl Engine {
    /// Starts a migration at `now` of a guest whose non-zero memory is `nonzero` bytes.
    pub fn start(config: EngineConfig, now: f64, nonzero: f64) -> (Engine, Step) {
        let zero_pages = ((config.ram - nonzero) / config.page_size).max(0.0);
        let first = nonzero + zero_pages * ZERO_PAGE_BYTES;
        let engine = Engine {
            config,
            started: now,
            pass_bytes: first,
            throttle_percent: 0,
            period_start: now + config.setup,
            period_sent: 0.0,
            period_dirty: 0.0,
            high_periods: 0,
            pass_started: now + config.setup,
            rate_dirtied: 0.0,
            rate_at: now + config.setup,
            dirty_rate: 0.0,
            outcome: Outcome {
                pass_bytes: vec![first],
                ..Outcome::default()
            },
        };
        let ends_at = now + config.setup + first / config.bandwidth;
        (engine, Step::Pass { ends_at })
    }

    /// The guest CPU throttle now (0 to 0.99).
    pub fn throttle(&self) -> f64 {
        f64::from(self.throttle_percent) / 100.0
    }

    /// When the migration started.
    pub fn started(&self) -> f64 {
        self.started
    }

    /// What `query-migrate` would show at `now` (while the migration runs).
    pub fn progress(&self, now: f64) -> Progress {
        let c = self.config;
        Progress {
            active: now >= self.pass_started,
            remaining: (self.pass_bytes - (now - self.pass_started).max(0.0) * c.bandwidth).max(0.0),
            syncs: u64::from(self.outcome.passes) + 1,
            dirty_rate: self.dirty_rate,
            bandwidth: c.bandwidth,
        }
    }

    /// A pass ended at `now`; `dirtied` bytes were dirtied during it. Syncs and decides.
    pub fn end_of_pass(&mut self, now: f64, dirtied: f64) -> Step {
        let c = self.config;
        let sent_this = self.pass_bytes;
        self.outcome.bytes_sent += sent_this;
        self.outcome.passes += 1;
        self.period_sent += sent_this;
        self.period_dirty += dirtied;
        self.rate_dirtied += dirtied;
        if now - self.rate_at >= 1.0 {
            self.dirty_rate = self.rate_dirtied / (now - self.rate_at);
            self.rate_dirtied = 0.0;
            self.rate_at = now;
        }

        if let Some(ac) = c.auto_converge
            && now - self.period_start > 1.0
        {
            if self.period_dirty > self.period_sent * f64::from(ac.threshold) / 100.0 {
                self.high_periods += 1;
                if self.high_periods >= 2 {
                    self.high_periods = 0;
                    self.throttle_percent = if self.throttle_percent == 0 {
                        ac.initial
                    } else {
                        (self.throttle_percent + ac.increment).min(ac.max)
                    };
                    let throttle = self.throttle();
                    self.outcome.throttle_steps.push((now, throttle));
                    self.outcome.max_throttle = self.outcome.max_throttle.max(throttle);
                }
            }
            self.period_start = now;
            self.period_sent = 0.0;
            self.period_dirty = 0.0;
        }

        if c.timeout.is_some_and(|t| now - self.started >= t) {
            self.outcome.total_time = now - self.started;
            return Step::Cancelled;
        }

        let remaining = dirtied;
        let stop = match c.rule {
            StopRule::Qemu => remaining <= c.bandwidth * c.downtime_limit,
            StopRule::Xen {
                max_iters,
                max_factor,
                min_pages,
            } => {
                self.outcome.passes > max_iters
                    || remaining / c.page_size < min_pages as f64
                    || self.outcome.bytes_sent >= max_factor * c.ram
            }
        };
        if stop {
            let downtime = remaining / c.link + c.device;
            self.outcome.bytes_sent += remaining;
            self.outcome.downtime = downtime;
            self.outcome.converged = true;
            self.outcome.total_time = now + downtime - self.started;
            return Step::Switchover { downtime };
        }
        self.pass_bytes = remaining;
        self.pass_started = now;
        self.outcome.pass_bytes.push(remaining);
        Step::Pass {
            ends_at: now + remaining / c.bandwidth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;

    fn config(bandwidth: f64, rule: StopRule) -> EngineConfig {
        EngineConfig {
            bandwidth,
            link: bandwidth,
            downtime_limit: 0.3,
            setup: 0.0,
            device: 0.0,
            rule,
            auto_converge: None,
            timeout: None,
            page_size: 4096.0,
            ram: 8.0 * GIB,
        }
    }

    /// Runs with a constant rate of fresh dirty pages.
    fn run(mut engine: Engine, mut step: Step, rate: f64, mut now: f64) -> Outcome {
        for _ in 0..100_000 {
            match step {
                Step::Pass { ends_at } => {
                    let dirtied = (rate * (1.0 - engine.throttle()) * (ends_at - now)).min(engine.config.ram);
                    now = ends_at;
                    step = engine.end_of_pass(now, dirtied);
                }
                _ => return engine.outcome,
            }
        }
        engine.outcome
    }

    #[test]
    fn an_idle_guest_takes_one_pass_plus_a_tiny_switchover() {
        let c = config(100.0 * MIB, StopRule::Qemu);
        let (engine, step) = Engine::start(c, 0.0, 8.0 * GIB);
        let o = run(engine, step, 0.0, 0.0);
        assert!(o.converged);
        assert_eq!(o.passes, 1);
        assert!((o.total_time - 8.0 * GIB / (100.0 * MIB)).abs() < 1e-9);
    }

    #[test]
    fn xen_stops_after_thirty_rounds_or_three_times_memory() {
        // λ > 1: the dirty set never shrinks.
        let mut c = config(
            50.0 * MIB,
            StopRule::Xen {
                max_iters: 29,
                max_factor: 3.0,
                min_pages: 50,
            },
        );
        c.ram = 64.0 * MIB;
        let (engine, step) = Engine::start(c, 0.0, 64.0 * MIB);
        let o = run(engine, step, 500.0 * MIB, 0.0);
        assert!(o.bytes_sent >= 3.0 * c.ram, "stopped by the 3× rule: {o:?}");
        assert!(o.passes <= 30);
        // A guest whose passes shrink slowly stops at 30 rounds.
        let mut c = config(
            100.0 * MIB,
            StopRule::Xen {
                max_iters: 29,
                max_factor: 1e9,
                min_pages: 0,
            },
        );
        c.ram = 64.0 * MIB;
        let (engine, step) = Engine::start(c, 0.0, 64.0 * MIB);
        let o = run(engine, step, 99.0 * MIB, 0.0);
        assert_eq!(o.passes, 30, "{o:?}");
    }

    #[test]
    fn auto_converge_throttles_20_30_40_after_two_high_periods_each() {
        let mut c = config(10.0 * MIB, StopRule::Qemu);
        c.ram = 2.0 * GIB;
        c.auto_converge = Some(AutoConverge::default());
        c.timeout = Some(120.0);
        let (mut engine, _) = Engine::start(c, 0.0, 10.0 * MIB);
        // Passes of 1.5 s each, dirtying more than half of what they send.
        let mut now = 0.0;
        let mut throttles = Vec::new();
        for _ in 0..8 {
            now += 1.5;
            engine.end_of_pass(now, 12.0 * MIB);
            throttles.push(engine.throttle());
        }
        assert_eq!(throttles, vec![0.0, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5]);
        // Periods shorter than 1 s are not checked.
        let (mut quick, _) = Engine::start(c, 0.0, 10.0 * MIB);
        for i in 1..=8 {
            quick.end_of_pass(i as f64 * 0.3, 12.0 * MIB);
        }
        assert!(quick.throttle() <= 0.2);
    }

    #[test]
    fn a_timeout_cancels() {
        let mut c = config(10.0 * MIB, StopRule::Qemu);
        c.ram = 1.0 * GIB;
        c.timeout = Some(60.0);
        let (engine, step) = Engine::start(c, 0.0, 1.0 * GIB);
        let o = run(engine, step, 50.0 * MIB, 0.0);
        assert!(!o.converged);
        assert!(o.total_time >= 60.0);
    }
}
