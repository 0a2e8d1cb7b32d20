//! Where a leaving service goes.
//!
//! - Candidates: alive, not fenced, not the source, not itself shedding load in this plan.
//! - Site: a source on a first-state site keeps the service in its site; a source on a
//!   second-state site sends it to another first-state site (none: reported). With
//!   `cross_site_when_full`, a first-state source whose site has no feasible node may use other
//!   first-state sites.
//! - Feasibility: `projected_t,r + moved_r <= capacity_t,r * (1 - headroom)` on every resource,
//!   and (with `respect_target_threshold`) the target's `u_max` after the move at most
//!   `T_t - select_margin`, so the move does not trigger the target in turn.
//! - Preference: holds the service's image, then more bandwidth from the source, then lower
//!   RTT, then lower projected `u_max`, then node id. With `place_by_copy_time`, the shortest
//!   expected copy comes first (state, plus the image when the target lacks it, over the
//!   path's bandwidth, plus the RTT): a same-site target that lacks the image may beat a
//!   distant one that holds it.
//!
//! [`Targets`] carries the projected loads; planning moves in sequence commits each move so the
//! next choice sees it.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::load::u_max_of;
use super::site::SiteState;
use super::view::{NodeView, ServiceView};

/// The cluster's nodes as placement targets, with their running projected loads.
#[derive(Debug, Clone)]
pub struct Targets<'a> {
    /// Sorted by id.
    pub nodes: Vec<&'a NodeView>,
    /// Site index per node.
    pub site: Vec<usize>,
    /// State per site index.
    pub site_state: Vec<SiteState>,
    pub site_names: Vec<String>,
    /// `T_n` per node.
    pub threshold: Vec<f64>,
    /// Capacity per node and resource.
    pub capacity: Vec<Vec<f64>>,
    /// Projected load per node and resource, absolute units; moves update it.
    pub projected: Vec<Vec<f64>>,
    /// Nodes that are not targets in this plan (they shed load).
    pub blocked: Vec<bool>,
}

/// Why a node did not qualify, counted over all nodes considered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Rejections {
    /// Dead, fenced, the source, or shedding load itself.
    pub unusable: usize,
    /// Outside the allowed sites.
    pub site: usize,
    /// Would exceed `capacity * (1 - headroom)`.
    pub capacity: usize,
    /// Would end above `T_t - select_margin`.
    pub threshold: usize,
}

/// Which sites were allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteRule {
    /// The source site is first-state: stay in it.
    SameSite,
    /// The source site is second-state: another first-state site.
    OtherFirstState,
    /// The healthy source site was full; other first-state sites (`cross_site_when_full`).
    CrossSiteFallback,
    /// No target passed the site and threshold rules: any site, the least loaded node that
    /// ends at least `relief_margin` below the source (`relief_moves`).
    Relief,
}

/// Why no target was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaceFailure {
    /// The source site is second-state and no other site is first-state.
    NoFirstStateSite,
    /// No node of the allowed sites can take the load.
    NoFeasibleTarget,
}

/// The sort key of a feasible target (best first).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TargetKey {
    pub node: String,
    pub holds_image: bool,
    /// From the source, bytes/s (`None`: no measurement).
    pub bandwidth_bytes_per_s: Option<f64>,
    pub rtt_s: Option<f64>,
    /// Expected copy time, seconds, when weighed (`place_by_copy_time`) and the path is
    /// measured.
    #[serde(default)]
    pub copy_s: Option<f64>,
    /// Projected `u_max` before the move.
    pub u_max_before: Option<f64>,
    /// Projected `u_max` after the move.
    pub u_max_after: Option<f64>,
}

/// A placement decision and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct PlaceWhy {
    pub service: String,
    pub source: String,
    pub source_site: String,
    pub source_site_state: SiteState,
    pub site_rule: SiteRule,
    /// Load that moves, per resource, absolute units.
    pub moved: Vec<f64>,
    /// The chosen target.
    pub chosen: Option<TargetKey>,
    /// The next best feasible target.
    pub runner_up: Option<TargetKey>,
    /// Feasible targets found.
    pub feasible: usize,
    pub rejected: Rejections,
    pub failure: Option<PlaceFailure>,
}

