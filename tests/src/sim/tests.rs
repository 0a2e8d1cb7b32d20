//! Engine and policy tests on tiny hand-made scenarios whose figures can be worked out by hand.

use super::compare::compare;
use super::engine::{plan_transfer, run, Action, Sim, SwitchMode};
use super::policy::{NoAction, ReactiveStatic, SimPolicy};
use super::scenario::{
    self, Failure, GenParams, Network, NodeSpec, Scenario, ServiceSpec, SiteSpec,
};
use super::trace::{Demand, Trace};

/// One site; nodes of 1 core, lots of memory, 0-100 W; services on the given CPU traces, with
/// 1e6 bytes of memory, no dirtying and no image bytes.
fn tiny(nodes: usize, services: &[(&[f64], usize)], steps: usize) -> Scenario {
    Scenario {
        sites: vec![SiteSpec {
            name: "s".into(),
            power_budget_watts: 1e9,
            risk: 0.0,
        }],
        nodes: (0..nodes)
            .map(|i| NodeSpec {
                name: format!("n{i}"),
                site: 0,
                cpu_cores: 1.0,
                mem_bytes: 1e12,
                idle_watts: 0.0,
                max_watts: 100.0,
            })
            .collect(),
        services: (0..services.len())
            .map(|i| ServiceSpec {
                name: format!("s{i}"),
                trace: i,
                offset: 0,
                scale: 1.0,
                image: i as u32,
                image_bytes: 0.0,
            })
            .collect(),
        traces: services
            .iter()
            .enumerate()
            .map(|(i, (cpu, _))| Trace {
                name: format!("t{i}"),
                steps: cpu
                    .iter()
                    .map(|&c| Demand {
                        cpu: c,
                        mem: 1e6,
                        dirty: 0.0,
                    })
                    .collect(),
            })
            .collect(),
        placement: services.iter().map(|&(_, n)| n).collect(),
        failures: Vec::new(),
        steps,
        step_seconds: 1.0,
        energy_window: 1,
        energy_tolerance: 1.0,
        network: Network::default(),
    }
}

/// Wraps a policy and records what it returned, and where services were, at each step.
struct Recording<P> {
    inner: P,
    actions: Vec<(usize, Action)>,
    hosts: Vec<Vec<Option<usize>>>,
}

impl<P: SimPolicy> Recording<P> {
    fn new(inner: P) -> Self {
        Recording {
            inner,
            actions: Vec::new(),
            hosts: Vec::new(),
        }
    }
}

impl<P: SimPolicy> SimPolicy for Recording<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn decide(&mut self, sim: &Sim<'_>) -> Vec<Action> {
        self.hosts.push(
            (0..sim.scenario().services.len())
                .map(|s| sim.host(s))
                .collect(),
        );
        let out = self.inner.decide(sim);
        self.actions.extend(out.iter().map(|a| (sim.now(), *a)));
        out
    }
}

/// Returns fixed actions at fixed steps.
struct Script(Vec<(usize, Action)>);

impl SimPolicy for Script {
    fn name(&self) -> &str {
        "script"
    }

    fn decide(&mut self, sim: &Sim<'_>) -> Vec<Action> {
        self.0
            .iter()
            .filter(|(t, _)| *t == sim.now())
            .map(|(_, a)| *a)
            .collect()
    }
}

