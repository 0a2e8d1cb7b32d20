//! The whole policy over one cluster view: site index, thresholds, triggers, failover,
//! selection, placement, switch mode and pre-staging, with the numbers behind every decision.
//!
//! Order of work, all deterministic (nodes, services and sites by id; ties broken by id):
//! 1. evaluate every site; `T_n` for every node;
//! 2. advance the trigger of every usable node (alive, not fenced) with `u_max` now and forecast,
//!    and whether a move is still leaving it;
//! 3. fail over the services of dead or fenced nodes (and of nodes missing from the view) onto
//!    the usable nodes, within `capacity * (1 - headroom)`;
//! 4. for the nodes that fired, most over their threshold first: select the services that
//!    leave, place each in turn (later moves see earlier ones), pick the switch mode; when a
//!    selected service finds no target, other eligible ones may take its place
//!    (`substitute_unplaced`). Nodes that fired are not targets in the same plan;
//! 5. pre-stage images for services likely to move next.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::failover::{failover_plan, Bin, FailoverItem, FailoverMethod, FailoverPlacement};
use super::load::{u_max_of, NodeLoad};
use super::mode::{class_label, decide_mode, ModeWhy, SwitchMode};
use super::place::{PlaceWhy, Targets};
use super::precopy::{estimate_with_curve, PrecopyInput};
use super::prestage::{prestage_plan, PrestageCandidate, PrestagePlan};
use super::select::{load_evaluation_index, pearson, select_services_timed, SelectWhy};
use super::site::{evaluate_site, SiteEval, SiteState};
use super::threshold::{node_threshold, ThresholdWhy};
use super::trigger::{TriggerState, TriggerWhy};
use super::view::{max_util, ClusterView, NodeView, ServiceView, SiteView};

/// A node's condition in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Usable,
    Dead,
    Fenced,
}

/// Per node: why its threshold is what it is, whether it triggered, and what leaves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub site: String,
    pub site_state: SiteState,
    pub status: NodeStatus,
    /// Projected load per resource (absolute units) before this plan.
    pub projected_load: Vec<f64>,
    pub projected_u_max: Option<f64>,
    pub threshold: ThresholdWhy,
    /// `None` for a node that is not usable.
    pub trigger: Option<TriggerWhy>,
    /// Present when the trigger fired.
    pub selection: Option<SelectWhy>,
}

/// One planned move of a running service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Migration {
    pub service: String,
    pub from: String,
    pub to: String,
    pub mode: SwitchMode,
    /// The target lacks the image: send instance, state and image; else instance and state.
    pub sends_image: bool,
    /// `rho_i` and `LE_i` that ranked it.
    pub rho: f64,
    pub le: f64,
    pub placement: PlaceWhy,
    pub switch: ModeWhy,
}

/// Where in the plan a service could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnplacedStage {
    Migration,
    Failover,
}

/// A service the plan could not place, and why.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Unplaced {
    pub service: String,
    pub from: String,
    pub stage: UnplacedStage,
    pub reason: String,
    /// The placement attempt (migrations only).
    pub placement: Option<PlaceWhy>,
}

/// Everything the policy decided at one sample.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Plan {
    pub now: u64,
    pub sites: Vec<SiteEval>,
    pub nodes: Vec<NodeReport>,
    pub migrations: Vec<Migration>,
    pub failover: Vec<FailoverPlacement>,
    pub failover_method: FailoverMethod,
    pub unplaced: Vec<Unplaced>,
    pub prestage: PrestagePlan,
    /// Trigger state per node, to pass back as `ClusterView::triggers` at the next sample.
    pub triggers: BTreeMap<String, TriggerState>,
    /// Inconsistencies in the view (duplicate ids, unknown sites), one line each.
    pub warnings: Vec<String>,
}

/// Sorts by id and keeps the first of each id; names the duplicates in `warnings`.
fn sorted_unique<'a, T>(
    items: &'a [T],
    id: impl Fn(&T) -> &str,
    what: &str,
    warnings: &mut Vec<String>,
) -> Vec<&'a T> {
    let mut v: Vec<&T> = items.iter().collect();
    v.sort_by(|a, b| id(a).cmp(id(b)));
    let mut out: Vec<&T> = Vec::with_capacity(v.len());
    for item in v {
        if out.last().is_some_and(|l| id(l) == id(item)) {
            warnings.push(format!("duplicate {what} id {:?}: first kept", id(item)));
        } else {
            out.push(item);
        }
    }
    out
}

