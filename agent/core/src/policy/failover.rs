//! Failover plan for the services of dead or fenced nodes.
//!
//! Each service's last known demand is spread over the survivors so that no survivor's
//! projected load plus what it receives exceeds `capacity * (1 - headroom)` on any resource (no
//! domino effect from one node taking everything):
//!
//! 1. **Best-fit decreasing**: services by decreasing size (`max_r demand_r / total usable
//!    capacity_r`, ties by id), each onto the feasible survivor left with the least room
//!    (`sum_r slack_r / capacity_r` after placing; ties by node id).
//! 2. BFD can leave a service unplaced although an assignment placing it exists (bin packing).
//!    When it does and the instance has at most `failover_exact_max_services` services, an
//!    **exact search** (depth-first over assignments, pruned by the best count so far, bounded
//!    by `failover_exact_budget` search nodes) places the most services possible; it keeps BFD's
//!    answer unless it places more. Larger instances keep BFD's answer.
//!
//! Survivors are chosen by the caller; this module never sees dead or fenced nodes.

use serde::{Deserialize, Serialize};

/// A service to restart elsewhere.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FailoverItem {
    pub service: String,
    /// The node it ran on.
    pub from: String,
    /// Demand per resource, absolute units.
    pub demand: Vec<f64>,
}

/// A survivor and its projected load.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Bin {
    pub node: String,
    pub capacity: Vec<f64>,
    pub load: Vec<f64>,
}

/// One restart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FailoverPlacement {
    pub service: String,
    pub from: String,
    pub to: String,
    pub demand: Vec<f64>,
    /// `sum_r slack_r / capacity_r` left on the target after this placement.
    pub room_after: f64,
}

/// How the plan was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMethod {
    /// Nothing to place.
    Empty,
    /// Best-fit decreasing placed everything, or the instance is too large for the exact search.
    BestFitDecreasing,
    /// The exact search ran to completion: no plan places more services.
    Exact,
    /// The exact search ran out of budget; the best found is kept.
    ExactBudgetExhausted,
}

/// The failover plan.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FailoverPlan {
    pub placements: Vec<FailoverPlacement>,
    /// Services no survivor can take.
    pub unplaced: Vec<FailoverItem>,
    pub method: FailoverMethod,
    /// Search nodes the exact search visited.
    pub search_nodes: usize,
}

fn usable_cap(cap: f64, headroom: f64) -> f64 {
    cap * (1.0 - headroom)
}

fn fits(bin: &Bin, load: &[f64], demand: &[f64], headroom: f64) -> bool {
    demand.iter().enumerate().all(|(r, d)| {
        let d = if d.is_finite() { d.max(0.0) } else { 0.0 };
        if d <= 0.0 {
            return true;
        }
        let cap = bin.capacity.get(r).copied().unwrap_or(0.0);
        let l = load.get(r).copied().unwrap_or(0.0);
        cap > 0.0 && l + d <= usable_cap(cap, headroom) + 1e-9 * cap.max(1.0)
    })
}

fn room_after(bin: &Bin, load: &[f64], demand: &[f64], headroom: f64) -> f64 {
    bin.capacity
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0.0)
        .map(|(r, c)| {
            let d = demand
                .get(r)
                .copied()
                .filter(|d| d.is_finite())
                .unwrap_or(0.0)
                .max(0.0);
            (usable_cap(*c, headroom) - load.get(r).copied().unwrap_or(0.0) - d) / c
        })
        .sum()
}

fn add(load: &mut [f64], demand: &[f64], sign: f64) {
    for (r, l) in load.iter_mut().enumerate() {
        let d = demand
            .get(r)
            .copied()
            .filter(|d| d.is_finite())
            .unwrap_or(0.0)
            .max(0.0);
        *l += sign * d;
    }
}