#[test]
fn accounting_on_a_hand_made_scenario() {
    // n0 carries 0.7 + 0.5 = 1.2 cores for 5 steps, then 0.8; n1 is idle.
    let b: Vec<f64> = [0.5; 5].into_iter().chain([0.1; 5]).collect();
    let mut sc = tiny(2, &[(&[0.7], 0), (&b, 0)], 10);
    // n0 draws 100 W while overloaded, 80 W after; the budget of 90 W is passed 5 times.
    sc.sites[0].power_budget_watts = 90.0;
    let r = run(&sc, &mut NoAction).unwrap();
    assert_eq!(r.overload_seconds, 5.0);
    assert_eq!(r.energy_over_tolerance_seconds, 5.0);
    assert_eq!(r.migrations, 0);
    assert_eq!(r.downtime_seconds, 0.0);
    assert_eq!(r.unplaceable, 0);
    assert_eq!(r.rejected, 0);

    // A longer window averages: 60-step mean of 100,100,100,100,100,80,... exceeds 90 W until
    // the mean of the last 10 steps is 90 (steps 0-9: (500 + 400)/10 = 90, not above).
    sc.energy_window = 60;
    let r = run(&sc, &mut NoAction).unwrap();
    // Means: 100 ×5, then 500+80k over 5+k: 96.7, 94.3, 92.5, 91.1, 90 -> 9 steps above.
    assert_eq!(r.energy_over_tolerance_seconds, 9.0);
}

#[test]
fn migration_load_counts_on_source_until_done() {
    // n0: 0.9 + 0.5 cores; B moves to n1 at step 0. 250 MB of state at 125 MB/s, no dirtying:
    // one 2.01 s pre-copy round, then a 0.01 s frozen round and a 0.1 s cut-over -> 3 steps.
    let mut sc = tiny(2, &[(&[0.9], 0), (&[0.5], 0)], 10);
    sc.traces[1].steps[0].mem = 250e6;
    let plan = plan_transfer(&sc.network, 125e6, 250e6, 0.0, 0.0, SwitchMode::Auto);
    assert!(plan.transitional);
    assert_eq!(plan.rounds, 1);
    assert!((plan.total_seconds - 2.12).abs() < 1e-9, "{plan:?}");
    let mut p = Recording::new(Script(vec![(
        0,
        Action::Migrate {
            service: 1,
            to: 1,
            mode: SwitchMode::Auto,
        },
    )]));
    let r = run(&sc, &mut p).unwrap();
    assert_eq!(r.overload_seconds, 3.0);
    assert_eq!(r.migrations, 1);
    assert!((r.downtime_seconds - 0.11).abs() < 1e-9, "{r:?}");
    assert_eq!(p.hosts[2][1], Some(0));
    assert_eq!(p.hosts[3][1], Some(1));
}

#[test]
fn transfer_modes() {
    let net = Network::default();
    let b = 100e6;
    // Small state: a stop-and-copy meets the downtime target, so Auto does not iterate.
    let small = plan_transfer(&net, b, 10e6, 1e6, 0.0, SwitchMode::Auto);
    assert!(!small.transitional);
    // Dirtying faster than the link: pre-copy cannot converge, intermittent even if asked.
    let hot = plan_transfer(&net, b, 4e9, 2e8, 0.0, SwitchMode::Transitional);
    assert!(!hot.transitional);
    assert!((hot.downtime_seconds - (40.0 + net.rtt_seconds + net.start_seconds)).abs() < 1e-9);
    // 4 GB at 10% dirty ratio: rounds shrink by 10x, 40 s, 4 s, 0.4 s -> 2 live rounds.
    let live = plan_transfer(&net, b, 4e9, 1e7, 0.0, SwitchMode::Auto);
    assert!(live.transitional);
    assert_eq!(live.rounds, 2);
    assert!(live.downtime_seconds < net.downtime_target_seconds + net.cutover_seconds);
    // A missing image lengthens an intermittent switch's downtime, not a transitional one's.
    let with_image = plan_transfer(&net, b, 4e9, 1e7, 1e9, SwitchMode::Auto);
    assert_eq!(with_image.downtime_seconds, live.downtime_seconds);
    assert!(with_image.total_seconds > live.total_seconds + 9.9);
    let cold = plan_transfer(&net, b, 4e9, 1e7, 1e9, SwitchMode::Intermittent);
    assert!(cold.downtime_seconds > 49.0);
}

