//! The guard rails between the policy's plan and a move: a switch to watch plans without
//! acting, the operator's pause (in the placement log), at most `max_moves` moves at once in
//! the cluster and `max_moves_per_node` from or to any node, and a per-service cool-down.
//! Pure: the clock is a number the caller passes.

use std::collections::BTreeMap;

use serde::Serialize;

/// What happened to a planned decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Started.
    Started,
    /// Started, and the move committed: the service runs on the target.
    Committed,
    /// Started, and the move ended without moving it (refused, rolled back, unreachable).
    Failed,
    /// `act = false`: planned and logged only.
    Observed,
    /// The operator paused the coordinator's moves.
    Paused,
    /// A move of this service is already in flight.
    InFlight,
    /// The service moved less than `cooldown_ms` ago.
    Cooldown,
    /// `max_moves` moves are running in the cluster (for a copy: `max_copies` copies).
    ClusterCap,
    /// `max_moves_per_node` moves are running from or to its source or target (for a copy:
    /// `max_copies_per_node` copies to its target).
    NodeCap,
    /// A copy: the target holds the image already.
    Held,
    /// A copy: it would take the images in flight over `prestage_budget_bytes`.
    Budget,
    /// A copy: no live node is known to hold the image.
    NoSource,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Committed => "committed",
            Outcome::Failed => "failed",
            Outcome::Observed => "observed",
            Outcome::Paused => "paused",
            Outcome::InFlight => "in_flight",
            Outcome::Cooldown => "cooldown",
            Outcome::ClusterCap => "cluster_cap",
            Outcome::NodeCap => "node_cap",
            Outcome::Held => "held",
            Outcome::Budget => "budget",
            Outcome::NoSource => "no_source",
        }
    }
}

/// The rails' settings (`[coordinator]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RailsConfig {
    pub act: bool,
    pub max_moves: usize,
    pub max_moves_per_node: usize,
    pub cooldown_ms: u64,
}

/// A move in flight: the service, its source and its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub service: String,
    pub from: String,
    pub to: String,
}

/// The rails' memory: this leader's moves in flight and when each service last moved.
#[derive(Debug)]
pub struct Rails {
    cfg: RailsConfig,
    running: BTreeMap<String, Move>,
    moved_at_ms: BTreeMap<String, u64>,
}

impl Rails {
    pub fn new(cfg: RailsConfig) -> Rails {
        Rails {
            cfg,
            running: BTreeMap::new(),
            moved_at_ms: BTreeMap::new(),
        }
    }

    /// This leader's moves in flight.
    pub fn running(&self) -> impl Iterator<Item = &Move> {
        self.running.values()
    }

    /// The services still in their cool-down at `now_ms`: the plan is to leave them where they
    /// are and pick another of the node's services, not to pick them and be held back here.
    pub fn cooling(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.moved_at_ms
            .iter()
            .filter(move |(_, at)| now_ms.saturating_sub(**at) < self.cfg.cooldown_ms)
            .map(|(s, _)| s.as_str())
    }

    /// Decides whether `m` starts now. `paused`: the log's pause; `log_moves`: the moves the
    /// log has in flight (every intent, whoever started it). A move it lets start counts as
    /// running until [`Rails::finished`].
    pub fn admit(
        &mut self,
        m: &Move,
        paused: bool,
        log_moves: &[Move],
        now_ms: u64,
    ) -> (Outcome, String) {
        if let Some(held) = held_back(self.cfg.act, paused, "moves") {
            return held;
        }
        let mut moves: BTreeMap<&str, &Move> =
            log_moves.iter().map(|l| (l.service.as_str(), l)).collect();
        moves.extend(self.running.values().map(|r| (r.service.as_str(), r)));
        if moves.contains_key(m.service.as_str()) {
            return (Outcome::InFlight, "a move of it is in flight".into());
        }
        if let Some(at) = self.moved_at_ms.get(&m.service) {
            let since = now_ms.saturating_sub(*at);
            if since < self.cfg.cooldown_ms {
                return (
                    Outcome::Cooldown,
                    format!(
                        "moved {:.0} s ago; cool-down {:.0} s",
                        since as f64 / 1e3,
                        self.cfg.cooldown_ms as f64 / 1e3
                    ),
                );
            }
        }
        if moves.len() >= self.cfg.max_moves {
            return (
                Outcome::ClusterCap,
                format!(
                    "{} moves running, max_moves = {}",
                    moves.len(),
                    self.cfg.max_moves
                ),
            );
        }
        for node in [&m.from, &m.to] {
            let on = moves
                .values()
                .filter(|x| &x.from == node || &x.to == node)
                .count();
            if on >= self.cfg.max_moves_per_node {
                return (
                    Outcome::NodeCap,
                    format!(
                        "{on} moves running from or to {node}, max_moves_per_node = {}",
                        self.cfg.max_moves_per_node
                    ),
                );
            }
        }
        self.running.insert(m.service.clone(), m.clone());
        self.moved_at_ms.insert(m.service.clone(), now_ms);
        (Outcome::Started, format!("{} -> {}", m.from, m.to))
    }

