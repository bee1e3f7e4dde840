//! The adaptive keys of a drain policy (`adaptive`, `quiesce` and their tunables), and the rule
//! that a VM has one controller: every pool of a VM that adapts must adapt the same way.

use std::collections::BTreeMap;

use super::reader::{Doc, Fields};
use super::{PoolConfig, positive};
use crate::adaptive::AdaptiveDrain;
use crate::model::VmId;

/// Tunables of the closed loop, which need `adaptive = true`.
const ADAPTIVE_TUNABLES: [&str; 4] = [
    "max_slowdown",
    "give_back_step",
    "give_back_interval",
    "stall_passes",
];
/// Tunables of quiescence, which need `quiesce = true`.
const QUIESCE_TUNABLES: [&str; 2] = ["quiesce_lead", "quiesce_hold"];

/// Reads the adaptive keys of a drain table at `path`.
pub(super) fn read_adaptive(
    doc: &mut Doc<'_, '_>,
    t: &mut Fields<'_, '_>,
    path: &str,
) -> Option<AdaptiveDrain> {
    let defaults = AdaptiveDrain::default();
    let enabled = t.get("adaptive").map_or(Some(false), |f| f.boolean(doc));
    let quiesce = t.get("quiesce").map_or(Some(false), |f| f.boolean(doc));
    let mut ok = true;
    let mut present = Vec::new();
    for key in ADAPTIVE_TUNABLES.iter().chain(QUIESCE_TUNABLES.iter()) {
        if t.has(key) {
            present.push(*key);
        }
    }
    let quiesce_lead = t
        .get("quiesce_lead")
        .map_or(Some(defaults.quiesce_lead), |f| positive(doc, &f));
    let quiesce_hold = t
        .get("quiesce_hold")
        .map_or(Some(defaults.quiesce_hold), |f| f.duration(doc));
    let max_slowdown = t
        .get("max_slowdown")
        .map_or(Some(defaults.max_slowdown), |f| f.number(doc, 0.0, 10.0));
    let give_back_step = t
        .get("give_back_step")
        .map_or(Some(defaults.give_back_step), |f| {
            let step = f.number(doc, 0.0, 1.0)?;
            if step <= 0.0 {
                doc.error(
                    &f.path,
                    f.span(),
                    "must be above zero (0.25 gives a quarter of the target back per step)",
                );
                return None;
            }
            Some(step)
        });
    let give_back_interval = t
        .get("give_back_interval")
        .map_or(Some(defaults.give_back_interval), |f| f.duration(doc));
    let stall_passes = t.get("stall_passes").map_or(Some(defaults.stall_passes), |f| {
        f.integer(doc, 1, 100).map(|v| v as u32)
    });
    let (enabled, quiesce) = (enabled?, quiesce?);
    for key in present {
        let needs = if ADAPTIVE_TUNABLES.contains(&key) {
            (!enabled).then_some("adaptive = true")
        } else {
            (!quiesce).then_some("quiesce = true")
        };
        if let Some(needs) = needs {
            doc.error(
                &format!("{path}.{key}"),
                None,
                format!("{key} is only used with {needs}; set it, or remove {key}"),
            );
            ok = false;
        }
    }
    let adaptive = AdaptiveDrain {
        enabled,
        quiesce,
        quiesce_lead: quiesce_lead?,
        quiesce_hold: quiesce_hold?,
        max_slowdown: max_slowdown?,
        give_back_step: give_back_step?,
        give_back_interval: give_back_interval?,
        stall_passes: stall_passes?,
    };
    ok.then_some(adaptive)
}

/// A VM has one controller: the pools of a VM whose drain adapts or quiesces must agree.
pub(super) fn check_one_controller_per_vm(doc: &mut Doc<'_, '_>, pools: &[PoolConfig]) {
    let mut first: BTreeMap<&VmId, (&str, AdaptiveDrain)> = BTreeMap::new();
    for pool in pools {
        let adaptive = pool.drain.adaptive;
        if !adaptive.is_active() {
            continue;
        }
        for backend in &pool.backends {
            match first.get(&backend.vm) {
                None => {
                    first.insert(&backend.vm, (pool.name.as_str(), adaptive));
                }
                Some((other, settings)) if *other != pool.name && *settings != adaptive => {
                    doc.error(
                        &format!("pools.{}.drain", pool.name),
                        None,
                        format!(
                            "{} is also in pool {other:?}, whose adaptive drain differs: one VM has one controller, \
                             so give both pools the same adaptive, quiesce and tunables",
                            backend.vm
                        ),
                    );
                    return;
                }
                Some(_) => {}
            }
        }
    }
}