#[test]
fn no_action_changes_nothing() {
    let sc = scenario::generate(
        &[],
        &GenParams {
            nodes: 4,
            services: 12,
            steps: 700,
            failures: 0,
            ..GenParams::default()
        },
    );
    let mut p = Recording::new(NoAction);
    let r = run(&sc, &mut p).unwrap();
    assert!(p.actions.is_empty());
    let initial: Vec<Option<usize>> = sc.placement.iter().map(|&n| Some(n)).collect();
    assert!(p.hosts.iter().all(|h| *h == initial));
    assert_eq!((r.migrations, r.restarts, r.prestaged), (0, 0, 0));
    assert_eq!(r.downtime_seconds, 0.0);
}

#[test]
fn reactive_moves_the_largest_service_to_the_least_loaded_fit() {
    // n0: 0.5 + 0.4 = 0.9 > 0.8. n1 at 0.3, n2 at 0.1: the largest (s0) goes to n2.
    let sc = tiny(3, &[(&[0.5], 0), (&[0.4], 0), (&[0.3], 1), (&[0.1], 2)], 5);
    let mut p = Recording::new(ReactiveStatic::new(0.8));
    let r = run(&sc, &mut p).unwrap();
    assert_eq!(
        p.actions,
        [(
            0,
            Action::Migrate {
                service: 0,
                to: 2,
                mode: SwitchMode::Auto
            }
        )]
    );
    assert_eq!(r.migrations, 1);
    assert_eq!(r.overload_seconds, 0.0);
}

#[test]
fn reactive_respects_capacity_and_cools_down() {
    // No node can take 0.5 and stay under 0.8: nothing moves.
    let sc = tiny(3, &[(&[0.5], 0), (&[0.4], 0), (&[0.5], 1), (&[0.5], 2)], 50);
    let mut p = Recording::new(ReactiveStatic::new(0.8));
    run(&sc, &mut p).unwrap();
    assert!(p.actions.is_empty(), "{:?}", p.actions);

    // A node that stays hot after a move waits for its cool-down before moving again.
    let sc = tiny(
        4,
        &[
            (&[0.5], 0),
            (&[0.45], 0),
            (&[0.4], 0),
            (&[0.0], 1),
            (&[0.0], 2),
            (&[0.0], 3),
        ],
        40,
    );
    let mut p = Recording::new(ReactiveStatic::new(0.8));
    run(&sc, &mut p).unwrap();
    let steps: Vec<usize> = p.actions.iter().map(|(t, _)| *t).collect();
    assert_eq!(steps.len(), 2, "{:?}", p.actions);
    assert_eq!(steps[0], 0);
    assert!(steps[1] >= 30, "{steps:?}");
}

#[test]
fn failure_triggers_placement_of_its_services() {
    let mut sc = tiny(3, &[(&[0.6], 0), (&[0.3], 0), (&[0.3], 1), (&[0.3], 2)], 6);
    sc.failures = vec![Failure { step: 2, node: 0 }];
    let mut p = Recording::new(ReactiveStatic::new(0.8));
    let r = run(&sc, &mut p).unwrap();
    let places: Vec<_> = p
        .actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::Place { .. }))
        .collect();
    assert_eq!(places.len(), 2, "{:?}", p.actions);
    assert!(places.iter().all(|(t, _)| *t == 2));
    assert_eq!(r.restarts, 2);
    assert_eq!(r.unplaceable, 0);
    assert_eq!(r.overload_seconds, 0.0, "spread, not piled on one node");
    // Each is down at the failure step (2) and starting at step 3: a 1 s start plus 1 MB of
    // state is 1.008 s, rounded up to 2 steps from step 2, so it runs again at step 4.
    assert_eq!(r.downtime_seconds, 2.0 * 2.0);
    let last = p.hosts.last().unwrap();
    assert!(last[0].is_some() && last[1].is_some() && last[0] != last[1]);

    // Without a policy the orphans stay down.
    let r = run(&sc, &mut NoAction).unwrap();
    assert_eq!(r.unplaceable, 2);
    assert_eq!(r.downtime_seconds, 2.0 * 4.0);
}

