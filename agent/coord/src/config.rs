//! The `[coordinator]` table.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::Role;

/// When a node starts a new group with itself as its only voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bootstrap {
    /// When the gossip table names no seeds (a lone node coordinates itself).
    Auto,
    /// Always (exactly one node of a new cluster; later starts find the log not empty).
    Yes,
    /// Never: the node joins a group through its peers.
    No,
}

/// Which rule the leader's moves follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// The placement policy (`[policy]`): forecasts, site energy and risk, correlation.
    Godwit,
    /// The classic static threshold (`[policy] threshold_base` on the current load, largest
    /// service to the least-loaded node that fits): a baseline to compare with.
    Reactive,
}

/// `[coordinator]`: the Raft group that places services, and the leases that fence nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSection {
    /// Place services through the coordinator. Off: each node starts its configured services
    /// itself, with no failover and no fencing.
    pub enabled: bool,
    /// `voter` (may vote, runs services), `witness` (votes, runs no services) or `learner`.
    pub role: Role,
    /// `auto`, `yes` or `no` (see [`Bootstrap`]).
    pub bootstrap: Bootstrap,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A node that could not renew its lease for this long stops its services.
    pub fence_after_ms: u64,
    /// How long after the lease the guard process kills them if the agent did not.
    pub guard_grace_ms: u64,
    /// Added to the failover bound for clock-rate differences.
    pub margin_ms: u64,
    /// Start the fence guard (`godwit fence-guard`).
    pub guard: bool,
    /// A watchdog device the guard arms (e.g. `/dev/watchdog`); none by default.
    pub watchdog: Option<PathBuf>,
    /// The leader carries out the policy's moves. Off: it plans and logs what it would do.
    pub act: bool,
    /// `godwit` or `reactive` (see [`PolicyMode`]).
    pub policy: PolicyMode,
    /// Moves the leader runs at once, cluster-wide.
    pub max_moves: u32,
    /// Moves the leader runs at once from or to one node.
    pub max_moves_per_node: u32,
    /// After a move of a service (started by the leader, committed or not), the leader does
    /// not move it again for this long.
    pub cooldown_ms: u64,
    /// Image pre-staging copies the leader runs at once, cluster-wide.
    pub max_copies: u32,
    /// Image pre-staging copies the leader runs at once to one node.
    pub max_copies_per_node: u32,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        CoordinatorSection {
            enabled: false,
            role: Role::Voter,
            bootstrap: Bootstrap::Auto,
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            fence_after_ms: 5000,
            guard_grace_ms: 1000,
            margin_ms: 2000,
            guard: true,
            watchdog: None,
            act: true,
            policy: PolicyMode::Godwit,
            max_moves: 2,
            max_moves_per_node: 1,
            cooldown_ms: 300_000,
            max_copies: 2,
            max_copies_per_node: 1,
        }
    }
}

impl CoordinatorSection {
    /// Checks the timers against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 >= self.election_min_ms {
            return Err(format!(
                "coordinator.heartbeat_ms = {} must be above 0 and under half of election_min_ms = {}",
                self.heartbeat_ms, self.election_min_ms
            ));
        }
        if self.election_min_ms >= self.election_max_ms {
            return Err(format!(
                "coordinator.election_min_ms = {} must be below election_max_ms = {}",
                self.election_min_ms, self.election_max_ms
            ));
        }
        if self.fence_after_ms < 2 * self.election_max_ms {
            return Err(format!(
                "coordinator.fence_after_ms = {} must be at least twice election_max_ms = {}: \
                 a re-election must not fence every node",
                self.fence_after_ms, self.election_max_ms
            ));
        }
        if self.max_moves == 0 || self.max_moves_per_node == 0 {
            return Err(format!(
                "coordinator.max_moves = {} and max_moves_per_node = {} must be at least 1 \
                 (act = false watches plans without moving anything)",
                self.max_moves, self.max_moves_per_node
            ));
        }
        if self.max_copies == 0 || self.max_copies_per_node == 0 {
            return Err(format!(
                "coordinator.max_copies = {} and max_copies_per_node = {} must be at least 1 \
                 (act = false watches plans without copying anything; [policy] \
                 prestage_budget_bytes = 0 plans no copies)",
                self.max_copies, self.max_copies_per_node
            ));
        }
        if self.margin_ms < self.fence_after_ms / 10 {
            return Err(format!(
                "coordinator.margin_ms = {} must be at least a tenth of fence_after_ms",
                self.margin_ms
            ));
        }
        Ok(())
    }

    /// The node settings for `me` under this section.
    pub fn settings(
        &self,
        me: crate::Member,
        site: &str,
        bootstrap: bool,
    ) -> crate::node::Settings {
        let mut s = crate::node::Settings::new(me);
        s.site = site.to_string();
        s.role = self.role;
        s.bootstrap = bootstrap;
        s.heartbeat = Duration::from_millis(self.heartbeat_ms);
        s.election_min = Duration::from_millis(self.election_min_ms);
        s.election_max = Duration::from_millis(self.election_max_ms);
        s.fence_after = Duration::from_millis(self.fence_after_ms);
        s.guard_grace = Duration::from_millis(self.guard_grace_ms);
        s.margin = Duration::from_millis(self.margin_ms);
        s.renew_every = (s.fence_after / 5).max(s.heartbeat);
        s
    }
}