/// Runs the policy over `view` at sample `now`.
pub fn plan(view: &ClusterView, cfg: &PolicyConfig, now: u64) -> Plan {
    let mut warnings = Vec::new();
    let nres = view.resources.len();
    let nodes = sorted_unique(&view.nodes, |n| &n.id, "node", &mut warnings);
    let services = sorted_unique(&view.services, |s| &s.id, "service", &mut warnings);

    // 1. sites and thresholds
    let mut site_views: BTreeMap<&str, SiteView> = BTreeMap::new();
    for s in &view.sites {
        if site_views.contains_key(s.id.as_str()) {
            warnings.push(format!("duplicate site id {:?}: first kept", s.id));
        } else {
            site_views.insert(&s.id, s.clone());
        }
    }
    for n in &nodes {
        if !site_views.contains_key(n.site.as_str()) {
            warnings.push(format!(
                "node {:?} names unknown site {:?}: evaluated without data",
                n.id, n.site
            ));
            site_views.insert(
                &n.site,
                SiteView {
                    id: n.site.clone(),
                    ..SiteView::default()
                },
            );
        }
    }
    let site_names: Vec<String> = site_views.keys().map(|s| s.to_string()).collect();
    let sites: Vec<SiteEval> = site_views.values().map(|s| evaluate_site(s, cfg)).collect();
    let site_of: Vec<usize> = nodes
        .iter()
        .map(|n| site_names.binary_search(&n.site).unwrap_or(0))
        .collect();
    let thresholds: Vec<ThresholdWhy> = site_of
        .iter()
        .map(|s| node_threshold(&sites[*s], cfg))
        .collect();

    // services per node; services of nodes missing from the view are orphans
    let node_index = |id: &str| nodes.binary_search_by(|n| n.id.as_str().cmp(id)).ok();
    let mut hosted: Vec<Vec<&ServiceView>> = vec![Vec::new(); nodes.len()];
    let mut orphans: Vec<&ServiceView> = Vec::new();
    for s in &services {
        match node_index(&s.node) {
            Some(i) => hosted[i].push(s),
            None => orphans.push(s),
        }
    }
    let loads: Vec<NodeLoad> = nodes
        .iter()
        .zip(&hosted)
        .map(|(n, h)| NodeLoad::project(n, h, nres, cfg))
        .collect();

    let mut targets = Targets {
        nodes: nodes.clone(),
        site: site_of.clone(),
        site_state: sites.iter().map(|s| s.state).collect(),
        site_names: site_names.clone(),
        threshold: thresholds.iter().map(|t| t.threshold).collect(),
        capacity: loads.iter().map(|l| l.capacity.clone()).collect(),
        projected: loads.iter().map(|l| l.projected.clone()).collect(),
        blocked: vec![false; nodes.len()],
    };

    // 2. triggers
    let mut triggers: BTreeMap<String, TriggerState> = BTreeMap::new();
    let mut reports: Vec<NodeReport> = Vec::with_capacity(nodes.len());
    let mut fired: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let status = if !n.alive {
            NodeStatus::Dead
        } else if n.fenced {
            NodeStatus::Fenced
        } else {
            NodeStatus::Usable
        };
        let mut state = view.triggers.get(&n.id).cloned().unwrap_or_default();
        let settled = !hosted[i].iter().any(|s| s.leaving);
        let trigger = (status == NodeStatus::Usable).then(|| {
            state.advance_settled(
                now,
                max_util(&n.util_now, &n.capacity),
                max_util(&n.util_forecast, &n.capacity),
                thresholds[i].threshold,
                Some(settled),
                cfg,
            )
        });
        if trigger.as_ref().is_some_and(|t| t.fired) {
            fired.push(i);
        }
        triggers.insert(n.id.clone(), state);
        reports.push(NodeReport {
            node: n.id.clone(),
            site: n.site.clone(),
            site_state: sites[site_of[i]].state,
            status,
            projected_load: loads[i].projected.clone(),
            projected_u_max: loads[i].u_max(),
            threshold: thresholds[i].clone(),
            trigger,
            selection: None,
        });
    }

    // 3. failover
    let mut items: Vec<FailoverItem> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if !n.usable() {
            items.extend(hosted[i].iter().map(|s| failover_item(s, nres)));
        }
    }
    items.extend(orphans.iter().map(|s| failover_item(s, nres)));
    let bins: Vec<Bin> = (0..nodes.len())
        .filter(|i| nodes[*i].usable())
        .map(|i| Bin {
            node: nodes[i].id.clone(),
            capacity: targets.capacity[i].clone(),
            load: targets.projected[i].clone(),
        })
        .collect();
    let fo = failover_plan(
        &items,
        &bins,
        cfg.headroom,
        cfg.failover_exact_max_services,
        cfg.failover_exact_budget,
    );
    for p in &fo.placements {
        if let Some(t) = targets.index(&p.to) {
            targets.commit(t, None, &p.demand);
        }
    }
    let mut unplaced: Vec<Unplaced> = fo
        .unplaced
        .iter()
        .map(|it| Unplaced {
            service: it.service.clone(),
            from: it.from.clone(),
            stage: UnplacedStage::Failover,
            reason: "no usable node has room for its demand".to_string(),
            placement: None,
        })
        .collect();
    let mut moving: BTreeSet<&str> = items.iter().map(|it| it.service.as_str()).collect();

    // 4. selection, placement, mode
    for &i in &fired {
        targets.blocked[i] = true;
    }
    let excess = |i: usize| loads[i].u_max().unwrap_or(0.0) - thresholds[i].threshold;
    fired.sort_by(|&a, &b| {
        excess(b)
            .total_cmp(&excess(a))
            .then_with(|| nodes[a].id.cmp(&nodes[b].id))
    });
    let mut migrations = Vec::new();
    for &i in &fired {
        // Expected copy time of each service to the target it would get now.
        let copy_s: Vec<Option<f64>> = if cfg.select_by_copy_time {
            hosted[i]
                .iter()
                .map(|s| expected_copy_s(s, i, &loads[i], &targets, cfg))
                .collect()
        } else {
            Vec::new()
        };
        let sel = select_services_timed(
            nodes[i],
            &loads[i],
            &hosted[i],
            thresholds[i].threshold,
            &view.resources,
            &copy_s,
            cfg,
        );
        // The selected services first; then, when some of them found no target and the node
        // is still above its target and at or over `substitute_min_util`, the other eligible
        // candidates in rank order that do find one (`substitute_unplaced`), until it is not.
        let mut order: Vec<(String, bool)> =
            sel.selected.iter().map(|id| (id.clone(), false)).collect();
        if cfg.substitute_unplaced {
            order.extend(
                sel.candidates
                    .iter()
                    .filter(|c| c.eligible && !sel.selected.contains(&c.service))
                    .map(|c| (c.service.clone(), true)),
            );
        }
        let mut substitutes = Vec::new();
        let mut failed = false;
        for (id, substitute) in &order {
            if *substitute {
                // Still above its target, and still at risk of its capacity.
                let now = u_max_of(&targets.projected[i], &targets.capacity[i]);
                let above = now.is_some_and(|u| u > sel.target_util + 1e-9);
                let urgent = now.is_some_and(|u| u >= cfg.substitute_min_util);
                if !failed || !above || !urgent || substitutes.len() >= cfg.max_substitutes {
                    break;
                }
            }
            let Some(svc) = hosted[i].iter().find(|s| &s.id == id) else {
                continue;
            };
            let cand = sel.candidates.iter().find(|c| &c.service == id);
            let moved = loads[i].share(svc);
            let why = targets.choose(svc, i, &moved, cfg);
            let Some(chosen) = why.chosen.clone() else {
                if *substitute {
                    continue;
                }
                failed = true;
                unplaced.push(Unplaced {
                    service: svc.id.clone(),
                    from: nodes[i].id.clone(),
                    stage: UnplacedStage::Migration,
                    reason: match why.failure {
                        Some(f) => format!("{f:?}"),
                        None => "no target".to_string(),
                    },
                    placement: Some(why),
                });
                continue;
            };
            if *substitute {
                substitutes.push(svc.id.clone());
            }
            let Some(t) = targets.index(&chosen.node) else {
                continue;
            };
            targets.commit(t, Some(i), &moved);
            moving.insert(&svc.id);
            let target = nodes[t];
            let link = nodes[i].link_to(target);
            let input = PrecopyInput {
                state_bytes: svc.state_bytes as f64,
                dirty_bytes_per_s: svc.dirty_bytes_per_s,
                bandwidth_bytes_per_s: link.map_or(f64::NAN, |l| l.bytes_per_s),
                rtt_s: link.map_or(f64::NAN, |l| l.rtt_s),
                downtime_target_s: cfg.downtime_target_s,
                max_rounds: cfg.max_rounds,
                scan_share: super::precopy::UNIFORM_SCAN_SHARE,
                round_bandwidth_bytes_per_s: 0.0,
                live_overhead_s: 0.0,
                later_dirty_bytes_per_s: 0.0,
                frozen_bandwidth_bytes_per_s: 0.0,
                // The service's own stop as its node measured it (0: never measured).
                stop_s: if svc.stop_s.is_finite() {
                    svc.stop_s.max(0.0)
                } else {
                    0.0
                },
            };
            let switch = decide_mode(
                class_label(&target.switch_latencies_s, cfg),
                estimate_with_curve(input, &svc.dirty_curve),
            );
            migrations.push(Migration {
                service: svc.id.clone(),
                from: nodes[i].id.clone(),
                to: target.id.clone(),
                mode: switch.mode,
                sends_image: !chosen.holds_image,
                rho: cand.map_or(0.0, |c| c.rho),
                le: cand.map_or(0.0, |c| c.le),
                placement: why,
                switch,
            });
        }
        let mut sel = sel;
        sel.substitutes = substitutes;
        reports[i].selection = Some(sel);
    }

    // 5. pre-staging
    let mut candidates = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if !n.usable() {
            continue;
        }
        let likely = likely_movers(i, n, &hosted[i], &loads[i], &thresholds, &fired, view, cfg);
        for (svc, p) in likely {
            if p < cfg.prestage_min_probability || moving.contains(svc.id.as_str()) {
                continue;
            }
            let moved = loads[i].share(svc);
            let why = targets.choose(svc, i, &moved, cfg);
            let Some(chosen) = why.chosen else { continue };
            candidates.push(PrestageCandidate {
                service: svc.id.clone(),
                image: svc.image.clone(),
                image_bytes: svc.image_bytes,
                probability: p,
                target: chosen.node.clone(),
                target_holds_image: chosen.holds_image,
                bandwidth_bytes_per_s: chosen
                    .bandwidth_bytes_per_s
                    .filter(|b| *b > 0.0)
                    .unwrap_or(cfg.fallback_bandwidth_bytes_per_s),
            });
        }
    }
    let prestage = prestage_plan(&candidates, cfg.prestage_budget_bytes);

    Plan {
        now,
        sites,
        nodes: reports,
        migrations,
        failover: fo.placements,
        failover_method: fo.method,
        unplaced,
        prestage,
        triggers,
        warnings,
    }
}

