//! The placement log's state machine: where every service runs, at which epoch, what is in
//! flight, and which nodes are fenced or cordoned. Pure: the Raft adapter feeds it committed
//! entries in log order, and every replica computes the same state from the same entries.
//!
//! **Epochs.** A service's epoch is the log index of the entry that committed its current
//! placement. It only grows. Every command that changes a placement names the epoch it expects
//! (a compare-and-set): a command decided on an older view is refused, not applied.
//!
//! **What may run where.** A node may run a service only while the log places it there; it
//! fsyncs the epoch before it starts it and refuses any command with an older one. A service
//! whose node is fenced is placed elsewhere only by a later entry, so the two never share an
//! epoch.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What happens to a service when its node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ha {
    /// Started from its image on another node; its state starts from whatever copy that node
    /// holds (often none).
    #[default]
    Restart,
    /// Stays down until an operator acts.
    None,
}

impl std::str::FromStr for Ha {
    type Err = String;
    fn from_str(s: &str) -> Result<Ha, String> {
        match s {
            "restart" => Ok(Ha::Restart),
            "none" => Ok(Ha::None),
            "standby" => {
                Err("ha = \"standby\" is not available yet; use \"restart\" or \"none\"".into())
            }
            other => Err(format!("ha = {other:?}: expected \"restart\" or \"none\"")),
        }
    }
}

/// Why a placement changed (kept in the log, shown to operators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Defined in a node's configuration, first placed there.
    Configured,
    /// An operator's command.
    Operator,
    /// A migration committed.
    Migrated,
    /// Its node was fenced and the coordinator restarted it here.
    Failover,
}

/// One entry of the log: the command, as proposed. Commands name what they expect, so that a
/// command decided on a stale view is refused when applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cmd {
    /// A service defined in `node`'s configuration: placed on `node` unless the log already
    /// knows it (then only the spec is refreshed when it is still placed on `node`).
    Define {
        /// The service's name.
        service: String,
        /// The node whose configuration defines it.
        node: String,
        /// The spec, as the runtime reads it (opaque here).
        spec: String,
        /// What to do when its node is lost.
        ha: Ha,
    },
    /// Place (or re-place) a service on a node, if its epoch is still `expect`.
    Place {
        service: String,
        node: String,
        expect: u64,
        reason: Reason,
        /// The term the leader decided it in (a failover), or 0: refused when the entry
        /// commits in another term, since what the leader heard in one term says nothing of
        /// the leases granted in the next.
        term: u64,
    },
    /// A migration's intent: `from` is about to move the service to `to`. Only one at a time.
    MigrateBegin {
        service: String,
        from: String,
        to: String,
        expect: u64,
    },
    /// The migration's decision (compare-and-set on the intent's epoch): the service is now
    /// `to`'s.
    MigrateCommit { service: String, intent: u64 },
    /// The migration ended without a move: the service stays on its node.
    MigrateAbort { service: String, intent: u64 },
    /// Leave the service unplaced (stopped everywhere).
    Unplace { service: String, expect: u64 },
    /// Forget a service entirely.
    Remove { service: String, expect: u64 },
    /// A node is fenced: by the coordinator after its lease surely ran out, or by an operator
    /// who powered it off.
    Fence {
        node: String,
        by: String,
        /// Wall-clock milliseconds, for operators only (never used to decide).
        at_unix_ms: u64,
        /// The term the leader decided it in, or 0 (an operator's): as for `Place`.
        term: u64,
    },
    /// A fenced node holds a fresh lease again: its fence record is closed.
    Unfence { node: String },
    /// Take a node out of (or back into) the set that may receive services.
    Cordon { node: String, on: bool },
    /// Stop (or let again) the coordinator's own moves: the policy still plans and says what
    /// it would do; moves already running finish. Operators' moves and failover are not
    /// affected.
    Pause {
        on: bool,
        /// Who asked (an operator's or a node's name).
        by: String,
        /// Wall-clock milliseconds, for operators only.
        at_unix_ms: u64,
    },
    /// Nothing (the leader's first entry of a term, and tests).
    Noop,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; the service's epoch is now `epoch` (the entry's index), or for commands that
    /// do not move a service, the entry's index.
    Applied { epoch: u64 },
    /// Nothing to do (already so).
    Unchanged { epoch: u64 },
    /// The epoch moved on: the command was decided on a stale view.
    Stale { current: u64 },
    /// Refused, with the reason.
    Refused { reason: String },
}

