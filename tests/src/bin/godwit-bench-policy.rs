//! `cargo run --release -p godwit-tests --bin godwit-bench-policy [-- --write]`
//!
//! The cost of one whole policy pass (`godwit::policy::plan`) over synthetic clusters of
//! growing size, median of repeated runs. Target (issue #6): ≤ 10 ms for 100 nodes and 1000
//! services. With `--write`, the markdown replaces the `bench:policy` section of
//! `docs/BENCHMARKS.md`.

use std::time::Instant;

use godwit::policy::{bench_view, plan, PolicyConfig};
use godwit_tests::bench::{machine, median, write_section};

const SIZES: [(usize, usize); 4] = [(10, 100), (50, 500), (100, 1000), (200, 2000)];
const RUNS: usize = 30;

fn report() -> String {
    let cfg = PolicyConfig::default();
    let mut md = String::from("### Policy pass cost\n\n");
    md.push_str("`cargo run --release -p godwit-tests --bin godwit-bench-policy -- --write`, on ");
    md.push_str(&machine());
    md.push_str(&format!(
        ".\n\nOne `plan()` over `bench_view(nodes, services, 42)` (a deliberately hot synthetic \
         cluster: about half the nodes trigger, some nodes are dead), median of {RUNS} runs.\n\n"
    ));
    md.push_str("| nodes | services | plan() median | triggered nodes | migrations | failovers | unplaced | target |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (nodes, services) in SIZES {
        let view = bench_view(nodes, services, 42);
        let mut times = Vec::with_capacity(RUNS);
        let mut last = None;
        for i in 0..RUNS {
            let t = Instant::now();
            let p = plan(&view, &cfg, 1000 + i as u64);
            times.push(t.elapsed());
            last = Some(p);
        }
        let p = last.expect("at least one run");
        let fired = p
            .nodes
            .iter()
            .filter(|n| n.trigger.as_ref().is_some_and(|t| t.fired))
            .count();
        let t = median(times);
        let target = if (nodes, services) == (100, 1000) {
            if t.as_secs_f64() <= 0.010 {
                "≤ 10 ms: met"
            } else {
                "≤ 10 ms: not met"
            }
        } else {
            ""
        };
        md.push_str(&format!(
            "| {nodes} | {services} | {:.2} ms | {fired} | {} | {} | {} | {target} |\n",
            t.as_secs_f64() * 1e3,
            p.migrations.len(),
            p.failover.len(),
            p.unplaced.len(),
        ));
    }
    md
}

fn main() {
    let write = std::env::args().any(|a| a == "--write");
    let md = report();
    print!("{md}");
    if write {
        match write_section("policy", "Policy (plan cost)", &md) {
            Ok(p) => eprintln!("wrote {}", p.display()),
            Err(e) => {
                eprintln!("godwit-bench-policy: cannot write docs/BENCHMARKS.md: {e}");
                std::process::exit(1);
            }
        }
    }
}
