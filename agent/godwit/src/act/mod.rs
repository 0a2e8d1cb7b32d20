//! The coordinator acting on the policy: every member runs [`crate::policy::plan`] over the
//! cluster view gossip and the placement log give it ([`ClusterPlanner`]); the leader alone
//! carries out the plan's moves, through the guard rails ([`Rails`]), by asking each source
//! to migrate under its term (the fencing token the source checks against its own view of
//! the leader). Every decision, carried out or not, is kept with its reasons and counted.
//!
//! The leader also carries out the plan's image pre-staging: each planned copy that passes
//! its rails ([`CopyRails`]) is asked of a node that holds the image (the service's own node
//! first), under the same term, and that node pushes it to the target (only missing chunks).
//!
//! Failover stays where it was: the coordinator places a fenced node's services elsewhere
//! after the fence bound; the policy's plan never moves a service off a node it cannot reach.

mod copies;
mod rails;
mod view;

pub use copies::{holder, CopyRails, CopyRailsConfig, ImageCopy};
pub use rails::{Move, Outcome, Rails, RailsConfig};
pub use view::{ClusterPlanner, MemberInput};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::coord::PauseRecord;
use crate::policy::{ClusterView, Migration, Plan, SwitchMode};

/// Decisions kept for `godwit explain --cluster`.
const KEPT: usize = 64;

/// One decision of the leader, carried out or not.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub at_unix_ms: u64,
    /// The planner's sample index.
    pub sample: u64,
    /// `migrate`, `prestage` or `failover`.
    pub kind: &'static str,
    /// The service (for a copy: the services it is for, comma-separated).
    pub service: String,
    /// A copy's image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub from: String,
    pub to: String,
    pub mode: Option<SwitchMode>,
    pub outcome: Outcome,
    /// Why this outcome.
    pub reason: String,
    /// Why the move was planned: the source's trigger, with its figures.
    pub why: String,
}

/// A plan in which some node's trigger fired.
#[derive(Debug, Clone, Serialize)]
pub struct Fired {
    pub taken_at_unix_ms: u64,
    pub plan: Plan,
}

/// What `GET /v1/cluster/plan` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterState {
    pub taken_at_unix_ms: u64,
    /// This node, and the leader it knows.
    pub me: String,
    pub leader: Option<String>,
    /// This node leads: its decisions are the cluster's.
    pub leading: bool,
    /// `[coordinator] act`.
    pub act: bool,
    pub paused: Option<PauseRecord>,
    pub view: Option<ClusterView>,
    pub plan: Option<Plan>,
    /// The last plan in which a trigger fired (a trigger fires once, then cools down).
    pub last_fired: Option<Fired>,
    /// This leader's moves in flight.
    pub running: Vec<Move>,
    /// This leader's pre-staging copies in flight.
    pub copies_running: Vec<ImageCopy>,
    /// Its latest copies that ended, oldest first.
    pub copies_done: VecDeque<CopyDone>,
    /// The latest decisions, oldest first.
    pub decisions: VecDeque<Decision>,
}

/// A pre-staging copy that ended.
#[derive(Debug, Clone, Serialize)]
pub struct CopyDone {
    pub at_unix_ms: u64,
    pub copy: ImageCopy,
    /// `committed` (the target holds it) or `failed`.
    pub outcome: Outcome,
    /// Chunks and bytes pushed (what the target lacked).
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub reason: String,
}

/// Copies that ended kept for `godwit explain --cluster`.
const COPIES_KEPT: usize = 16;

/// The acting state shared with the API and the metrics.
#[derive(Debug, Default)]
pub struct Acting {
    state: RwLock<ClusterState>,
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

pub type SharedActing = Arc<Acting>;

impl Acting {
    /// A copy of the state.
    pub fn state(&self) -> ClusterState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the state.
    pub fn update(&self, f: impl FnOnce(&mut ClusterState)) {
        f(&mut self.state.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records a decision: logged, counted and kept.
    pub fn record(&self, d: Decision) {
        match d.outcome {
            Outcome::Started | Outcome::Committed => tracing::info!(
                kind = d.kind, service = %d.service, image = ?d.image, from = %d.from, to = %d.to,
                mode = ?d.mode, outcome = d.outcome.as_str(), reason = %d.reason, why = %d.why,
                "coordinator decision"
            ),
            Outcome::Failed => tracing::warn!(
                kind = d.kind, service = %d.service, image = ?d.image, from = %d.from, to = %d.to,
                outcome = d.outcome.as_str(), reason = %d.reason,
                "coordinator decision failed"
            ),
            _ => tracing::info!(
                kind = d.kind, service = %d.service, image = ?d.image, from = %d.from, to = %d.to,
                mode = ?d.mode, outcome = d.outcome.as_str(), reason = %d.reason, why = %d.why,
                "coordinator decision not carried out"
            ),
        }
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((d.kind, d.outcome.as_str()))
            .or_default() += 1;
        self.update(|s| {
            s.decisions.push_back(d);
            while s.decisions.len() > KEPT {
                s.decisions.pop_front();
            }
        });
    }

    /// Keeps a copy that ended.
    pub fn copy_done(&self, d: CopyDone) {
        self.update(|s| {
            s.copies_done.push_back(d);
            while s.copies_done.len() > COPIES_KEPT {
                s.copies_done.pop_front();
            }
        });
    }

    /// Decisions counted by (kind, outcome).
    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Why `m` was planned, in a line: its source's trigger and the numbers behind it.
pub fn why(plan: &Plan, m: &Migration) -> String {
    let Some(t) = plan
        .nodes
        .iter()
        .find(|n| n.node == m.from)
        .and_then(|n| n.trigger.as_ref())
    else {
        return format!("{} fired", m.from);
    };
    let pct = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{:.0}%", v * 100.0));
    format!(
        "{} fired ({}): load {} now, forecast {}, threshold {}, {} of the last {} samples over; \
         {} leaves (correlation {:.2}) to {} in {} mode",
        m.from,
        format!("{:?}", t.reason).to_lowercase(),
        pct(t.u_max),
        pct(t.u_max_forecast),
        pct(Some(t.threshold)),
        t.above_in_window,
        t.n,
        m.service,
        m.rho,
        m.to,
        format!("{:?}", m.mode).to_lowercase(),
    )
}