#[test]
fn engine_refuses_invalid_actions() {
    let mut sc = tiny(2, &[(&[0.1], 0)], 3);
    sc.failures = vec![Failure { step: 0, node: 1 }];
    let bad = [
        Action::Migrate {
            service: 0,
            to: 0,
            mode: SwitchMode::Auto,
        },
        Action::Migrate {
            service: 0,
            to: 1,
            mode: SwitchMode::Auto,
        },
        Action::Migrate {
            service: 9,
            to: 0,
            mode: SwitchMode::Auto,
        },
        Action::Place { service: 0, to: 0 },
        Action::PreStage { image: 0, to: 0 },
        Action::PreStage { image: 77, to: 1 },
    ];
    let mut p = Script(bad.iter().map(|a| (0, *a)).collect());
    let r = run(&sc, &mut p).unwrap();
    assert_eq!(r.rejected, bad.len() as u64);
    assert_eq!(r.migrations, 0);
}

#[test]
fn same_seed_same_report() {
    let p = GenParams {
        nodes: 4,
        services: 12,
        steps: 1500,
        seed: 3,
        ..GenParams::default()
    };
    let run_all = |p: &GenParams| {
        let sc = scenario::generate(&[], p);
        let mut pols: Vec<Box<dyn SimPolicy>> =
            vec![Box::new(NoAction), Box::new(ReactiveStatic::new(0.8))];
        compare(&sc, &mut pols).unwrap()
    };
    let a = run_all(&p);
    assert_eq!(a, run_all(&p));
    assert!(a[1].report.migrations > 0, "{a:?}");
    let other = run_all(&GenParams {
        seed: 4,
        ..p.clone()
    });
    assert_ne!(a, other);
}

#[test]
fn generated_scenario_is_valid_and_failure_leaves_state_consistent() {
    let sc = scenario::generate(&[], &GenParams::default());
    sc.validate().unwrap();
    assert_eq!(sc.failures.len(), 1);
    let r = run(&sc, &mut ReactiveStatic::new(0.8)).unwrap();
    assert!(r.restarts > 0);
}

#[test]
fn godwit_places_the_services_of_a_failed_node() {
    let mut sc = tiny(3, &[(&[0.4], 0), (&[0.2], 0), (&[0.2], 1), (&[0.2], 2)], 40);
    sc.failures = vec![Failure { step: 25, node: 0 }];
    let mut p = Recording::new(super::godwit::Godwit::new(&sc));
    let r = run(&sc, &mut p).unwrap();
    assert_eq!(r.restarts, 2, "{:?}", p.actions);
    assert_eq!(r.unplaceable, 0);
    assert_eq!(r.rejected, 0);
    assert_eq!(r.overload_seconds, 0.0);
    assert!(p
        .actions
        .iter()
        .any(|(t, a)| *t == 25 && matches!(a, Action::Place { .. })));
}

#[test]
fn lower_bound_counts_steps_whose_demand_exceeds_live_capacity() {
    // Two 1-core nodes: 2.5 cores of demand at steps 0-1 cannot fit anywhere (one
    // node-second each), 1.5 cores fit once split.
    let a: &[f64] = &[1.5, 1.5, 0.9, 0.9];
    let b: &[f64] = &[1.0, 1.0, 0.6, 0.6];
    let sc = tiny(2, &[(a, 0), (b, 0)], 4);
    assert_eq!(
        super::bound::unavoidable_steps(&sc),
        vec![true, true, false, false]
    );
    assert_eq!(super::bound::unavoidable_overload_seconds(&sc), 2.0);
    // No policy does better.
    let r = run(&sc, &mut ReactiveStatic::new(0.8)).unwrap();
    assert!(r.overload_seconds >= 2.0);
}