impl Outcome {
    /// The epoch, when the command took effect or was already so.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Outcome::Applied { epoch } | Outcome::Unchanged { epoch } => Some(*epoch),
            _ => None,
        }
    }
}

/// A migration in flight, as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The index of the `MigrateBegin` entry: the migration's fencing token.
    pub epoch: u64,
    pub from: String,
    pub to: String,
}

/// One service in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    /// The spec (opaque to the log).
    pub spec: String,
    pub ha: Ha,
    /// Where it runs; `None`: nowhere (unplaced, or waiting for a node).
    pub node: Option<String>,
    /// The index of the entry that committed `node`.
    pub epoch: u64,
    pub reason: Reason,
    /// A migration in flight.
    pub intent: Option<Intent>,
}

/// A fence, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The index of the `Fence` entry.
    pub index: u64,
    /// Who fenced it: `coordinator` or an operator's name.
    pub by: String,
    pub at_unix_ms: u64,
}

/// Who paused the coordinator's moves, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// The index of the `Pause` entry.
    pub index: u64,
    pub by: String,
    pub at_unix_ms: u64,
}

/// The state every replica computes from the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub services: BTreeMap<String, ServiceEntry>,
    /// Nodes fenced and not yet back.
    pub fenced: BTreeMap<String, FenceRecord>,
    pub cordoned: BTreeSet<String>,
    /// The coordinator's moves are paused (`Cmd::Pause`), since this record.
    #[serde(default)]
    pub paused: Option<PauseRecord>,
    /// The last index applied.
    pub applied: u64,
}

impl Placement {
    /// Applies the command committed at `index` (indexes strictly increase), in any term.
    pub fn apply(&mut self, index: u64, cmd: &Cmd) -> Outcome {
        self.apply_in(index, 0, cmd)
    }

