//! A lower bound of the overload-seconds no placement can avoid, from the scenario alone.
//!
//! At step `t`, let `D_r(t)` be the demand of every service for resource `r` (CPU, memory) and
//! `C_r(t)` the summed capacity of the nodes alive at `t`. If `D_r(t) > C_r(t)` for some `r`,
//! at least one live node is over capacity whatever the placement: the step counts one
//! node-second. Otherwise it counts nothing, because one node taking whatever the others
//! cannot hold is enough (the fractional relaxation of bin packing, where one over-full node
//! absorbs any excess; with services as small as these, the integral bound is the same).
//!
//! Every service counts, so the bound holds for every policy that leaves no service down (a
//! policy that keeps services down, like no action, carries less load and can fall below
//! it). Which services a failure takes down depends on the policy, so the steps right after a
//! failure, until the slowest of the fastest possible restarts (state copied inside a site,
//! image already there, start time) could be done, count nothing.
//!
//! The bound ignores migration times, so it is optimistic: an actual policy must also start
//! its moves early enough, and a move's load stays on its source until its copy ends.

use super::scenario::Scenario;

/// Per step, whether the cluster's demand exceeds its live capacity (one node-second of
/// overload that no placement avoids).
pub fn unavoidable_steps(sc: &Scenario) -> Vec<bool> {
    let nodes = sc.nodes.len();
    let mut dead_from = vec![usize::MAX; nodes];
    for f in &sc.failures {
        if f.node < nodes {
            dead_from[f.node] = dead_from[f.node].min(f.step);
        }
    }
    // Which services a failure takes down depends on the policy, so right after a failure,
    // for as long as the slowest of the fastest restarts (state copied inside a site, image
    // already there, start time), no step counts.
    let b = sc.network.intra_site_bytes_per_second;
    let restart = sc
        .failures
        .iter()
        .flat_map(|f| (0..sc.services.len()).map(move |s| sc.demand(s, f.step).mem))
        .map(|mem| mem / b + sc.network.start_seconds)
        .fold(0.0, f64::max);
    let blind = ((restart / sc.step_seconds).ceil() as usize).max(1);
    (0..sc.steps)
        .map(|t| {
            if sc
                .failures
                .iter()
                .any(|f| t >= f.step && t < f.step + blind)
            {
                return false;
            }
            let (mut cap_cpu, mut cap_mem) = (0.0, 0.0);
            for (n, spec) in sc.nodes.iter().enumerate() {
                if t < dead_from[n] {
                    cap_cpu += spec.cpu_cores;
                    cap_mem += spec.mem_bytes;
                }
            }
            let (mut cpu, mut mem) = (0.0, 0.0);
            for s in 0..sc.services.len() {
                let d = sc.demand(s, t);
                cpu += d.cpu;
                mem += d.mem;
            }
            cpu > cap_cpu + 1e-9 || mem > cap_mem + 1e-9
        })
        .collect()
}

/// The bound in node-seconds.
pub fn unavoidable_overload_seconds(sc: &Scenario) -> f64 {
    unavoidable_steps(sc).iter().filter(|u| **u).count() as f64 * sc.step_seconds
}