/// Seconds to copy `svc` from node `source` to the target it would get now: its state, plus
/// its image when that target lacks it, over the path's bandwidth (the fallback bandwidth when
/// unmeasured), plus the RTT. With no target, the state and image over the fallback bandwidth.
fn expected_copy_s(
    svc: &ServiceView,
    source: usize,
    load: &NodeLoad,
    targets: &Targets<'_>,
    cfg: &PolicyConfig,
) -> Option<f64> {
    let why = targets.choose(svc, source, &load.share(svc), cfg);
    let fallback = cfg.fallback_bandwidth_bytes_per_s;
    let (bytes, bw, rtt) = match why.chosen {
        Some(k) => (
            svc.state_bytes as f64
                + if k.holds_image {
                    0.0
                } else {
                    svc.image_bytes as f64
                },
            k.bandwidth_bytes_per_s
                .filter(|b| *b > 0.0)
                .unwrap_or(fallback),
            k.rtt_s.unwrap_or(0.0),
        ),
        None => (
            svc.state_bytes as f64 + svc.image_bytes as f64,
            fallback,
            0.0,
        ),
    };
    let t = bytes / bw + rtt;
    (t.is_finite() && t > 0.0).then_some(t)
}

fn failover_item(s: &ServiceView, nres: usize) -> FailoverItem {
    FailoverItem {
        service: s.id.clone(),
        from: s.node.clone(),
        demand: (0..nres).map(|r| s.demand_of(r)).collect(),
    }
}