    /// Applies the command committed at `index` by the leader of `term` (0: not known). A
    /// fence or failover decided in another term is refused.
    pub fn apply_in(&mut self, index: u64, term: u64, cmd: &Cmd) -> Outcome {
        debug_assert!(index > self.applied || self.applied == 0);
        self.applied = index;
        if let Cmd::Place { term: decided, .. } | Cmd::Fence { term: decided, .. } = cmd {
            if *decided != 0 && term != 0 && *decided != term {
                return Outcome::Refused {
                    reason: format!("decided in term {decided}, committed in term {term}"),
                };
            }
        }
        match cmd {
            Cmd::Noop => Outcome::Applied { epoch: index },
            Cmd::Define {
                service,
                node,
                spec,
                ha,
            } => match self.services.get_mut(service) {
                Some(e) => {
                    if e.node.as_deref() == Some(node.as_str()) && (e.spec != *spec || e.ha != *ha)
                    {
                        e.spec = spec.clone();
                        e.ha = *ha;
                    }
                    Outcome::Unchanged { epoch: e.epoch }
                }
                None => {
                    self.services.insert(
                        service.clone(),
                        ServiceEntry {
                            name: service.clone(),
                            spec: spec.clone(),
                            ha: *ha,
                            node: Some(node.clone()),
                            epoch: index,
                            reason: Reason::Configured,
                            intent: None,
                        },
                    );
                    Outcome::Applied { epoch: index }
                }
            },
            Cmd::Place {
                service,
                node,
                expect,
                reason,
                ..
            } => {
                let fenced = self.fenced.contains_key(node);
                let Some(e) = self.services.get_mut(service) else {
                    return unknown(service);
                };
                if e.epoch != *expect {
                    return Outcome::Stale { current: e.epoch };
                }
                if fenced {
                    return Outcome::Refused {
                        reason: format!("node {node} is fenced"),
                    };
                }
                if e.intent.is_some() {
                    return Outcome::Refused {
                        reason: format!("a migration of {service} is in flight"),
                    };
                }
                e.node = Some(node.clone());
                e.epoch = index;
                e.reason = reason.clone();
                Outcome::Applied { epoch: index }
            }
            Cmd::MigrateBegin {
                service,
                from,
                to,
                expect,
            } => {
                let refuse = self.refuse_target(to);
                let Some(e) = self.services.get_mut(service) else {
                    return unknown(service);
                };
                if e.epoch != *expect {
                    return Outcome::Stale { current: e.epoch };
                }
                if let Some(i) = &e.intent {
                    return Outcome::Refused {
                        reason: format!(
                            "a migration of {service} to {} is in flight (epoch {})",
                            i.to, i.epoch
                        ),
                    };
                }
                if e.node.as_deref() != Some(from.as_str()) {
                    return Outcome::Refused {
                        reason: format!(
                            "{service} runs on {}, not on {from}",
                            e.node.as_deref().unwrap_or("no node")
                        ),
                    };
                }
                if from == to {
                    return Outcome::Refused {
                        reason: format!("{service} already runs on {to}"),
                    };
                }
                if let Some(reason) = refuse {
                    return Outcome::Refused { reason };
                }
                e.intent = Some(Intent {
                    epoch: index,
                    from: from.clone(),
                    to: to.clone(),
                });
                e.epoch = index;
                Outcome::Applied { epoch: index }
            }
            Cmd::MigrateCommit { service, intent } => {
                let Some(e) = self.services.get_mut(service) else {
                    return unknown(service);
                };
                match &e.intent {
                    Some(i) if i.epoch == *intent && e.epoch == *intent => {
                        e.node = Some(i.to.clone());
                        e.intent = None;
                        e.epoch = index;
                        e.reason = Reason::Migrated;
                        Outcome::Applied { epoch: index }
                    }
                    _ => Outcome::Stale { current: e.epoch },
                }
            }
            Cmd::MigrateAbort { service, intent } => {
                let Some(e) = self.services.get_mut(service) else {
                    return unknown(service);
                };
                match &e.intent {
                    Some(i) if i.epoch == *intent && e.epoch == *intent => {
                        e.intent = None;
                        e.epoch = index;
                        Outcome::Applied { epoch: index }
                    }
                    _ => Outcome::Stale { current: e.epoch },
                }
            }
            Cmd::Unplace { service, expect } => {
                let Some(e) = self.services.get_mut(service) else {
                    return unknown(service);
                };
                if e.epoch != *expect {
                    return Outcome::Stale { current: e.epoch };
                }
                e.node = None;
                e.intent = None;
                e.epoch = index;
                e.reason = Reason::Operator;
                Outcome::Applied { epoch: index }
            }
            Cmd::Remove { service, expect } => {
                let Some(e) = self.services.get(service) else {
                    return unknown(service);
                };
                if e.epoch != *expect {
                    return Outcome::Stale { current: e.epoch };
                }
                self.services.remove(service);
                Outcome::Applied { epoch: index }
            }
            Cmd::Fence {
                node,
                by,
                at_unix_ms,
                ..
            } => {
                if let Some(f) = self.fenced.get(node) {
                    return Outcome::Unchanged { epoch: f.index };
                }
                self.fenced.insert(
                    node.clone(),
                    FenceRecord {
                        index,
                        by: by.clone(),
                        at_unix_ms: *at_unix_ms,
                    },
                );
                // A migration from or to a fenced node can no longer commit: the source is
                // gone (or the target will never start it). The service stays where the log
                // says; the intent is closed at this epoch.
                for e in self.services.values_mut() {
                    if let Some(i) = &e.intent {
                        if i.from == *node || i.to == *node {
                            e.intent = None;
                            e.epoch = index;
                        }
                    }
                }
                Outcome::Applied { epoch: index }
            }
            Cmd::Unfence { node } => match self.fenced.remove(node) {
                Some(_) => Outcome::Applied { epoch: index },
                None => Outcome::Unchanged { epoch: index },
            },
            Cmd::Pause { on, by, at_unix_ms } => match (on, &self.paused) {
                (true, None) => {
                    self.paused = Some(PauseRecord {
                        index,
                        by: by.clone(),
                        at_unix_ms: *at_unix_ms,
                    });
                    Outcome::Applied { epoch: index }
                }
                (false, Some(_)) => {
                    self.paused = None;
                    Outcome::Applied { epoch: index }
                }
                _ => Outcome::Unchanged { epoch: index },
            },
            Cmd::Cordon { node, on } => {
                let changed = if *on {
                    self.cordoned.insert(node.clone())
                } else {
                    self.cordoned.remove(node)
                };
                if changed {
                    Outcome::Applied { epoch: index }
                } else {
                    Outcome::Unchanged { epoch: index }
                }
            }
        }
    }

