//! Which services leave a triggered node.
//!
//! - Load correlation `rho_i`: the Pearson correlation of the node's load history and the
//!   instance's load history over the last `corr_window` common samples (pairs with a missing
//!   value are dropped; fewer than two pairs or a constant series give `rho = 0`).
//! - Load evaluation index `LE_i = rho_i * sum_r w_r * load_i,r / capacity_n,r` (resources with
//!   no capacity are skipped).
//! - Services are ordered by descending rank (ties by id): `LE_i`, or with `select_by_copy_time`
//!   the load relieved per second of copy, `LE_i / t_copy_i` (`LE_i * t_copy_i` when `LE_i < 0`,
//!   so a slower copy never ranks higher), where `t_copy_i` is the expected copy time to the
//!   service's likely target (given by the caller). The policy takes the **fewest**
//!   services whose shares of the projected load bring every resource to
//!   `u_r <= T_n - margin`; among equally small sets, the one first in rank order. The fewest are
//!   found exactly (combinations by increasing size, bounded by `select_search_budget`); when the
//!   budget runs out, a greedy choice (largest cover of the remaining need first) stands.
//! - When even all eligible services cannot bring the node under, all of those that help leave
//!   (best effort) and the explanation says how far above the target the node stays.

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::load::{u_max_of, NodeLoad};
use super::view::{NodeView, ServiceView};

/// Pearson correlation of the tails of `x` and `y` (aligned at their newest sample) over at most
/// `window` samples (all when 0). Constant, short or empty series give 0.
pub fn pearson(x: &[f64], y: &[f64], window: usize) -> f64 {
    let len = x.len().min(y.len());
    let len = if window == 0 { len } else { len.min(window) };
    let xs = &x[x.len() - len..];
    let ys = &y[y.len() - len..];
    let pairs = || {
        xs.iter()
            .zip(ys)
            .filter(|(a, b)| a.is_finite() && b.is_finite())
    };
    let n = pairs().count();
    if n < 2 {
        return 0.0;
    }
    let mx = pairs().map(|(a, _)| a).sum::<f64>() / n as f64;
    let my = pairs().map(|(_, b)| b).sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in pairs() {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    // relative guard: a series whose spread is rounding noise is constant
    let tiny = |s: f64, m: f64| s <= 1e-24 * (1.0 + m * m) * n as f64;
    if tiny(sxx, mx) || tiny(syy, my) {
        return 0.0;
    }
    let rho = sxy / (sxx.sqrt() * syy.sqrt());
    if rho.is_finite() {
        rho.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// `LE_i = rho_i * sum_r w_r * load_i,r / capacity_n,r`.
pub fn load_evaluation_index(
    rho: f64,
    demand: &[f64],
    capacity: &[f64],
    resources: &[String],
    cfg: &PolicyConfig,
) -> f64 {
    let weighted: f64 = resources
        .iter()
        .enumerate()
        .filter_map(|(r, name)| {
            let cap = capacity
                .get(r)
                .copied()
                .filter(|c| c.is_finite() && *c > 0.0)?;
            let d = demand.get(r).copied().filter(|d| d.is_finite())?.max(0.0);
            Some(cfg.resource_weight(name) * d / cap)
        })
        .sum();
    rho * weighted
}

/// One service of the triggered node as the selection saw it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CandidateWhy {
    pub service: String,
    /// `rho_i`.
    pub rho: f64,
    /// `LE_i`.
    pub le: f64,
    /// Expected copy time to the likely target, seconds (`None`: not weighed).
    #[serde(default)]
    pub copy_s: Option<f64>,
    /// The ranking key: `LE_i`, or `LE_i / t_copy_i` when the copy time is weighed.
    #[serde(default)]
    pub rank: f64,
    /// Share of the node's projected load per resource, absolute units.
    pub share: Vec<f64>,
    /// May leave: not pinned, not already leaving and `rho_i >= min_correlation`.
    pub eligible: bool,
}

/// How the selected set was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectMethod {
    /// The node is already at or under the target: nothing leaves.
    NotNeeded,
    /// The fewest services, proven by exhaustive search.
    Exact,
    /// Greedy cover (the exact search ran out of budget).
    Greedy,
    /// Even all eligible services cannot bring the node under; all that help leave.
    BestEffort,
}

/// The selection for one node and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SelectWhy {
    pub node: String,
    /// `T_n - margin`.
    pub target_util: f64,
    /// Projected `u_max` before any service leaves.
    pub projected_u_max: Option<f64>,
    /// Load that must leave per resource, absolute units (0 where none).
    pub need: Vec<f64>,
    /// Every hosted service, in descending rank order (ties by id).
    pub candidates: Vec<CandidateWhy>,
    /// Services that leave, in leaving order (descending rank).
    pub selected: Vec<String>,
    pub method: SelectMethod,
    /// The node ends at or under `target_util` once the selected services leave.
    pub reaches_target: bool,
    /// Projected `u_max` once the selected services leave.
    pub residual_u_max: Option<f64>,
    /// Filled by `plan`: eligible services that left in place of selected ones that found no
    /// target (`substitute_unplaced`), in rank order.
    #[serde(default)]
    pub substitutes: Vec<String>,
}