/// Move likelihoods of a usable node's services: a given `move_probability` wins; otherwise a
/// node that did not fire but whose forecast `u_max >= T_n - prestage_margin` gives its eligible
/// services `p = (m - rank) / m` by descending LE rank (`m` services, rank 0 first).
#[allow(clippy::too_many_arguments)]
fn likely_movers<'a>(
    i: usize,
    node: &NodeView,
    hosted: &[&'a ServiceView],
    load: &NodeLoad,
    thresholds: &[ThresholdWhy],
    fired: &[usize],
    view: &ClusterView,
    cfg: &PolicyConfig,
) -> Vec<(&'a ServiceView, f64)> {
    let forecast = max_util(&node.util_forecast, &node.capacity);
    let at_risk = !fired.contains(&i)
        && forecast.is_some_and(|f| f >= thresholds[i].threshold - cfg.prestage_margin);
    let mut ranked: Vec<(&ServiceView, f64)> = Vec::new();
    let mut out = Vec::new();
    for s in hosted {
        if let Some(p) = s.move_probability.filter(|p| p.is_finite()) {
            out.push((*s, p.clamp(0.0, 1.0)));
        } else if at_risk && !s.pinned && !s.leaving {
            let rho = pearson(&node.load_history, &s.load_history, cfg.corr_window);
            if rho >= cfg.min_correlation {
                let le =
                    load_evaluation_index(rho, &s.demand, &load.capacity, &view.resources, cfg);
                ranked.push((*s, le));
            }
        }
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
    let m = ranked.len() as f64;
    out.extend(
        ranked
            .into_iter()
            .enumerate()
            .map(|(rank, (s, _))| (s, (m - rank as f64) / m)),
    );
    out
}
