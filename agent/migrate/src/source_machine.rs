//! The source's side of a migration as a pure state machine: [`step`] takes where the move
//! stands and an event and returns the next state and what to do, as data. It does no I/O;
//! the driver (`drive.rs`), the migrator (`source.rs`) and recovery (`recovery.rs`) execute
//! the effects in order.
//!
//! The source coordinates the two-phase commit: before its decision (journalled
//! `Committed`) every failure resumes the service here; after it the service runs here again
//! only once the target said it gave it back, and the frozen instance is killed, never
//! thawed, otherwise. The table tests below try every order of events.

use super::journal::SourcePhase;

/// How the service is held for the final round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Halt {
    /// Frozen (its cgroup): transitional.
    Freeze,
    /// Stopped: intermittent.
    Stop,
}

/// Where a move stands on its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceState {
    /// Live rounds: the service runs here.
    Rounds,
    /// Frozen or stopped: the final round, the hash check, the commit on the target.
    Halted(Halt),
    /// The target committed its copy; the decision is being recorded here.
    Deciding(Halt),
    /// Decided (journalled): the service is the target's; the hand-off is under way.
    Decided(Halt),
    /// The hand-off went unanswered: the service runs nowhere here, and the hand-off is asked
    /// again until the target answers.
    Pending,
    /// The target runs the service; the copy here is gone.
    Done,
    /// The service runs here again.
    Resumed,
}

/// What the target said to the hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handed {
    /// It runs the service.
    Started,
    /// It does not run it and never will.
    GivenBack,
    /// No answer: it may or may not run it.
    Unknown,
}

/// What happened to a move on its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEvent {
    /// The live rounds are over: hold the service for the final round.
    Halt(Halt),
    /// A step before the decision failed (a round, the freeze, the hash check, the commit on
    /// the target, recording the decision).
    Failed,
    /// The target answered "Committed": its copy is prepared.
    TargetCommitted,
    /// The decision is durable here.
    DecisionRecorded,
    /// The hand-off's outcome.
    HandedOff(Handed),
    /// The agent started again and found the move journalled in this phase.
    Restart(SourcePhase),
}

/// What the shell does, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEffect {
    /// Record the phase durably before going on.
    WriteJournal(SourcePhase),
    /// Forget the journal entry: the move is over.
    RemoveJournal,
    /// Freeze the service.
    Freeze,
    /// Stop the service.
    Stop,
    /// Thaw the frozen service (it ran nothing since the freeze).
    Thaw,
    /// Start the stopped service again from its own copy.
    Start,
    /// Tell the target to drop its copy.
    AbortTransfer,
    /// Tell the target of the decision on the state channel ...
    TellDecided,
    /// ... and hand the service off at the same time (the hand-off repeats the decision).
    HandOff,
    /// Kill the frozen instance (never thaw it: the target runs the service or may).
    KillFrozen,
    /// Remove the service here and its copy of the state.
    RemoveCopy,
    /// Ask the target again later, until it answers.
    ResolveLater,
    /// After a restart: kill the leftover processes of the instance the agent ran (maybe
    /// frozen) ...
    KillLeftovers,
    /// ... and release its VIP.
    ReleaseVip,
    /// Keep the service from starting here, even when configured.
    KeepFromStarting,
    /// Start the service here from its own copy (it was not started since).
    StartHere,
    /// Append the outcome to the audit log (before the journal entry goes).
    Audit,
}

/// An event this state does not accept; nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The source's journalled phase while in `state` (`None`: no entry). `Deciding` may be
/// either side of the write.
pub fn journalled(state: SourceState) -> &'static [Option<SourcePhase>] {
    use SourcePhase as P;
    match state {
        SourceState::Rounds | SourceState::Halted(Halt::Freeze) => &[Some(P::Copying)],
        SourceState::Halted(Halt::Stop) => &[Some(P::Frozen)],
        SourceState::Deciding(Halt::Freeze) => &[Some(P::Copying), Some(P::Committed)],
        SourceState::Deciding(Halt::Stop) => &[Some(P::Frozen), Some(P::Committed)],
        SourceState::Decided(_) | SourceState::Pending => &[Some(P::Committed)],
        SourceState::Done | SourceState::Resumed => &[None],
    }
}