/// The ranking key of a service: `LE_i`, or with a known positive copy time `t`, `LE_i / t`
/// (`LE_i * t` for a negative `LE_i`, so that a slower copy never ranks higher).
pub(super) fn relief_rank(le: f64, copy_s: Option<f64>) -> f64 {
    match copy_s.filter(|t| t.is_finite() && *t > 0.0) {
        Some(t) if le >= 0.0 => le / t,
        Some(t) => le * t,
        None => le,
    }
}

/// Chooses the services that leave `node`, whose projected load is `load`, for threshold `T_n`,
/// ranked by `LE_i` (no copy times known).
pub fn select_services(
    node: &NodeView,
    load: &NodeLoad,
    hosted: &[&ServiceView],
    threshold: f64,
    resources: &[String],
    cfg: &PolicyConfig,
) -> SelectWhy {
    select_services_timed(node, load, hosted, threshold, resources, &[], cfg)
}

/// [`select_services`] with `copy_s[i]`, the expected copy time of `hosted[i]` to its likely
/// target, weighed when `select_by_copy_time` is on (a missing entry is not weighed).
pub(super) fn select_services_timed(
    node: &NodeView,
    load: &NodeLoad,
    hosted: &[&ServiceView],
    threshold: f64,
    resources: &[String],
    copy_s: &[Option<f64>],
    cfg: &PolicyConfig,
) -> SelectWhy {
    let target_util = threshold - cfg.select_margin;
    let mut candidates: Vec<CandidateWhy> = hosted
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let rho = pearson(&node.load_history, &s.load_history, cfg.corr_window);
            let le = load_evaluation_index(rho, &s.demand, &load.capacity, resources, cfg);
            let copy_s = copy_s
                .get(i)
                .copied()
                .flatten()
                .filter(|t| cfg.select_by_copy_time && t.is_finite() && *t > 0.0);
            CandidateWhy {
                service: s.id.clone(),
                rho,
                le,
                copy_s,
                rank: relief_rank(le, copy_s),
                share: load.share(s),
                eligible: !s.pinned && !s.leaving && rho >= cfg.min_correlation,
            }
        })
        .collect();
    candidates.sort_by(|a, b| {
        b.rank
            .total_cmp(&a.rank)
            .then_with(|| a.service.cmp(&b.service))
    });

    let need: Vec<f64> = load
        .projected
        .iter()
        .zip(&load.capacity)
        .map(|(p, c)| {
            if *c > 0.0 {
                (p - target_util * c).max(0.0)
            } else {
                0.0
            }
        })
        .collect();
    let tol: Vec<f64> = need.iter().map(|n| 1e-9 * n.max(1.0)).collect();
    let needed: Vec<usize> = (0..need.len()).filter(|r| need[*r] > tol[*r]).collect();

    // services that reduce some needed resource, in rank order
    let helpful: Vec<usize> = (0..candidates.len())
        .filter(|i| {
            let c = &candidates[*i];
            c.eligible
                && needed
                    .iter()
                    .any(|r| c.share.get(*r).copied().unwrap_or(0.0) > 0.0)
        })
        .collect();
    let share = |i: usize, r: usize| candidates[i].share.get(r).copied().unwrap_or(0.0);

    let (chosen, method): (Vec<usize>, SelectMethod) = if needed.is_empty() {
        (Vec::new(), SelectMethod::NotNeeded)
    } else {
        let coverable = needed
            .iter()
            .all(|&r| helpful.iter().map(|&i| share(i, r)).sum::<f64>() >= need[r] - tol[r]);
        if !coverable {
            (helpful.clone(), SelectMethod::BestEffort)
        } else {
            let greedy = greedy_cover(&helpful, &needed, &need, &tol, &share);
            let lower = lower_bound(&helpful, &needed, &need, &tol, &share);
            let mut budget = cfg.select_search_budget;
            let mut found = None;
            for k in lower..=greedy.len() {
                let mut chosen = Vec::with_capacity(k);
                let mut sums = vec![0.0; need.len()];
                let ctx = Search {
                    helpful: &helpful,
                    needed: &needed,
                    need: &need,
                    tol: &tol,
                    share: &share,
                };
                match ctx.combos(k, 0, &mut chosen, &mut sums, &mut budget) {
                    Some(true) => {
                        found = Some(chosen);
                        break;
                    }
                    Some(false) => {}
                    None => break,
                }
            }
            match found {
                Some(set) => (set, SelectMethod::Exact),
                None => (greedy, SelectMethod::Greedy),
            }
        }
    };
    let mut chosen = chosen;
    chosen.sort_unstable(); // indices are in rank order already
    let mut residual = load.projected.clone();
    for &i in &chosen {
        for (r, v) in residual.iter_mut().enumerate() {
            *v -= share(i, r);
        }
    }
    let residual_u_max = u_max_of(&residual, &load.capacity);
    let reaches_target =
        needed.is_empty() || residual_u_max.is_none_or(|u| u <= target_util + 1e-9);
    SelectWhy {
        node: node.id.clone(),
        target_util,
        projected_u_max: load.u_max(),
        need,
        selected: chosen
            .iter()
            .map(|&i| candidates[i].service.clone())
            .collect(),
        candidates,
        method,
        reaches_target,
        residual_u_max,
        substitutes: Vec::new(),
    }
}

