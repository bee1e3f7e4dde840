//! Adaptive drain and switchover quiescence: a closed loop from how a migration is going to how
//! much new work its VM gets, beside [`crate::drain`] and [`crate::ramp`] so that the proxy, the
//! drivers and the simulator all run the same code.
//!
//! A drain with `adaptive = true` starts at the pool's `target`. The [`Controller`] reads the
//! migration's progress (copy bandwidth, what remains of the current pass, QEMU's dirty rate per
//! pass, dirty-rate probes) and chooses a [`Level`]: the fraction of each pool's target the VM keeps,
//! from 1 (the target) down to 0 (a full drain). The level travels in the drain command, so every
//! balancer — embedded, HAProxy, nginx, peers — applies the same one. With `quiesce = true` the
//! level drops to 0 a lead before the predicted switchover, so that the blackout finds nothing in
//! flight.
//!
//! Not here: the clock, the sockets, and holding QEMU's switchover (`handover migrate` does that).

mod controller;
mod forecast;
mod level;
mod policy;

pub use controller::{Controller, Decision, Probe, Reason, Sample};
pub use forecast::{CopyState, DirtyModel, allowed_level, switchover_in};
pub use level::Level;
pub use policy::AdaptiveDrain;

#[cfg(test)]
mod tests;