/// Plans the restarts of `items` onto `bins` (survivors, in any order; ties go by node id).
pub fn failover_plan(
    items: &[FailoverItem],
    bins: &[Bin],
    headroom: f64,
    exact_max_services: usize,
    exact_budget: usize,
) -> FailoverPlan {
    if items.is_empty() {
        return FailoverPlan {
            placements: Vec::new(),
            unplaced: Vec::new(),
            method: FailoverMethod::Empty,
            search_nodes: 0,
        };
    }
    let mut bins: Vec<Bin> = bins.to_vec();
    bins.sort_by(|a, b| a.node.cmp(&b.node));
    for b in &mut bins {
        let n = b.capacity.len().max(b.load.len());
        b.capacity.resize(n, 0.0);
        b.load.resize(n, 0.0);
        for c in &mut b.capacity {
            *c = if c.is_finite() { c.max(0.0) } else { 0.0 };
        }
        for l in &mut b.load {
            *l = if l.is_finite() { l.max(0.0) } else { 0.0 };
        }
    }
    let resources = bins.iter().map(|b| b.capacity.len()).max().unwrap_or(0);
    let total: Vec<f64> = (0..resources)
        .map(|r| {
            bins.iter()
                .map(|b| usable_cap(b.capacity[r], headroom))
                .sum()
        })
        .collect();
    let size = |it: &FailoverItem| -> f64 {
        it.demand
            .iter()
            .enumerate()
            .map(|(r, d)| {
                let d = if d.is_finite() { d.max(0.0) } else { 0.0 };
                match total.get(r) {
                    Some(t) if *t > 0.0 => d / t,
                    _ if d > 0.0 => f64::INFINITY,
                    _ => 0.0,
                }
            })
            .fold(0.0, f64::max)
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        size(&items[b])
            .total_cmp(&size(&items[a]))
            .then_with(|| items[a].service.cmp(&items[b].service))
    });

    // 1. best-fit decreasing
    let mut loads: Vec<Vec<f64>> = bins.iter().map(|b| b.load.clone()).collect();
    let mut assign: Vec<Option<usize>> = vec![None; items.len()];
    for &i in &order {
        let mut best: Option<(usize, f64)> = None;
        for (t, bin) in bins.iter().enumerate() {
            if !fits(bin, &loads[t], &items[i].demand, headroom) {
                continue;
            }
            let room = room_after(bin, &loads[t], &items[i].demand, headroom);
            if best.is_none_or(|(_, r)| room < r) {
                best = Some((t, room));
            }
        }
        if let Some((t, _)) = best {
            add(&mut loads[t], &items[i].demand, 1.0);
            assign[i] = Some(t);
        }
    }
    let mut method = FailoverMethod::BestFitDecreasing;
    let mut search_nodes = 0;
    let placed = assign.iter().filter(|a| a.is_some()).count();
    if placed < items.len() && items.len() <= exact_max_services {
        // 2. exact search for the most services placed
        let mut ex = Exact {
            items,
            bins: &bins,
            order: &order,
            headroom,
            loads: bins.iter().map(|b| b.load.clone()).collect(),
            current: vec![None; items.len()],
            best: assign.clone(),
            best_count: placed,
            budget: exact_budget,
            visited: 0,
            exhausted: false,
        };
        ex.dfs(0, 0);
        search_nodes = ex.visited;
        method = if ex.exhausted {
            FailoverMethod::ExactBudgetExhausted
        } else {
            FailoverMethod::Exact
        };
        assign = ex.best;
    }

    // report in placement order, with the room left after each
    let mut loads: Vec<Vec<f64>> = bins.iter().map(|b| b.load.clone()).collect();
    let mut placements = Vec::new();
    let mut unplaced = Vec::new();
    for &i in &order {
        match assign[i] {
            Some(t) => {
                let room = room_after(&bins[t], &loads[t], &items[i].demand, headroom);
                add(&mut loads[t], &items[i].demand, 1.0);
                placements.push(FailoverPlacement {
                    service: items[i].service.clone(),
                    from: items[i].from.clone(),
                    to: bins[t].node.clone(),
                    demand: items[i].demand.clone(),
                    room_after: room,
                });
            }
            None => unplaced.push(items[i].clone()),
        }
    }
    FailoverPlan {
        placements,
        unplaced,
        method,
        search_nodes,
    }
}

struct Exact<'a> {
    items: &'a [FailoverItem],
    bins: &'a [Bin],
    order: &'a [usize],
    headroom: f64,
    loads: Vec<Vec<f64>>,
    current: Vec<Option<usize>>,
    best: Vec<Option<usize>>,
    best_count: usize,
    budget: usize,
    visited: usize,
    exhausted: bool,
}

