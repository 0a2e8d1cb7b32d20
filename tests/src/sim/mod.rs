//! A discrete-time cluster simulator that compares placement policies on the same demand
//! traces: nodes in sites with capacities, power models and budgets; services with demand
//! traces, images and state; migrations that take time; nodes that fail.
//!
//! Pure: no I/O apart from [`trace::load_dir`]. The binary `godwit-sim` is the front end
//! (`compare`, `record`, `synth`), and `cargo xtask sim` runs it.
//!
//! | module | job |
//! | --- | --- |
//! | `rng` | a seeded PRNG, so every run is reproducible |
//! | `trace` | demand traces and their CSV format |
//! | `synth` | synthetic traces: daily cycles, trends, bursts, noise |
//! | `scenario` | what a run simulates, and the seeded comparison scenario |
//! | `engine` | the step loop, transfers and the report |
//! | `policy` | the `SimPolicy` trait, `NoAction`, `ReactiveStatic` |
//! | `godwit` | the `Godwit` policy: `godwit::policy::plan` fed with `godwit::predict` forecasts |
//! | `bound` | a lower bound of the overload no placement avoids |
//! | `compare` | several policies on one scenario, as a markdown table |

pub mod bound;
pub mod compare;
pub mod engine;
pub mod godwit;
pub mod policy;
pub mod rng;
pub mod scenario;
pub mod synth;
pub mod trace;

#[cfg(test)]
mod tests;

/// The policies `godwit-sim compare` runs on `sc`, in table order.
pub fn policies(sc: &scenario::Scenario) -> Vec<Box<dyn policy::SimPolicy>> {
    vec![
        Box::new(policy::NoAction),
        Box::new(policy::ReactiveStatic::new(0.8)),
        Box::new(godwit::Godwit::new(sc)),
    ]
}
