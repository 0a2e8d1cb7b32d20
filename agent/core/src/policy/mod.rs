//! Decisions: site index, dynamic thresholds, trigger, selection, placement, switch mode,
//! iterative pre-copy model, failover and pre-staging.
//!
//! **Architecture invariant:** pure. No I/O, no async, no clock (time comes in as a sample
//! index), no randomness, no hash-order iteration: the same inputs give the same decisions.
//! Every step returns its decision with the numbers behind it (`*Why` structs, all
//! `Serialize`) so that `godwit explain` can show why a threshold is what it is, why a service
//! was picked and why a target won. `policy` does not depend on `predict`: forecasts arrive as
//! plain numbers in [`ClusterView`].
//!
//! Code map:
//! - `config`: [`PolicyConfig`], the `[policy]` table;
//! - `view`: [`ClusterView`] and its parts, the input;
//! - `site`: composite performance index and site state;
//! - `threshold`: dynamic threshold `T_n`;
//! - `trigger`: k-of-n / proactive trigger with hysteresis and cool-down;
//! - `load`: projected load and each service's share of it;
//! - `select`: load correlation, load evaluation index, fewest services that leave;
//! - `place`: target choice (site rule, feasibility, preference);
//! - `mode`: class label and switch mode; `precopy`: the iterative pre-copy model;
//! - `failover`: best-fit decreasing plus an exact search for small instances;
//! - `prestage`: image pre-staging within a byte budget;
//! - `plan`: [`plan`], all of the above over one view;
//! - `bench`: [`bench_view`], a synthetic cluster for benchmarks and property tests.

mod bench;
mod config;
mod failover;
pub mod learned;
mod load;
mod mode;
mod place;
mod plan;
mod precopy;
mod prestage;
mod reactive;
mod select;
mod site;
mod threshold;
mod trigger;
mod view;

#[cfg(test)]
mod tests;

pub use bench::bench_view;
pub use config::{PolicyConfig, PolicyError, SiteConfig};
pub use failover::{
    failover_plan, Bin, FailoverItem, FailoverMethod, FailoverPlacement, FailoverPlan,
};
pub use load::NodeLoad;
pub use mode::{class_label, decide_mode, percentile, ClassLabel, LabelWhy, ModeWhy, SwitchMode};
pub use place::{PlaceFailure, PlaceWhy, Rejections, SiteRule, TargetKey, Targets};
pub use plan::{plan, Migration, NodeReport, NodeStatus, Plan, Unplaced, UnplacedStage};
pub use precopy::{
    dirty_ratio, estimate, estimate_with_curve, estimated_rounds, fit_rounds, frozen_budget,
    latency_floor, predicted_hold_s, remaining_after, round_bandwidth, scan_share, should_freeze,
    start_condition, stop_time, working_set_bytes, DirtyModel, PrecopyEstimate, PrecopyInput,
    StartDecision, StopReason, UNIFORM_SCAN_SHARE,
};
pub use prestage::{
    prestage_plan, PrestageCandidate, PrestageCopy, PrestagePlan, PrestageSkip, PrestageSkipReason,
};
pub use reactive::{reactive_plan, ReactiveMove};
pub use select::{
    load_evaluation_index, pearson, select_services, CandidateWhy, SelectMethod, SelectWhy,
};
pub use site::{composite_index, evaluate_site, site_state, SiteEval, SiteState};
pub use threshold::{dynamic_threshold, node_threshold, ThresholdWhy};
pub use trigger::{TriggerReason, TriggerState, TriggerWhy};
pub use view::{ClusterView, Link, NodeView, ServiceView, SiteView};