impl Exact<'_> {
    fn dfs(&mut self, depth: usize, placed: usize) {
        if self.best_count == self.items.len() {
            return;
        }
        if self.visited >= self.budget {
            self.exhausted = true;
            return;
        }
        self.visited += 1;
        if depth == self.order.len() {
            if placed > self.best_count {
                self.best_count = placed;
                self.best = self.current.clone();
            }
            return;
        }
        // even placing every remaining service cannot beat the best
        if placed + (self.order.len() - depth) <= self.best_count {
            return;
        }
        let i = self.order[depth];
        for t in 0..self.bins.len() {
            if !fits(
                &self.bins[t],
                &self.loads[t],
                &self.items[i].demand,
                self.headroom,
            ) {
                continue;
            }
            add(&mut self.loads[t], &self.items[i].demand, 1.0);
            self.current[i] = Some(t);
            self.dfs(depth + 1, placed + 1);
            self.current[i] = None;
            add(&mut self.loads[t], &self.items[i].demand, -1.0);
            if self.exhausted || self.best_count == self.items.len() {
                return;
            }
        }
        self.dfs(depth + 1, placed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(id: &str, d: &[f64]) -> FailoverItem {
        FailoverItem {
            service: id.into(),
            from: "dead".into(),
            demand: d.to_vec(),
        }
    }

    fn bin(id: &str, cap: &[f64], load: &[f64]) -> Bin {
        Bin {
            node: id.into(),
            capacity: cap.to_vec(),
            load: load.to_vec(),
        }
    }

    #[test]
    fn best_fit_decreasing_spreads_and_reports() {
        // headroom 0; order z (too big for anyone), a, c, d
        let items = [
            item("a", &[5.0]),
            item("c", &[4.0]),
            item("d", &[2.0]),
            item("z", &[20.0]),
        ];
        let bins = [bin("x", &[10.0], &[0.0]), bin("y", &[10.0], &[4.0])];
        let p = failover_plan(&items, &bins, 0.0, 0, 0);
        let got: Vec<(&str, &str)> = p
            .placements
            .iter()
            .map(|p| (p.service.as_str(), p.to.as_str()))
            .collect();
        // a: y would keep 0.1, x 0.5 -> y; c: only x fits; d: only x fits (y has 1 left)
        assert_eq!(got, vec![("a", "y"), ("c", "x"), ("d", "x")]);
        assert_eq!(p.unplaced.len(), 1);
        assert_eq!(p.unplaced[0].service, "z");
    }

    #[test]
    fn exact_search_fixes_what_bfd_misses() {
        // capacities 10 and 8, items 5, 5, 4, 4: {5, 5} and {4, 4} fit exactly, but best fit
        // puts the first 5 on y (tighter), the second on x, a 4 on x, and the last 4 nowhere.
        let items = [
            item("a", &[5.0]),
            item("b", &[5.0]),
            item("c", &[4.0]),
            item("d", &[4.0]),
        ];
        let bins = [bin("x", &[10.0], &[0.0]), bin("y", &[8.0], &[0.0])];
        let bfd = failover_plan(&items, &bins, 0.0, 0, 0);
        assert_eq!(bfd.method, FailoverMethod::BestFitDecreasing);
        assert_eq!(bfd.unplaced.len(), 1);
        let p = failover_plan(&items, &bins, 0.0, 8, 10_000);
        assert_eq!(p.method, FailoverMethod::Exact);
        assert!(p.unplaced.is_empty(), "{p:?}");
        // the budget bounds the search
        let p = failover_plan(&items, &bins, 0.0, 8, 2);
        assert_eq!(p.method, FailoverMethod::ExactBudgetExhausted);
        assert_eq!(p.unplaced.len(), 1);
    }

    fn feasible_exists(items: &[FailoverItem], bins: &[Bin], headroom: f64) -> bool {
        let n = bins.len();
        let total = n.pow(items.len() as u32);
        'outer: for code in 0..total {
            let mut loads: Vec<Vec<f64>> = bins.iter().map(|b| b.load.clone()).collect();
            let mut c = code;
            for it in items {
                let t = c % n;
                c /= n;
                if !fits(&bins[t], &loads[t], &it.demand, headroom) {
                    continue 'outer;
                }
                add(&mut loads[t], &it.demand, 1.0);
            }
            return true;
        }
        false
    }

    fn arb_instance() -> impl Strategy<Value = (Vec<FailoverItem>, Vec<Bin>, f64)> {
        let items = prop::collection::vec(prop::collection::vec(0.0f64..6.0, 2), 1..=4);
        let bins = prop::collection::vec(
            (
                prop::collection::vec(0.0f64..12.0, 2),
                prop::collection::vec(0.0f64..6.0, 2),
            ),
            1..=3,
        );
        (items, bins, prop::sample::select(vec![0.0, 0.1])).prop_map(|(items, bins, h)| {
            (
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| item(&format!("s{i}"), &d))
                    .collect(),
                bins.into_iter()
                    .enumerate()
                    .map(|(i, (c, l))| bin(&format!("n{i}"), &c, &l))
                    .collect(),
                h,
            )
        })
    }

    proptest! {
        #[test]
        fn never_overfills_and_places_all_when_possible((items, bins, h) in arb_instance()) {
            let p = failover_plan(&items, &bins, h, 8, 200_000);
            prop_assert_eq!(p.placements.len() + p.unplaced.len(), items.len());
            let mut loads: std::collections::BTreeMap<&str, Vec<f64>> =
                bins.iter().map(|b| (b.node.as_str(), b.load.clone())).collect();
            for pl in &p.placements {
                let l = loads.get_mut(pl.to.as_str()).expect("placed on a survivor");
                add(l, &pl.demand, 1.0);
            }
            for b in &bins {
                for (r, l) in loads[b.node.as_str()].iter().enumerate() {
                    let added = l - b.load[r];
                    if added > 0.0 {
                        prop_assert!(*l <= b.capacity[r] * (1.0 - h) + 1e-6, "{:?}", p);
                    }
                }
            }
            if feasible_exists(&items, &bins, h) {
                prop_assert!(p.unplaced.is_empty(), "feasible but unplaced: {:?}", p);
            }
        }
    }
}