/// Repeatedly takes the service covering the largest fraction of the remaining need (ties: rank
/// order) until the need is met.
fn greedy_cover(
    helpful: &[usize],
    needed: &[usize],
    need: &[f64],
    tol: &[f64],
    share: &dyn Fn(usize, usize) -> f64,
) -> Vec<usize> {
    let mut rem = need.to_vec();
    let mut taken = vec![false; helpful.len()];
    let mut out = Vec::new();
    while needed.iter().any(|&r| rem[r] > tol[r]) {
        let mut best: Option<(usize, f64)> = None;
        for (j, &i) in helpful.iter().enumerate() {
            if taken[j] {
                continue;
            }
            let gain: f64 = needed
                .iter()
                .filter(|&&r| rem[r] > tol[r])
                .map(|&r| share(i, r).min(rem[r]) / need[r])
                .sum();
            if gain > 0.0 && best.is_none_or(|(_, g)| gain > g) {
                best = Some((j, gain));
            }
        }
        let Some((j, _)) = best else { break };
        taken[j] = true;
        out.push(helpful[j]);
        for &r in needed {
            rem[r] -= share(helpful[j], r);
        }
    }
    out
}

/// No set smaller than this can cover the need of every resource taken alone.
fn lower_bound(
    helpful: &[usize],
    needed: &[usize],
    need: &[f64],
    tol: &[f64],
    share: &dyn Fn(usize, usize) -> f64,
) -> usize {
    let mut bound = 1;
    for &r in needed {
        let mut s: Vec<f64> = helpful.iter().map(|&i| share(i, r)).collect();
        s.sort_by(|a, b| b.total_cmp(a));
        let mut acc = 0.0;
        let mut k = 0;
        for v in s {
            if acc >= need[r] - tol[r] {
                break;
            }
            acc += v;
            k += 1;
        }
        bound = bound.max(k);
    }
    bound
}