    /// The move of `service` ended (either way); its cool-down runs from now.
    pub fn finished(&mut self, service: &str, now_ms: u64) {
        self.running.remove(service);
        self.moved_at_ms.insert(service.to_string(), now_ms);
    }
}

/// The first two rails of every order the leader gives (moves and copies alike): `act = false`
/// only observes; the log's pause holds `what` back.
pub(super) fn held_back(act: bool, paused: bool, what: &str) -> Option<(Outcome, String)> {
    if !act {
        return Some((
            Outcome::Observed,
            "[coordinator] act = false: planned, not carried out".into(),
        ));
    }
    paused.then(|| {
        (
            Outcome::Paused,
            format!("the coordinator's {what} are paused (godwit cluster resume)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(service: &str, from: &str, to: &str) -> Move {
        Move {
            service: service.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    fn rails(act: bool) -> Rails {
        Rails::new(RailsConfig {
            act,
            max_moves: 2,
            max_moves_per_node: 1,
            cooldown_ms: 60_000,
        })
    }

    #[test]
    fn a_burst_never_exceeds_the_caps() {
        let mut r = rails(true);
        // Ten nodes fire at once, each planning two moves; some targets are shared.
        let mut started = Vec::new();
        for i in 0..10 {
            for j in 0..2 {
                let m = migration(
                    &format!("s{i}-{j}"),
                    &format!("n{i}"),
                    &format!("t{}", j % 2),
                );
                let (o, _) = r.admit(&m, false, &[], 1000);
                if o == Outcome::Started {
                    started.push(m);
                }
                let running: Vec<&Move> = r.running().collect();
                assert!(running.len() <= 2, "{running:?}");
                for n in running.iter().flat_map(|x| [&x.from, &x.to]) {
                    let on = running
                        .iter()
                        .filter(|x| &x.from == n || &x.to == n)
                        .count();
                    assert!(on <= 1, "{n}: {running:?}");
                }
            }
        }
        assert_eq!(started.len(), 2, "two targets, one move each");
        // Moves the log knows of (an operator's) count too.
        let mut r = rails(true);
        let log = [Move {
            service: "x".into(),
            from: "n9".into(),
            to: "t0".into(),
        }];
        let (o, why) = r.admit(&migration("s", "n1", "t0"), false, &log, 0);
        assert_eq!(o, Outcome::NodeCap, "{why}");
        let (o, _) = r.admit(&migration("x", "n9", "t5"), false, &log, 0);
        assert_eq!(o, Outcome::InFlight);
    }

    #[test]
    fn pause_and_watch_only_start_nothing_and_a_moved_service_cools_down() {
        let m = migration("kv", "a", "b");
        let (o, why) = rails(false).admit(&m, false, &[], 0);
        assert_eq!(o, Outcome::Observed);
        assert!(why.contains("act = false"), "{why}");
        let mut r = rails(true);
        assert_eq!(r.admit(&m, true, &[], 0).0, Outcome::Paused);
        assert_eq!(r.running().count(), 0);
        assert_eq!(r.admit(&m, false, &[], 0).0, Outcome::Started);
        // Pausing stops new moves; the one running stays running until it ends.
        assert_eq!(
            r.admit(&migration("kv2", "c", "d"), true, &[], 0).0,
            Outcome::Paused
        );
        assert_eq!(r.running().count(), 1);
        r.finished("kv", 10_000);
        let (o, why) = r.admit(&m, false, &[], 40_000);
        assert_eq!(o, Outcome::Cooldown, "{why}");
        assert!(why.contains("30 s ago"), "{why}");
        assert_eq!(r.cooling(40_000).collect::<Vec<_>>(), ["kv"]);
        assert_eq!(r.cooling(70_001).count(), 0);
        assert_eq!(r.admit(&m, false, &[], 70_001).0, Outcome::Started);
    }
}