fn prefer(a: &TargetKey, b: &TargetKey) -> Ordering {
    let bw = |k: &TargetKey| k.bandwidth_bytes_per_s.unwrap_or(0.0);
    let rtt = |k: &TargetKey| k.rtt_s.unwrap_or(f64::INFINITY);
    let u = |k: &TargetKey| k.u_max_before.unwrap_or(f64::INFINITY);
    let copy = |k: &TargetKey| k.copy_s.unwrap_or(f64::INFINITY);
    copy(a)
        .total_cmp(&copy(b))
        .then_with(|| b.holds_image.cmp(&a.holds_image))
        .then_with(|| bw(b).total_cmp(&bw(a)))
        .then_with(|| rtt(a).total_cmp(&rtt(b)))
        .then_with(|| u(a).total_cmp(&u(b)))
        .then_with(|| a.node.cmp(&b.node))
}

/// Relief moves spread load: the lowest `u_max` after the move first, then [`prefer`].
fn prefer_relief(a: &TargetKey, b: &TargetKey) -> Ordering {
    let u = |k: &TargetKey| k.u_max_after.unwrap_or(f64::INFINITY);
    u(a).total_cmp(&u(b)).then_with(|| prefer(a, b))
}

impl<'a> Targets<'a> {
    /// Index of a node by id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.id.as_str().cmp(id)).ok()
    }

    /// `capacity * (1 - headroom)` holds on every resource after adding `moved` to node `t`.
    pub fn fits(&self, t: usize, moved: &[f64], cfg: &PolicyConfig) -> bool {
        let cap = &self.capacity[t];
        let load = &self.projected[t];
        (0..cap.len()).all(|r| {
            let m = moved.get(r).copied().unwrap_or(0.0);
            m <= 0.0 || load[r] + m <= cap[r] * (1.0 - cfg.headroom) + 1e-9 * cap[r].max(1.0)
        })
    }

    /// Projected `u_max` of node `t` with `moved` added.
    pub fn u_max_with(&self, t: usize, moved: &[f64]) -> Option<f64> {
        let after: Vec<f64> = self.projected[t]
            .iter()
            .enumerate()
            .map(|(r, l)| l + moved.get(r).copied().unwrap_or(0.0))
            .collect();
        u_max_of(&after, &self.capacity[t])
    }

    /// Adds `moved` to node `t`'s projected load (and removes it from `from`, if given).
    pub fn commit(&mut self, t: usize, from: Option<usize>, moved: &[f64]) {
        for (r, m) in moved.iter().enumerate() {
            if let Some(l) = self.projected[t].get_mut(r) {
                *l += m;
            }
            if let Some(l) = from.and_then(|f| self.projected[f].get_mut(r)) {
                *l = (*l - m).max(0.0);
            }
        }
    }

    /// Chooses a target for `service` leaving node `source` with load `moved`. Read-only:
    /// call [`Targets::commit`] to apply the move.
    pub fn choose(
        &self,
        service: &ServiceView,
        source: usize,
        moved: &[f64],
        cfg: &PolicyConfig,
    ) -> PlaceWhy {
        let src = self.nodes[source];
        let src_site = self.site[source];
        let src_state = self.site_state[src_site];
        let mut why = PlaceWhy {
            service: service.id.clone(),
            source: src.id.clone(),
            source_site: self.site_names[src_site].clone(),
            source_site_state: src_state,
            site_rule: match src_state {
                SiteState::First => SiteRule::SameSite,
                SiteState::Second => SiteRule::OtherFirstState,
            },
            moved: moved.to_vec(),
            chosen: None,
            runner_up: None,
            feasible: 0,
            rejected: Rejections::default(),
            failure: None,
        };
        let no_first_state = src_state == SiteState::Second
            && !(0..self.site_state.len())
                .any(|s| s != src_site && self.site_state[s] == SiteState::First);
        if !no_first_state {
            self.scan(service, source, moved, why.site_rule, cfg, &mut why);
        }
        if why.chosen.is_none() && src_state == SiteState::First && cfg.cross_site_when_full {
            let mut other = why.clone();
            other.rejected = Rejections::default();
            other.site_rule = SiteRule::CrossSiteFallback;
            self.scan(
                service,
                source,
                moved,
                SiteRule::CrossSiteFallback,
                cfg,
                &mut other,
            );
            if other.chosen.is_some() {
                why = other;
            }
        }
        let urgent = u_max_of(&self.projected[source], &self.capacity[source])
            .is_some_and(|u| u >= cfg.relief_min_util);
        if why.chosen.is_none() && cfg.relief_moves && urgent {
            let mut relief = why.clone();
            relief.rejected = Rejections::default();
            relief.site_rule = SiteRule::Relief;
            self.scan(service, source, moved, SiteRule::Relief, cfg, &mut relief);
            if relief.chosen.is_some() {
                why = relief;
            }
        }
        if why.chosen.is_none() {
            why.failure = Some(if no_first_state {
                PlaceFailure::NoFirstStateSite
            } else {
                PlaceFailure::NoFeasibleTarget
            });
        }
        why
    }

    fn scan(
        &self,
        service: &ServiceView,
        source: usize,
        moved: &[f64],
        rule: SiteRule,
        cfg: &PolicyConfig,
        why: &mut PlaceWhy,
    ) {
        let src = self.nodes[source];
        let src_site = self.site[source];
        let mut best: Option<TargetKey> = None;
        let mut second: Option<TargetKey> = None;
        for (t, node) in self.nodes.iter().enumerate() {
            if t == source || !node.usable() || self.blocked[t] {
                why.rejected.unusable += 1;
                continue;
            }
            let site_ok = match rule {
                SiteRule::SameSite => self.site[t] == src_site,
                SiteRule::Relief => true,
                SiteRule::OtherFirstState | SiteRule::CrossSiteFallback => {
                    self.site[t] != src_site && self.site_state[self.site[t]] == SiteState::First
                }
            };
            if !site_ok {
                why.rejected.site += 1;
                continue;
            }
            if !self.fits(t, moved, cfg) {
                why.rejected.capacity += 1;
                continue;
            }
            let after = self.u_max_with(t, moved);
            if rule == SiteRule::Relief {
                let ceiling = u_max_of(&self.projected[source], &self.capacity[source])
                    .map_or(f64::NEG_INFINITY, |u| u - cfg.relief_margin);
                if after.is_none_or(|u| u > ceiling + 1e-12) {
                    why.rejected.threshold += 1;
                    continue;
                }
            } else if cfg.respect_target_threshold
                && after.is_some_and(|u| u > self.threshold[t] - cfg.select_margin + 1e-12)
            {
                why.rejected.threshold += 1;
                continue;
            }
            why.feasible += 1;
            let link = src.link_to(node);
            let holds_image = node.images.contains(&service.image);
            let bandwidth_bytes_per_s = link
                .map(|l| l.bytes_per_s)
                .filter(|b| b.is_finite() && *b >= 0.0);
            let rtt_s = link.map(|l| l.rtt_s).filter(|r| r.is_finite() && *r >= 0.0);
            let copy_s = bandwidth_bytes_per_s
                .filter(|b| cfg.place_by_copy_time && *b > 0.0)
                .map(|b| {
                    let image = if holds_image { 0 } else { service.image_bytes };
                    (service.state_bytes as f64 + image as f64) / b + rtt_s.unwrap_or(0.0)
                });
            let key = TargetKey {
                node: node.id.clone(),
                holds_image,
                bandwidth_bytes_per_s,
                rtt_s,
                copy_s,
                u_max_before: u_max_of(&self.projected[t], &self.capacity[t]),
                u_max_after: after,
            };
            let order = if rule == SiteRule::Relief && !cfg.relief_prefer_fast {
                prefer_relief
            } else {
                prefer
            };
            match &best {
                Some(b) if order(&key, b) != Ordering::Less => {
                    if second
                        .as_ref()
                        .is_none_or(|s| order(&key, s) == Ordering::Less)
                    {
                        second = Some(key);
                    }
                }
                _ => second = best.replace(key),
            }
        }
        why.chosen = best;
        why.runner_up = second;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::view::Link;
    use std::collections::{BTreeMap, BTreeSet};

    fn node(id: &str, site: &str, util: f64) -> NodeView {
        NodeView {
            id: id.into(),
            site: site.into(),
            alive: true,
            capacity: vec![10.0],
            util_now: vec![util],
            util_forecast: vec![util],
            ..NodeView::default()
        }
    }

    fn targets<'a>(nodes: &'a [NodeView], sites: &[(&str, SiteState)]) -> Targets<'a> {
        let mut refs: Vec<&NodeView> = nodes.iter().collect();
        refs.sort_by(|a, b| a.id.cmp(&b.id));
        let names: Vec<String> = sites.iter().map(|s| s.0.to_string()).collect();
        Targets {
            site: refs
                .iter()
                .map(|n| names.iter().position(|s| *s == n.site).unwrap())
                .collect(),
            site_state: sites.iter().map(|s| s.1).collect(),
            site_names: names,
            threshold: vec![0.8; refs.len()],
            capacity: refs.iter().map(|n| n.capacity.clone()).collect(),
            projected: refs
                .iter()
                .map(|n| vec![n.util_now[0] * n.capacity[0]])
                .collect(),
            blocked: vec![false; refs.len()],
            nodes: refs,
        }
    }

    fn svc() -> ServiceView {
        ServiceView {
            id: "svc".into(),
            node: "src".into(),
            image: "img".into(),
            demand: vec![2.0],
            ..ServiceView::default()
        }
    }

    fn link(bw: f64, rtt: f64) -> Link {
        Link {
            bytes_per_s: bw,
            rtt_s: rtt,
        }
    }

    #[test]
    fn prefers_image_holders_then_bandwidth_then_rtt_then_load() {
        let cfg = PolicyConfig {
            place_by_copy_time: false,
            ..PolicyConfig::default()
        };
        let mut src = node("src", "a", 0.9);
        src.links = BTreeMap::from([
            ("n1".to_string(), link(100.0, 0.01)),
            ("n2".to_string(), link(50.0, 0.01)),
            ("n3".to_string(), link(100.0, 0.001)),
            ("n4".to_string(), link(10.0, 0.5)),
        ]);
        let mut n4 = node("n4", "a", 0.5);
        n4.images = BTreeSet::from(["img".to_string()]);
        let nodes = vec![
            src,
            node("n1", "a", 0.1),
            node("n2", "a", 0.1),
            node("n3", "a", 0.2),
            n4,
        ];
        let t = targets(&nodes, &[("a", SiteState::First)]);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.as_ref().unwrap().node, "n4"); // holds the image despite a slow link
        assert_eq!(w.runner_up.as_ref().unwrap().node, "n3"); // same bandwidth as n1, lower RTT
        assert_eq!(w.feasible, 4);

        // without the image holder, bandwidth decides; then RTT breaks the n1/n3 tie
        let mut nodes2 = nodes.clone();
        nodes2[4].images.clear();
        let t = targets(&nodes2, &[("a", SiteState::First)]);
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "n3");
        // all links equal: the lower projected load wins
        let mut nodes3 = nodes2.clone();
        nodes3[0].links.clear();
        let t = targets(&nodes3, &[("a", SiteState::First)]);
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "n1"); // n1 and n2 both at 0.1: id
    }

    #[test]
    fn prefers_the_shortest_copy() {
        let cfg = PolicyConfig::default();
        let mut src = node("src", "a", 0.9);
        src.links = BTreeMap::from([
            ("n1".to_string(), link(100.0, 0.01)),
            ("n4".to_string(), link(10.0, 0.5)),
        ]);
        let mut n4 = node("n4", "a", 0.5);
        n4.images = BTreeSet::from(["img".to_string()]);
        let nodes = vec![src, node("n1", "a", 0.1), n4];
        let t = targets(&nodes, &[("a", SiteState::First)]);
        let s = t.index("src").unwrap();
        // 100 bytes of state, 100 of image: n1 sends both at 100/s (2.01 s), n4 the state at
        // 10/s (10.5 s)
        let mut v = svc();
        v.state_bytes = 100;
        v.image_bytes = 100;
        let w = t.choose(&v, s, &[2.0], &cfg);
        let chosen = w.chosen.unwrap();
        assert_eq!(chosen.node, "n1");
        assert!((chosen.copy_s.unwrap() - 2.01).abs() < 1e-12);
        assert!((w.runner_up.unwrap().copy_s.unwrap() - 10.5).abs() < 1e-12);
        // a large image: the holder's slow link is faster (10.5 s against 101.01 s)
        v.image_bytes = 10_000;
        let w = t.choose(&v, s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "n4");
    }

    #[test]
    fn never_dead_fenced_overfull_or_other_site() {
        // headroom 0.1, T 0.8, margin 0.05; relief moves are tested on their own
        let cfg = PolicyConfig {
            relief_moves: false,
            ..PolicyConfig::default()
        };
        let mut dead = node("d", "a", 0.0);
        dead.alive = false;
        let mut fenced = node("f", "a", 0.0);
        fenced.fenced = true;
        let full = node("full", "a", 0.8); // 8 + 2 > 9
        let warm = node("warm", "a", 0.6); // 6 + 2 = 8 fits capacity, u 0.8 > 0.75
        let other = node("other", "b", 0.0);
        let nodes = vec![node("src", "a", 0.9), dead, fenced, full, warm, other];
        let t = targets(&nodes, &[("a", SiteState::First), ("b", SiteState::First)]);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen, None);
        assert_eq!(w.failure, Some(PlaceFailure::NoFeasibleTarget));
        assert_eq!(
            w.rejected,
            Rejections {
                unusable: 3,
                site: 1,
                capacity: 1,
                threshold: 1
            }
        );
        // without the threshold rule, "warm" takes it
        let lax = PolicyConfig {
            respect_target_threshold: false,
            ..cfg.clone()
        };
        assert_eq!(
            t.choose(&svc(), s, &[2.0], &lax).chosen.unwrap().node,
            "warm"
        );
        // with the cross-site fallback, the healthy other site takes it
        let cross = PolicyConfig {
            cross_site_when_full: true,
            ..cfg.clone()
        };
        let w = t.choose(&svc(), s, &[2.0], &cross);
        assert_eq!(w.chosen.unwrap().node, "other");
        assert_eq!(w.site_rule, SiteRule::CrossSiteFallback);
    }

    #[test]
    fn strained_site_moves_to_another_first_state_site() {
        let cfg = PolicyConfig {
            relief_moves: false,
            ..PolicyConfig::default()
        };
        let nodes = vec![
            node("src", "a", 0.9),
            node("same", "a", 0.0),
            node("b1", "b", 0.3),
            node("c1", "c", 0.0),
        ];
        let sites = [
            ("a", SiteState::Second),
            ("b", SiteState::First),
            ("c", SiteState::Second),
        ];
        let t = targets(&nodes, &sites);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "b1");
        assert_eq!(w.site_rule, SiteRule::OtherFirstState);
        // no first-state site anywhere else
        let sites = [
            ("a", SiteState::Second),
            ("b", SiteState::Second),
            ("c", SiteState::Second),
        ];
        let t = targets(&nodes, &sites);
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.failure, Some(PlaceFailure::NoFirstStateSite));
    }

    #[test]
    fn relief_moves_lower_the_peak_when_no_target_passes_the_rules() {
        // Relief on, margin 0.1, headroom 0.1. Every other node is over T - margin (0.75) once
        // it takes 2.0, so the strict rules fail. "warm" ends at 0.8, 0.15 below the source and
        // within 0.9; "cool" ends at 0.78 in another site; "hot" ends at 1.0, over
        // capacity * (1 - headroom).
        let cfg = PolicyConfig::default();
        let nodes = vec![
            node("src", "a", 0.95),
            node("warm", "a", 0.6),
            node("cool", "b", 0.58),
            node("hot", "a", 0.8),
        ];
        let t = targets(&nodes, &[("a", SiteState::First), ("b", SiteState::First)]);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.site_rule, SiteRule::Relief);
        assert_eq!(w.failure, None);
        // the lowest load after the move wins, whatever the site
        assert_eq!(w.chosen.as_ref().unwrap().node, "cool");
        assert_eq!(w.runner_up.as_ref().unwrap().node, "warm");
        assert_eq!(w.feasible, 2);
        assert_eq!(w.rejected.capacity, 1);

        // A source only a little above its targets moves nothing: the peak must fall by the
        // margin, so two nodes cannot hand a service back and forth.
        let nodes = vec![node("src", "a", 0.85), node("warm", "a", 0.6)];
        let t = targets(&nodes, &[("a", SiteState::First)]);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg); // warm would end at 0.8 > 0.85 - 0.1
        assert_eq!(w.chosen, None);
        assert_eq!(w.failure, Some(PlaceFailure::NoFeasibleTarget));
        assert_eq!(w.rejected.threshold, 1);

        // No first-state site anywhere: relief still protects capacity, and says why it acted.
        let nodes = vec![node("src", "a", 0.95), node("same", "a", 0.2)];
        let t = targets(&nodes, &[("a", SiteState::Second)]);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "same");
        assert_eq!(w.site_rule, SiteRule::Relief);
        let off = PolicyConfig {
            relief_moves: false,
            ..cfg
        };
        let w = t.choose(&svc(), s, &[2.0], &off);
        assert_eq!(w.failure, Some(PlaceFailure::NoFirstStateSite));
    }

    #[test]
    fn sequential_moves_see_each_other() {
        let cfg = PolicyConfig::default();
        let nodes = vec![
            node("src", "a", 0.9),
            node("n1", "a", 0.3),
            node("n2", "a", 0.5),
        ];
        let mut t = targets(&nodes, &[("a", SiteState::First)]);
        let s = t.index("src").unwrap();
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        let n1 = t.index(&w.chosen.unwrap().node).unwrap();
        assert_eq!(t.nodes[n1].id, "n1");
        t.commit(n1, Some(s), &[2.0]);
        // n1 is now at 5/10, n2 at 5/10: tie on load -> id; n1 again still fits (7 <= 7.5)
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "n1");
        t.commit(n1, Some(s), &[2.0]);
        // n1 at 7 would end at 0.9 > T - margin; n2 at 5 -> 0.7 fits
        let w = t.choose(&svc(), s, &[2.0], &cfg);
        assert_eq!(w.chosen.unwrap().node, "n2");
        assert!((t.projected[s][0] - 5.0).abs() < 1e-12);
    }
}