struct Search<'a> {
    helpful: &'a [usize],
    needed: &'a [usize],
    need: &'a [f64],
    tol: &'a [f64],
    share: &'a dyn Fn(usize, usize) -> f64,
}

impl Search<'_> {
    /// Enumerates `k`-subsets of `helpful` in lexicographic (rank) order. `Some(true)`: `chosen`
    /// covers the need; `Some(false)`: no `k`-subset does; `None`: the budget ran out.
    fn combos(
        &self,
        k: usize,
        start: usize,
        chosen: &mut Vec<usize>,
        sums: &mut [f64],
        budget: &mut usize,
    ) -> Option<bool> {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        if chosen.len() == k {
            let ok = self
                .needed
                .iter()
                .all(|&r| sums[r] >= self.need[r] - self.tol[r]);
            return Some(ok);
        }
        let left = k - chosen.len();
        for j in start..=self.helpful.len().saturating_sub(left) {
            if j >= self.helpful.len() {
                break;
            }
            let i = self.helpful[j];
            chosen.push(i);
            for &r in self.needed {
                sums[r] += (self.share)(i, r);
            }
            let res = self.combos(k, j + 1, chosen, sums, budget);
            if res != Some(false) {
                return res;
            }
            chosen.pop();
            for &r in self.needed {
                sums[r] -= (self.share)(i, r);
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_table() {
        let rows: &[(&[f64], &[f64], usize, f64)] = &[
            (&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0], 0, 1.0),
            (&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0], 0, -1.0),
            // x = 1,2,3,4  y = 1,3,2,4: cov 4/4... r = 0.8
            (&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0], 0, 0.8),
            // constant series
            (&[5.0, 5.0, 5.0], &[1.0, 2.0, 3.0], 0, 0.0),
            // too short / empty
            (&[1.0], &[1.0], 0, 0.0),
            (&[], &[], 0, 0.0),
            // aligned at the newest sample: x's first element is dropped
            (&[100.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 0, 1.0),
            // window 3 keeps the last three pairs, which are anti-correlated
            (
                &[1.0, 2.0, 3.0, 2.0, 1.0],
                &[1.0, 2.0, 3.0, 4.0, 5.0],
                3,
                -1.0,
            ),
            // NaN pairs dropped
            (&[1.0, f64::NAN, 2.0, 3.0], &[2.0, 9.0, 4.0, 6.0], 0, 1.0),
        ];
        for (x, y, w, want) in rows {
            let got = pearson(x, y, *w);
            assert!((got - want).abs() < 1e-12, "{x:?} {y:?} w={w}: {got}");
        }
    }

    #[test]
    fn le_table() {
        let cfg = PolicyConfig {
            resource_weights: [("cpu".to_string(), 0.5), ("memory".to_string(), 0.5)].into(),
            ..PolicyConfig::default()
        }; // cpu 0.5, memory 0.5, others 0
        let res = vec!["cpu".to_string(), "memory".to_string(), "disk".to_string()];
        // 0.8 * (0.5*2/4 + 0.5*50/100 + 0*...) = 0.8 * 0.5 = 0.4
        let le = load_evaluation_index(0.8, &[2.0, 50.0, 7.0], &[4.0, 100.0, 10.0], &res, &cfg);
        assert!((le - 0.4).abs() < 1e-12);
        // zero capacity skipped, NaN demand skipped
        let le = load_evaluation_index(1.0, &[2.0, f64::NAN], &[0.0, 100.0], &res, &cfg);
        assert_eq!(le, 0.0);
        // negative correlation gives a negative index
        let le = load_evaluation_index(-0.5, &[4.0, 0.0], &[4.0, 100.0], &res, &cfg);
        assert!((le + 0.25).abs() < 1e-12);
    }

    fn svc(id: &str, cpu: f64, hist: &[f64]) -> ServiceView {
        ServiceView {
            id: id.into(),
            node: "n".into(),
            demand: vec![cpu],
            load_history: hist.to_vec(),
            ..ServiceView::default()
        }
    }

    fn node(util: f64, hist: &[f64]) -> NodeView {
        NodeView {
            id: "n".into(),
            alive: true,
            capacity: vec![10.0],
            util_now: vec![util],
            util_forecast: vec![util],
            load_history: hist.to_vec(),
            ..NodeView::default()
        }
    }

    #[test]
    fn takes_the_fewest_not_the_le_prefix() {
        let cfg = PolicyConfig::default(); // margin 0.05
        let res = vec!["cpu".to_string()];
        let h = [1.0, 2.0, 3.0, 4.0];
        // node at 9/10, T = 0.8 => target 0.75 => 1.5 must leave
        let n = node(0.9, &h);
        // a: perfectly correlated but small (LE 1*0.5*1/10 = 0.05)
        // b: less correlated but big (LE 0.8*0.5*2/10 = 0.08)... make b lower LE than a:
        let a = svc("a", 1.0, &h);
        let b = svc("b", 2.0, &[1.0, 3.0, 2.0, 4.0]); // rho 0.8 => LE 0.08
        let c = svc("c", 1.0, &[1.0, 2.0, 3.0, 5.0]); // rho ~0.98 => LE ~0.049
        let d = svc("d", 5.0, &[4.0, 3.0, 2.0, 1.0]); // rho -1, LE -0.25
        let hosted = [&a, &b, &c, &d];
        let load = NodeLoad::project(&n, &hosted, 1, &cfg);
        let why = select_services(&n, &load, &hosted, 0.8, &res, &cfg);
        let order: Vec<&str> = why.candidates.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(order, vec!["b", "a", "c", "d"]);
        // b alone (2.0 >= 1.5) suffices: one service, though d is bigger it is later in LE order
        assert_eq!(why.selected, vec!["b"]);
        assert_eq!(why.method, SelectMethod::Exact);
        assert!(why.reaches_target);
        assert!((why.residual_u_max.unwrap() - 0.7).abs() < 1e-12);

        // need 3.5: no single service but d; d alone suffices (fewest), not b+a+c
        let n2 = node(1.15, &h);
        let load = NodeLoad::project(&n2, &hosted, 1, &cfg);
        let why = select_services(&n2, &load, &hosted, 0.8, &res, &cfg);
        assert_eq!(why.selected, vec!["d"]);
        assert!((why.need[0] - 4.0).abs() < 1e-9);
    }

    #[test]
    fn equally_small_sets_follow_le_order_and_pinned_stay() {
        let cfg = PolicyConfig::default();
        let res = vec!["cpu".to_string()];
        let h = [1.0, 2.0, 3.0, 4.0];
        let n = node(0.9, &h);
        let a = svc("a", 2.0, &h);
        let mut b = svc("b", 3.0, &h);
        let c = svc("c", 2.0, &h);
        let hosted = [&a, &b, &c];
        let load = NodeLoad::project(&n, &hosted, 1, &cfg);
        let why = select_services(&n, &load, &hosted, 0.8, &res, &cfg);
        assert_eq!(why.selected, vec!["b"]); // highest LE, enough alone
        b.pinned = true;
        let hosted = [&a, &b, &c];
        let why = select_services(&n, &load, &hosted, 0.8, &res, &cfg);
        assert_eq!(why.selected, vec!["a"]); // a before c by id at equal LE
    }

    #[test]
    fn reports_when_it_cannot_bring_the_node_under() {
        let cfg = PolicyConfig::default();
        let res = vec!["cpu".to_string()];
        let h = [1.0, 2.0, 3.0, 4.0];
        // 9.6 of 10 used, services account for 2: the rest is not ours to move
        let n = node(0.96, &h);
        let a = svc("a", 1.0, &h);
        let b = svc("b", 1.0, &h);
        let hosted = [&a, &b];
        let load = NodeLoad::project(&n, &hosted, 1, &cfg);
        let why = select_services(&n, &load, &hosted, 0.8, &res, &cfg);
        assert_eq!(why.method, SelectMethod::BestEffort);
        assert!(!why.reaches_target);
        assert_eq!(why.selected.len(), 2);
        assert!((why.residual_u_max.unwrap() - 0.76).abs() < 1e-12);

        // under the target: nothing leaves
        let n = node(0.5, &h);
        let load = NodeLoad::project(&n, &hosted, 1, &cfg);
        let why = select_services(&n, &load, &hosted, 0.8, &res, &cfg);
        assert_eq!(why.method, SelectMethod::NotNeeded);
        assert!(why.selected.is_empty() && why.reaches_target);
        // no services at all
        let why = select_services(&node(0.99, &[]), &load, &[], 0.8, &res, &cfg);
        assert!(why.selected.is_empty());
    }

    #[test]
    fn copy_time_orders_equally_small_sets() {
        let cfg = PolicyConfig::default();
        let res = vec!["cpu".to_string()];
        let h = [1.0, 2.0, 3.0, 4.0];
        let n = node(0.9, &h);
        // either alone covers the 1.5 that must leave; b relieves more but copies 10x longer
        let a = svc("a", 2.0, &h);
        let b = svc("b", 3.0, &h);
        let hosted = [&a, &b];
        let load = NodeLoad::project(&n, &hosted, 1, &cfg);
        let copy = [Some(5.0), Some(50.0)];
        let why = select_services_timed(&n, &load, &hosted, 0.8, &res, &copy, &cfg);
        assert_eq!(why.selected, vec!["a"]);
        assert_eq!(why.candidates[0].copy_s, Some(5.0));
        assert!((why.candidates[0].rank - why.candidates[0].le / 5.0).abs() < 1e-12);
        // off: LE alone ranks, b first
        let off = PolicyConfig {
            select_by_copy_time: false,
            ..PolicyConfig::default()
        };
        let why = select_services_timed(&n, &load, &hosted, 0.8, &res, &copy, &off);
        assert_eq!(why.selected, vec!["b"]);
        assert_eq!(why.candidates[0].copy_s, None);
        // a negative LE never ranks higher for a slower copy
        assert!(relief_rank(-0.1, Some(10.0)) < relief_rank(-0.1, Some(1.0)));
        assert_eq!(relief_rank(0.3, None), 0.3);
    }

    #[test]
    fn greedy_fallback_when_budget_is_zero() {
        let cfg = PolicyConfig {
            select_search_budget: 0,
            ..PolicyConfig::default()
        };
        let res = vec!["cpu".to_string()];
        let h = [1.0, 2.0, 3.0, 4.0];
        let n = node(0.9, &h);
        let a = svc("a", 1.0, &h);
        let b = svc("b", 2.0, &h);
        let hosted = [&a, &b];
        let load = NodeLoad::project(&n, &hosted, 1, &cfg);
        let why = select_services(&n, &load, &hosted, 0.8, &res, &cfg);
        assert_eq!(why.method, SelectMethod::Greedy);
        assert_eq!(why.selected, vec!["b"]);
    }
}