    fn refuse_target(&self, to: &str) -> Option<String> {
        if self.fenced.contains_key(to) {
            Some(format!("node {to} is fenced"))
        } else if self.cordoned.contains(to) {
            Some(format!("node {to} is cordoned"))
        } else {
            None
        }
    }

    /// The services the log places on `node`, with their epochs.
    pub fn on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ServiceEntry> + 'a {
        self.services
            .values()
            .filter(move |e| e.node.as_deref() == Some(node))
    }
}

fn unknown(service: &str) -> Outcome {
    Outcome::Refused {
        reason: format!("no service {service:?} in the placement log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn define(p: &mut Placement, i: u64, s: &str, n: &str) -> Outcome {
        p.apply(
            i,
            &Cmd::Define {
                service: s.into(),
                node: n.into(),
                spec: "spec".into(),
                ha: Ha::Restart,
            },
        )
    }

    #[test]
    fn a_configured_service_is_placed_once_and_a_second_definer_does_not_take_it() {
        let mut p = Placement::default();
        assert_eq!(define(&mut p, 1, "kv", "a"), Outcome::Applied { epoch: 1 });
        // Node b's configuration defines it too: it stays on a.
        assert_eq!(
            define(&mut p, 2, "kv", "b"),
            Outcome::Unchanged { epoch: 1 }
        );
        assert_eq!(p.services["kv"].node.as_deref(), Some("a"));
        assert_eq!(p.on_node("a").count(), 1);
        assert_eq!(p.on_node("b").count(), 0);
    }

    #[test]
    fn a_migration_commits_only_on_its_own_intent_epoch() {
        let mut p = Placement::default();
        define(&mut p, 1, "kv", "a");
        let begin = |to: &str, expect| Cmd::MigrateBegin {
            service: "kv".into(),
            from: "a".into(),
            to: to.into(),
            expect,
        };
        assert_eq!(p.apply(2, &begin("b", 1)), Outcome::Applied { epoch: 2 });
        // A second migration, decided on the same view, is stale.
        assert_eq!(p.apply(3, &begin("c", 1)), Outcome::Stale { current: 2 });
        // An operator's placement meanwhile is refused.
        let place = Cmd::Place {
            service: "kv".into(),
            node: "c".into(),
            expect: 2,
            reason: Reason::Operator,
            term: 0,
        };
        assert!(matches!(p.apply(4, &place), Outcome::Refused { .. }));
        // A commit naming another intent is stale; the right one moves it.
        let commit = |intent| Cmd::MigrateCommit {
            service: "kv".into(),
            intent,
        };
        assert_eq!(p.apply(5, &commit(1)), Outcome::Stale { current: 2 });
        assert_eq!(p.apply(6, &commit(2)), Outcome::Applied { epoch: 6 });
        assert_eq!(p.services["kv"].node.as_deref(), Some("b"));
        // Replayed, the commit does nothing: the epoch moved on.
        assert_eq!(p.apply(7, &commit(2)), Outcome::Stale { current: 6 });
        let abort = Cmd::MigrateAbort {
            service: "kv".into(),
            intent: 2,
        };
        assert_eq!(p.apply(8, &abort), Outcome::Stale { current: 6 });
        assert_eq!(p.services["kv"].node.as_deref(), Some("b"));
    }

    #[test]
    fn pause_and_resume_are_recorded_once_each() {
        let mut p = Placement::default();
        let pause = |on| Cmd::Pause {
            on,
            by: "operator alice".into(),
            at_unix_ms: 7,
        };
        assert_eq!(p.apply(1, &pause(false)), Outcome::Unchanged { epoch: 1 });
        assert_eq!(p.apply(2, &pause(true)), Outcome::Applied { epoch: 2 });
        // Paused again: the first record stays (who paused it first, and since when).
        assert_eq!(p.apply(3, &pause(true)), Outcome::Unchanged { epoch: 3 });
        assert_eq!(p.paused.as_ref().map(|r| r.index), Some(2));
        assert_eq!(p.apply(4, &pause(false)), Outcome::Applied { epoch: 4 });
        assert!(p.paused.is_none());
        // A log written before the field existed still reads.
        let mut doc = serde_json::to_value(&p).unwrap();
        doc.as_object_mut().unwrap().remove("paused");
        assert_eq!(serde_json::from_value::<Placement>(doc).unwrap(), p);
    }

    #[test]
    fn fencing_a_node_closes_its_migrations_and_refuses_it_as_a_target() {
        let mut p = Placement::default();
        define(&mut p, 1, "kv", "a");
        p.apply(
            2,
            &Cmd::MigrateBegin {
                service: "kv".into(),
                from: "a".into(),
                to: "b".into(),
                expect: 1,
            },
        );
        let fence = Cmd::Fence {
            node: "b".into(),
            by: "coordinator".into(),
            at_unix_ms: 0,
            term: 0,
        };
        assert_eq!(p.apply(3, &fence), Outcome::Applied { epoch: 3 });
        let e = &p.services["kv"];
        assert_eq!(
            (e.node.as_deref(), e.epoch, &e.intent),
            (Some("a"), 3, &None)
        );
        // The late commit of that migration is stale.
        let commit = Cmd::MigrateCommit {
            service: "kv".into(),
            intent: 2,
        };
        assert_eq!(p.apply(4, &commit), Outcome::Stale { current: 3 });
        let place = Cmd::Place {
            service: "kv".into(),
            node: "b".into(),
            expect: 3,
            reason: Reason::Failover,
            term: 0,
        };
        assert!(matches!(p.apply(5, &place), Outcome::Refused { .. }));
        assert_eq!(
            p.apply(6, &Cmd::Unfence { node: "b".into() }),
            Outcome::Applied { epoch: 6 }
        );
        assert_eq!(
            p.apply(
                7,
                &Cmd::Place {
                    service: "kv".into(),
                    node: "b".into(),
                    expect: 3,
                    reason: Reason::Failover,
                    term: 0,
                }
            ),
            Outcome::Applied { epoch: 7 }
        );
    }

    #[test]
    fn a_failover_decided_in_one_term_is_refused_when_committed_in_another() {
        let mut p = Placement::default();
        define(&mut p, 1, "kv", "a");
        let place = |term| Cmd::Place {
            service: "kv".into(),
            node: "b".into(),
            expect: 1,
            reason: Reason::Failover,
            term,
        };
        assert!(matches!(
            p.apply_in(2, 4, &place(3)),
            Outcome::Refused { .. }
        ));
        let fence = Cmd::Fence {
            node: "a".into(),
            by: "coordinator".into(),
            at_unix_ms: 0,
            term: 3,
        };
        assert!(matches!(p.apply_in(3, 4, &fence), Outcome::Refused { .. }));
        assert!(p.fenced.is_empty());
        assert_eq!(p.apply_in(4, 4, &place(4)), Outcome::Applied { epoch: 4 });
    }

    #[test]
    fn epochs_only_grow_over_any_command_sequence() {
        // A small exhaustive walk: every sequence of four commands from a fixed menu.
        let menu = |e: u64| -> Vec<Cmd> {
            vec![
                Cmd::Place {
                    service: "kv".into(),
                    node: "b".into(),
                    expect: e,
                    reason: Reason::Operator,
                    term: 0,
                },
                Cmd::MigrateBegin {
                    service: "kv".into(),
                    from: "a".into(),
                    to: "b".into(),
                    expect: e,
                },
                Cmd::MigrateCommit {
                    service: "kv".into(),
                    intent: e,
                },
                Cmd::MigrateAbort {
                    service: "kv".into(),
                    intent: e,
                },
                Cmd::Fence {
                    node: "b".into(),
                    by: "t".into(),
                    at_unix_ms: 0,
                    term: 0,
                },
                Cmd::Unfence { node: "b".into() },
                Cmd::Unplace {
                    service: "kv".into(),
                    expect: e,
                },
            ]
        };
        let n = menu(0).len();
        for code in 0..n.pow(4) {
            let mut p = Placement::default();
            define(&mut p, 1, "kv", "a");
            let mut last = 1;
            let mut c = code;
            for i in 0..4u64 {
                let e = p.services["kv"].epoch;
                let cmd = menu(e)[c % n].clone();
                c /= n;
                p.apply(2 + i, &cmd);
                let now = p.services["kv"].epoch;
                assert!(now >= last, "epoch went back: {last} -> {now} on {cmd:?}");
                last = now;
            }
        }
    }
}