/// The next state and the effects of `event` in `state`.
pub fn step(
    state: SourceState,
    event: SourceEvent,
) -> Result<(SourceState, Vec<SourceEffect>), Refused> {
    use SourceEffect as E;
    use SourceEvent as Ev;
    use SourceState as S;
    // Undo the hold: the service never ran elsewhere.
    let resume = |h: Halt| match h {
        Halt::Freeze => E::Thaw,
        Halt::Stop => E::Start,
    };
    match (state, event) {
        // Freezing is not journalled first (an fsync on the downtime): a restart treats a
        // move still `Copying` as one that may have frozen the service, exactly as `Frozen`.
        (S::Rounds, Ev::Halt(Halt::Freeze)) => Ok((S::Halted(Halt::Freeze), vec![E::Freeze])),
        (S::Rounds, Ev::Halt(Halt::Stop)) => Ok((
            S::Halted(Halt::Stop),
            vec![E::WriteJournal(SourcePhase::Frozen), E::Stop],
        )),
        (S::Rounds, Ev::Failed) => Ok((S::Resumed, vec![E::AbortTransfer, E::RemoveJournal])),
        (S::Halted(h) | S::Deciding(h), Ev::Failed) => Ok((
            S::Resumed,
            vec![E::AbortTransfer, resume(h), E::RemoveJournal],
        )),
        // The decision: durable before the target is told.
        (S::Halted(h), Ev::TargetCommitted) => Ok((
            S::Deciding(h),
            vec![E::WriteJournal(SourcePhase::Committed)],
        )),
        (S::Deciding(h), Ev::DecisionRecorded) => {
            Ok((S::Decided(h), vec![E::TellDecided, E::HandOff]))
        }
        (S::Decided(_), Ev::HandedOff(Handed::Started)) => Ok((
            S::Done,
            vec![E::KillFrozen, E::RemoveCopy, E::RemoveJournal],
        )),
        // The target may run it: this instance never runs again; the journal keeps the move.
        (S::Decided(_), Ev::HandedOff(Handed::Unknown)) => {
            Ok((S::Pending, vec![E::KillFrozen, E::ResolveLater]))
        }
        // It never ran there, and the instance here ran nothing since the hold.
        (S::Decided(h), Ev::HandedOff(Handed::GivenBack)) => {
            Ok((S::Resumed, vec![resume(h), E::RemoveJournal]))
        }
        (S::Pending, Ev::HandedOff(Handed::Started)) => {
            Ok((S::Done, vec![E::RemoveCopy, E::Audit, E::RemoveJournal]))
        }
        (S::Pending, Ev::HandedOff(Handed::GivenBack)) => {
            Ok((S::Resumed, vec![E::StartHere, E::Audit, E::RemoveJournal]))
        }
        (S::Pending, Ev::HandedOff(Handed::Unknown)) => Ok((S::Pending, vec![E::ResolveLater])),
        // Whatever ran before the restart is lost; the journal says what was decided.
        (_, Ev::Restart(SourcePhase::Copying | SourcePhase::Frozen)) => Ok((
            S::Resumed,
            vec![
                E::KillLeftovers,
                E::ReleaseVip,
                E::StartHere,
                E::Audit,
                E::RemoveJournal,
            ],
        )),
        (_, Ev::Restart(SourcePhase::Committed)) => Ok((
            S::Pending,
            vec![
                E::KillLeftovers,
                E::ReleaseVip,
                E::KeepFromStarting,
                E::ResolveLater,
            ],
        )),
        (s, e) => Err(Refused(format!("{e:?} while {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::SourceEffect as E;
    use super::SourceEvent as Ev;
    use super::SourceState as S;
    use super::*;

    fn run(mut state: SourceState, events: &[SourceEvent]) -> (SourceState, Vec<SourceEffect>) {
        let mut all = Vec::new();
        for e in events {
            let (s, effects) = step(state, *e).unwrap_or_else(|r| panic!("{events:?}: {r}"));
            state = s;
            all.extend(effects);
        }
        (state, all)
    }

    const STATES: [SourceState; 11] = [
        S::Rounds,
        S::Halted(Halt::Freeze),
        S::Halted(Halt::Stop),
        S::Deciding(Halt::Freeze),
        S::Deciding(Halt::Stop),
        S::Decided(Halt::Freeze),
        S::Decided(Halt::Stop),
        S::Pending,
        S::Done,
        S::Resumed,
        S::Rounds,
    ];

    #[test]
    fn a_transitional_move_freezes_decides_hands_off_and_kills_the_frozen_instance() {
        let (state, effects) = run(
            S::Rounds,
            &[
                Ev::Halt(Halt::Freeze),
                Ev::TargetCommitted,
                Ev::DecisionRecorded,
                Ev::HandedOff(Handed::Started),
            ],
        );
        assert_eq!(state, S::Done);
        assert_eq!(
            effects,
            vec![
                E::Freeze,
                E::WriteJournal(SourcePhase::Committed),
                E::TellDecided,
                E::HandOff,
                E::KillFrozen,
                E::RemoveCopy,
                E::RemoveJournal,
            ]
        );
    }

    #[test]
    fn an_intermittent_move_journals_the_stop_first() {
        let (state, effects) = run(S::Rounds, &[Ev::Halt(Halt::Stop), Ev::Failed]);
        assert_eq!(state, S::Resumed);
        assert_eq!(
            effects,
            vec![
                E::WriteJournal(SourcePhase::Frozen),
                E::Stop,
                E::AbortTransfer,
                E::Start,
                E::RemoveJournal,
            ]
        );
    }

    #[test]
    fn any_failure_before_the_decision_resumes_the_service_here() {
        for (events, resumed_by) in [
            (vec![Ev::Failed], None),
            (vec![Ev::Halt(Halt::Freeze), Ev::Failed], Some(E::Thaw)),
            (vec![Ev::Halt(Halt::Stop), Ev::Failed], Some(E::Start)),
            (
                vec![Ev::Halt(Halt::Freeze), Ev::TargetCommitted, Ev::Failed],
                Some(E::Thaw),
            ),
            (
                vec![Ev::Halt(Halt::Stop), Ev::TargetCommitted, Ev::Failed],
                Some(E::Start),
            ),
        ] {
            let (state, effects) = run(S::Rounds, &events);
            assert_eq!(state, S::Resumed, "{events:?}");
            assert!(effects.contains(&E::AbortTransfer), "{events:?}");
            assert!(!effects.contains(&E::HandOff) && !effects.contains(&E::TellDecided));
            if let Some(r) = resumed_by {
                assert!(effects.contains(&r), "{events:?}");
            }
        }
    }

    #[test]
    fn after_the_decision_failures_never_resume_and_the_frozen_instance_is_never_thawed() {
        for h in [Halt::Freeze, Halt::Stop] {
            assert!(step(S::Decided(h), Ev::Failed).is_err());
            for handed in [Handed::Started, Handed::Unknown] {
                let (_, effects) = step(S::Decided(h), Ev::HandedOff(handed)).unwrap();
                assert_eq!(effects[0], E::KillFrozen, "{handed:?}");
                assert!(!effects.contains(&E::Thaw) && !effects.contains(&E::Start));
            }
            // Given back: the instance here ran nothing since the hold and resumes.
            let (state, effects) = step(S::Decided(h), Ev::HandedOff(Handed::GivenBack)).unwrap();
            assert_eq!(state, S::Resumed);
            assert!(!effects.contains(&E::KillFrozen));
        }
    }

    #[test]
    fn a_decision_is_made_only_after_the_target_committed() {
        for s in [S::Rounds, S::Halted(Halt::Freeze), S::Halted(Halt::Stop)] {
            assert!(step(s, Ev::DecisionRecorded).is_err(), "{s:?}");
            assert!(step(s, Ev::HandedOff(Handed::Started)).is_err(), "{s:?}");
        }
        assert!(step(S::Rounds, Ev::TargetCommitted).is_err());
    }

    #[test]
    fn an_unanswered_hand_off_keeps_asking_until_the_target_answers() {
        let (state, effects) = run(
            S::Decided(Halt::Freeze),
            &[
                Ev::HandedOff(Handed::Unknown),
                Ev::HandedOff(Handed::Unknown),
                Ev::HandedOff(Handed::GivenBack),
            ],
        );
        assert_eq!(state, S::Resumed);
        assert_eq!(
            effects,
            vec![
                E::KillFrozen,
                E::ResolveLater,
                E::ResolveLater,
                E::StartHere,
                E::Audit,
                E::RemoveJournal,
            ]
        );
        let (state, effects) = run(S::Pending, &[Ev::HandedOff(Handed::Started)]);
        assert_eq!(state, S::Done);
        assert_eq!(effects, vec![E::RemoveCopy, E::Audit, E::RemoveJournal]);
    }

    #[test]
    fn a_crash_at_every_state_restarts_from_what_the_journal_says() {
        for s in STATES {
            for at in journalled(s) {
                let Some(phase) = at else {
                    continue; // over: nothing to recover
                };
                let (after, effects) = step(s, Ev::Restart(*phase)).unwrap();
                assert_eq!(effects[..2], [E::KillLeftovers, E::ReleaseVip], "{s:?}");
                match phase {
                    SourcePhase::Committed => {
                        assert_eq!(after, S::Pending, "{s:?}");
                        assert!(effects.contains(&E::KeepFromStarting));
                        assert!(!effects.contains(&E::StartHere));
                    }
                    _ => {
                        // Not decided: the target never runs it (it drops a prepared copy
                        // without the decision), so it starts here.
                        assert_eq!(after, S::Resumed, "{s:?}");
                        assert!(effects.contains(&E::StartHere));
                    }
                }
            }
        }
    }

    /// Every order of up to five events from the start: the service is resumed here only
    /// before the decision or after "given back", the copy is removed only after "started",
    /// and the journal entry goes only at the end.
    #[test]
    fn no_order_of_events_resumes_the_service_after_a_decision_without_a_give_back() {
        let events = [
            Ev::Halt(Halt::Freeze),
            Ev::Halt(Halt::Stop),
            Ev::Failed,
            Ev::TargetCommitted,
            Ev::DecisionRecorded,
            Ev::HandedOff(Handed::Started),
            Ev::HandedOff(Handed::GivenBack),
            Ev::HandedOff(Handed::Unknown),
        ];
        let mut orders: Vec<Vec<SourceEvent>> = vec![vec![]];
        for _ in 0..5 {
            orders = orders
                .into_iter()
                .flat_map(|o| {
                    events.iter().map(move |e| {
                        let mut o = o.clone();
                        o.push(*e);
                        o
                    })
                })
                .collect();
        }
        for order in orders {
            let mut state = S::Rounds;
            let (mut decided, mut given_back, mut started) = (false, false, false);
            for ev in &order {
                let Ok((next, effects)) = step(state, *ev) else {
                    continue;
                };
                // Decided once the decision is durable (a failed write of it is no decision).
                decided |= *ev == Ev::DecisionRecorded;
                if let Ev::HandedOff(h) = ev {
                    given_back |= *h == Handed::GivenBack;
                    started |= *h == Handed::Started;
                }
                for e in &effects {
                    match e {
                        E::Thaw | E::Start | E::StartHere if decided => {
                            assert!(given_back && !started, "{order:?}")
                        }
                        E::RemoveCopy => assert!(started && !given_back, "{order:?}"),
                        E::HandOff | E::TellDecided => assert!(decided, "{order:?}"),
                        _ => {}
                    }
                }
                if effects.contains(&E::RemoveJournal) {
                    assert!(matches!(next, S::Done | S::Resumed), "{order:?}");
                }
                state = next;
            }
        }
    }
}
