//! The target's side of a migration as a pure state machine: [`step`] takes the migration's
//! journalled phase and an event and returns the next phase and what to do, as data. It does
//! no I/O; the shells (`receiver.rs` for the state channel, `target.rs` for the hand-off, the
//! watcher and recovery) read the phase under the journal's guard, call [`step`] and execute
//! the effects in order.
//!
//! The phases are the journal's ([`TargetPhase`]), `None` when the journal holds no entry.
//! Two rules hold for every order of events (the table tests below try them):
//!
//! - **One place**: the service starts here only after the decision (`Owned`), and once it
//!   has started and said so (`Started`) nothing here gives it back.
//! - **No live state deleted**: the committed copy is dropped only while the service has not
//!   started here (`Prepared`, or `Owned` with the start given up or abandoned).

use std::time::Duration;

use super::journal::TargetPhase;

/// A target that knows the decision starts the service itself when no hand-off came by then
/// (the source died after deciding).
pub const ADOPT_AFTER: Duration = Duration::from_secs(3);
/// A target drops a prepared copy when no decision came by then (the source resumed, or died
/// before deciding and resumes when it restarts).
pub const PREPARED_WAIT: Duration = Duration::from_secs(30);
/// A `Returned` entry is kept this long after a restart, to answer a repeated hand-off with
/// "given back"; a `Started` one is kept until its source says it may go ([`TargetEvent::Forget`]).
pub const RETURNED_KEPT_MS: u64 = 30 * 86_400_000;

/// What happened to a migration on its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetEvent {
    /// A state transfer begins (`Begin` on the state channel).
    Begin,
    /// The sender asks for the commit of the verified copy.
    Commit,
    /// The source's decision, on the state channel.
    Decided,
    /// The sender aborts after the commit (it did not decide).
    AbortCommitted,
    /// The state channel ended: `failed` when it ended without a commit or with an error
    /// (an abort before the commit, a lost connection).
    ChannelEnded {
        /// Not by a commit or a decision.
        failed: bool,
    },
    /// The hand-off's `Start`: the source decided, start the service.
    HandOff,
    /// The start this side made passed its first health check.
    Healthy,
    /// The start this side made failed.
    StartFailed,
    /// The source gave up waiting for the hand-off's answer: give the service back unless it
    /// runs here already.
    Abandon,
    /// The migration was queued for the watcher (the channel ended, or found at a restart).
    Queued,
    /// [`PREPARED_WAIT`] passed since it was queued.
    NoDecision,
    /// [`ADOPT_AFTER`] passed since it was queued.
    AdoptDue,
    /// The source acted on the outcome: the entry may go.
    Forget,
    /// The agent started again (a crash or a restart) and found the entry; `expired` when it
    /// was last changed more than [`RETURNED_KEPT_MS`] ago.
    Restart {
        /// Older than [`RETURNED_KEPT_MS`] (only a `Returned` entry expires).
        expired: bool,
    },
}

/// What the shell does, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetEffect {
    /// Record a new entry in this phase (`Begin`).
    CreateJournal(TargetPhase),
    /// Record the phase durably (fsync) before going on.
    WriteJournal(TargetPhase),
    /// Forget the entry.
    RemoveJournal,
    /// Make the staging copy durable and exchange it into place (the commit).
    PutInPlace,
    /// Where the exchange of a commit that did not finish happened, exchange back: the state
    /// that was at the destination returns there, the copy to the staging directory.
    UndoCommit,
    /// Remove what the commit's exchange left at the staging name (the state that was at the
    /// destination before), once the vote is durable.
    DropPrevious,
    /// Remove the staging directory.
    DeleteStaging,
    /// Remove the committed copy (the service never ran here).
    DropCopy,
    /// Wait until no start of a service is in progress here (it sees the new phase and gives
    /// the service back itself).
    WaitForStarts,
    /// Stop and remove the service here and the process forked ahead for it.
    StopService,
    /// Start the service from the committed copy.
    StartService,
    /// Hand the migration to the watcher.
    Queue,
    /// Deliver `event` after `after` (the watcher's timers).
    Timer(Duration, TargetEvent),
    /// Answer the sender on the state channel: the copy is committed (`Committed`).
    AnswerCommitted,
    /// Answer the decision (`Owned`).
    AnswerOwned,
    /// Answer the hand-off: the service runs here.
    AnswerStarted,
    /// Answer the hand-off: the service does not run here and never will.
    AnswerGivenBack,
    /// Answer the abandon: given back.
    AnswerAbandoned,
    /// Answer: no such migration here (the source takes it as no answer).
    AnswerNotHeld,
    /// Answer the source's forget.
    AnswerForgotten,
}

/// An event this phase does not accept; nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A migration's phase on the target: the journal's, `None` without an entry.
pub type Phase = Option<TargetPhase>;

/// The next phase and the effects of `event` in `phase`.
pub fn step(phase: Phase, event: TargetEvent) -> Result<(Phase, Vec<TargetEffect>), Refused> {
    use TargetEffect as E;
    use TargetEvent as Ev;
    use TargetPhase as P;
    let stay = |effects: Vec<TargetEffect>| Ok((phase, effects));
    match (phase, event) {
        (None, Ev::Begin) => Ok((Some(P::Staging), vec![E::CreateJournal(P::Staging)])),
        (Some(_), Ev::Begin) => Err(Refused("the migration was seen before".into())),

        // The vote: durable before the source hears "Committed". `Committing` first, so a
        // crash between the exchange and the vote is undone, never taken for a staging copy
        // (the previous state sits at the staging name then).
        (Some(P::Staging), Ev::Commit) => Ok((
            Some(P::Prepared),
            vec![
                E::WriteJournal(P::Committing),
                E::PutInPlace,
                E::WriteJournal(P::Prepared),
                E::AnswerCommitted,
                E::DropPrevious,
            ],
        )),
        (_, Ev::Commit) => Err(Refused("the migration was given up here".into())),

        (Some(P::Prepared), Ev::Decided) => Ok((
            Some(P::Owned),
            vec![E::WriteJournal(P::Owned), E::AnswerOwned],
        )),
        // The hand-off, sent at the same time, got here first.
        (Some(P::Owned | P::Started), Ev::Decided) => stay(vec![E::AnswerOwned]),
        (p, Ev::Decided) => Err(Refused(format!(
            "decision for a migration that is {p:?} here"
        ))),

        (Some(P::Prepared), Ev::AbortCommitted) => Ok((
            Some(P::Returned),
            vec![E::DropCopy, E::WriteJournal(P::Returned)],
        )),
        // Decided (the abort is late) or already given back.
        (_, Ev::AbortCommitted) => stay(vec![]),

        (Some(P::Staging), Ev::ChannelEnded { failed: true }) => {
            Ok((None, vec![E::DeleteStaging, E::RemoveJournal]))
        }
        // The commit failed half-way: the destination gets back what it had.
        (Some(P::Committing), Ev::ChannelEnded { .. }) => Ok((
            None,
            vec![E::UndoCommit, E::DeleteStaging, E::RemoveJournal],
        )),
        // A commit got as far as being recorded: the watcher decides.
        (Some(_), Ev::ChannelEnded { failed: true }) => stay(vec![E::DeleteStaging, E::Queue]),
        (None, Ev::ChannelEnded { failed: true }) => stay(vec![E::DeleteStaging]),
        (Some(P::Prepared | P::Owned), Ev::ChannelEnded { failed: false }) => stay(vec![E::Queue]),
        (_, Ev::ChannelEnded { failed: false }) => stay(vec![]),

        // The decision comes with the hand-off: recorded on the way to the start (the state
        // channel's decision may have recorded it already).
        (Some(P::Prepared), Ev::HandOff) => Ok((
            Some(P::Owned),
            vec![E::WriteJournal(P::Owned), E::StartService],
        )),
        (Some(P::Owned), Ev::HandOff | Ev::AdoptDue) => stay(vec![E::StartService]),
        // Idempotent once started, and once given back.
        (Some(P::Started), Ev::HandOff) => stay(vec![E::AnswerStarted]),
        (Some(P::Returned), Ev::HandOff) => stay(vec![E::AnswerGivenBack]),
        // Never prepared here (or forgotten): this side knows nothing of where it runs.
        (_, Ev::HandOff) => stay(vec![E::AnswerNotHeld]),
        (_, Ev::AdoptDue) => stay(vec![]),

        // Answered before it is recorded: the record is an fsync off the source's path, which
        // waits for the answer to kill its frozen instance. The shell counts the migration as
        // `Started` from this step on (a crash before the record leaves `Owned`, which starts
        // the service here again: one place either way).
        (Some(P::Owned), Ev::Healthy) => Ok((
            Some(P::Started),
            vec![E::AnswerStarted, E::WriteJournal(P::Started)],
        )),
        (Some(P::Owned), Ev::StartFailed) => Ok((
            Some(P::Returned),
            vec![
                E::StopService,
                E::DropCopy,
                E::WriteJournal(P::Returned),
                E::AnswerGivenBack,
            ],
        )),
        // Abandoned while it started: it never answered, so it never ran for anyone.
        (Some(P::Returned), Ev::Healthy | Ev::StartFailed) => {
            stay(vec![E::StopService, E::DropCopy, E::AnswerGivenBack])
        }
        (p, Ev::Healthy | Ev::StartFailed) => Err(Refused(format!(
            "a start for a migration that is {p:?} here"
        ))),

        // Every "abandoned" waits for a start in progress to see the new phase and stop
        // the service: until then it may run here.
        (Some(P::Staging), Ev::Abandon) => Ok((
            Some(P::Returned),
            vec![
                E::WriteJournal(P::Returned),
                E::WaitForStarts,
                E::AnswerAbandoned,
            ],
        )),
        (Some(P::Committing), Ev::Abandon) => Ok((
            Some(P::Returned),
            vec![
                E::UndoCommit,
                E::DeleteStaging,
                E::WriteJournal(P::Returned),
                E::WaitForStarts,
                E::AnswerAbandoned,
            ],
        )),
        (Some(P::Prepared | P::Owned), Ev::Abandon) => Ok((
            Some(P::Returned),
            vec![
                E::WriteJournal(P::Returned),
                E::WaitForStarts,
                E::StopService,
                E::DropCopy,
                E::AnswerAbandoned,
            ],
        )),
        // It runs here and said so (or may have): never given back, the source hears it runs.
        (Some(P::Started), Ev::Abandon) => stay(vec![E::AnswerStarted]),
        (Some(P::Returned), Ev::Abandon) => stay(vec![E::WaitForStarts, E::AnswerAbandoned]),
        (None, Ev::Abandon) => stay(vec![E::AnswerNotHeld]),

        // The outcome reached the source and it acted on it.
        (Some(P::Started | P::Returned), Ev::Forget) => {
            Ok((None, vec![E::RemoveJournal, E::AnswerForgotten]))
        }
        (None, Ev::Forget) => stay(vec![E::AnswerForgotten]),
        (p, Ev::Forget) => Err(Refused(format!("the migration is {p:?} here: not over"))),

        (Some(P::Prepared), Ev::Queued) => stay(vec![E::Timer(PREPARED_WAIT, Ev::NoDecision)]),
        (Some(P::Owned), Ev::Queued) => stay(vec![E::Timer(ADOPT_AFTER, Ev::AdoptDue)]),
        (_, Ev::Queued) => stay(vec![]),

        (Some(P::Prepared), Ev::NoDecision) => Ok((
            Some(P::Returned),
            vec![E::StopService, E::DropCopy, E::WriteJournal(P::Returned)],
        )),
        (_, Ev::NoDecision) => stay(vec![]),

        // No transfer survives a restart.
        (Some(P::Staging), Ev::Restart { .. }) => {
            Ok((None, vec![E::DeleteStaging, E::RemoveJournal]))
        }
        (Some(P::Committing), Ev::Restart { .. }) => Ok((
            None,
            vec![E::UndoCommit, E::DeleteStaging, E::RemoveJournal],
        )),
        // Given back, but a start that was under way when the agent died may have left the
        // service's processes running (they outlive the agent): they go first. The entry
        // stays, to answer a late hand-off "given back", until its source forgets it.
        (Some(P::Returned), Ev::Restart { expired: false }) => {
            stay(vec![E::StopService, E::DeleteStaging])
        }
        (Some(P::Returned), Ev::Restart { expired: true }) => Ok((
            None,
            vec![E::StopService, E::DeleteStaging, E::RemoveJournal],
        )),
        (Some(P::Prepared | P::Owned), Ev::Restart { .. }) => stay(vec![E::Queue]),
        // Kept until the source forgets it: a late hand-off hears "started", never "not held".
        (Some(P::Started), Ev::Restart { .. }) => stay(vec![]),
        (None, Ev::Restart { .. }) => stay(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::TargetEffect as E;
    use super::TargetEvent as Ev;
    use super::TargetPhase as P;
    use super::*;

    const ALL: [Phase; 7] = [
        None,
        Some(P::Staging),
        Some(P::Committing),
        Some(P::Prepared),
        Some(P::Owned),
        Some(P::Started),
        Some(P::Returned),
    ];

    fn events() -> Vec<TargetEvent> {
        vec![
            Ev::Begin,
            Ev::Commit,
            Ev::Decided,
            Ev::AbortCommitted,
            Ev::ChannelEnded { failed: true },
            Ev::ChannelEnded { failed: false },
            Ev::HandOff,
            Ev::Healthy,
            Ev::StartFailed,
            Ev::Abandon,
            Ev::Queued,
            Ev::NoDecision,
            Ev::AdoptDue,
            Ev::Forget,
            Ev::Restart { expired: false },
            Ev::Restart { expired: true },
        ]
    }

    /// Runs `events` from `phase`; refused events change nothing. Returns the phase and every
    /// effect in order.
    fn run(mut phase: Phase, events: &[TargetEvent]) -> (Phase, Vec<TargetEffect>) {
        let mut all = Vec::new();
        for e in events {
            if let Ok((p, effects)) = step(phase, *e) {
                phase = p;
                all.extend(effects);
            }
        }
        (phase, all)
    }

    /// The journalled phase after each effect of `phase`'s `event`: a crash may stop the
    /// shell between any two effects.
    fn journalled(before: Phase, effects: &[TargetEffect]) -> Vec<Phase> {
        let mut at = before;
        let mut out = vec![at];
        for e in effects {
            match e {
                E::CreateJournal(p) | E::WriteJournal(p) => at = Some(*p),
                E::RemoveJournal => at = None,
                _ => {}
            }
            out.push(at);
        }
        out
    }

    #[test]
    fn the_happy_path_starts_once_after_the_decision() {
        let (phase, effects) = run(
            None,
            &[
                Ev::Begin,
                Ev::Commit,
                Ev::Decided,
                Ev::ChannelEnded { failed: false },
                Ev::HandOff,
                Ev::Healthy,
            ],
        );
        assert_eq!(phase, Some(P::Started));
        assert_eq!(
            effects,
            vec![
                E::CreateJournal(P::Staging),
                E::WriteJournal(P::Committing),
                E::PutInPlace,
                E::WriteJournal(P::Prepared),
                E::AnswerCommitted,
                E::DropPrevious,
                E::WriteJournal(P::Owned),
                E::AnswerOwned,
                E::Queue,
                E::StartService,
                E::AnswerStarted,
                E::WriteJournal(P::Started),
            ]
        );
    }

    #[test]
    fn a_hand_off_before_the_decision_on_the_state_channel_counts_as_the_decision() {
        let (phase, effects) = run(Some(P::Prepared), &[Ev::HandOff, Ev::Decided, Ev::Healthy]);
        assert_eq!(phase, Some(P::Started));
        assert_eq!(
            effects,
            vec![
                E::WriteJournal(P::Owned),
                E::StartService,
                E::AnswerOwned,
                E::AnswerStarted,
                E::WriteJournal(P::Started),
            ]
        );
        // And after the start, a late decision changes nothing.
        assert_eq!(
            step(Some(P::Started), Ev::Decided),
            Ok((Some(P::Started), vec![E::AnswerOwned]))
        );
    }

    #[test]
    fn the_service_never_starts_before_the_decision() {
        for events in [
            vec![Ev::Begin, Ev::Healthy],
            vec![Ev::Begin, Ev::HandOff],
            vec![Ev::Begin, Ev::AdoptDue],
            vec![Ev::Begin, Ev::Commit, Ev::AdoptDue],
            vec![
                Ev::Begin,
                Ev::Commit,
                Ev::Queued,
                Ev::Restart { expired: true },
            ],
        ] {
            let (_, effects) = run(None, &events);
            assert!(
                !effects.contains(&E::StartService),
                "{events:?}: {effects:?}"
            );
        }
    }

    #[test]
    fn abandon_during_the_start_gives_the_service_back_before_it_answers() {
        // The hand-off started the service; the source gave up waiting before the answer.
        let (phase, effects) = run(Some(P::Owned), &[Ev::Abandon]);
        assert_eq!(phase, Some(P::Returned));
        assert_eq!(
            effects,
            vec![
                E::WriteJournal(P::Returned),
                E::WaitForStarts,
                E::StopService,
                E::DropCopy,
                E::AnswerAbandoned,
            ]
        );
        // The start then finishes (either way) and gives it back without answering "started".
        for end in [Ev::Healthy, Ev::StartFailed] {
            let (phase, effects) = step(Some(P::Returned), end).unwrap();
            assert_eq!(phase, Some(P::Returned));
            assert!(!effects.contains(&E::AnswerStarted), "{effects:?}");
            assert!(!effects.contains(&E::StartService));
        }
    }

    #[test]
    fn abandon_after_the_start_answered_keeps_the_service_and_its_state() {
        let (phase, effects) = run(Some(P::Owned), &[Ev::Healthy, Ev::Abandon]);
        assert_eq!(phase, Some(P::Started));
        assert_eq!(
            effects,
            vec![
                E::AnswerStarted,
                E::WriteJournal(P::Started),
                E::AnswerStarted
            ]
        );
    }

    #[test]
    fn a_late_hand_off_after_abandon_is_answered_given_back_and_starts_nothing() {
        for from in [Some(P::Staging), Some(P::Prepared), Some(P::Owned)] {
            let (phase, _) = run(from, &[Ev::Abandon]);
            assert_eq!(phase, Some(P::Returned));
            assert_eq!(
                step(phase, Ev::HandOff),
                Ok((phase, vec![E::AnswerGivenBack]))
            );
            assert!(step(phase, Ev::Decided).is_err());
            assert_eq!(step(phase, Ev::AdoptDue), Ok((phase, vec![])));
            assert!(step(phase, Ev::Commit).is_err(), "{from:?}");
        }
    }

    #[test]
    fn unknown_ids_are_answered_not_held_never_given_back() {
        // "Not held" says nothing about where the service runs: the source must not read it
        // as "given back" and run a stale copy.
        for ev in [Ev::HandOff, Ev::Abandon] {
            assert_eq!(step(None, ev), Ok((None, vec![E::AnswerNotHeld])), "{ev:?}");
        }
        for p in [P::Staging, P::Committing] {
            assert_eq!(
                step(Some(p), Ev::HandOff),
                Ok((Some(p), vec![E::AnswerNotHeld]))
            );
        }
        assert!(step(None, Ev::Decided).is_err());
        assert!(step(None, Ev::Commit).is_err());
        assert!(step(None, Ev::Healthy).is_err());
        assert_eq!(step(None, Ev::NoDecision), Ok((None, vec![])));
        // A known id begins only once.
        for p in ALL.into_iter().flatten() {
            assert!(step(Some(p), Ev::Begin).is_err(), "{p:?}");
        }
    }

    #[test]
    fn an_outcome_is_kept_until_the_source_forgets_it() {
        // However long after, a started migration answers "started" until the forget.
        for expired in [false, true] {
            assert_eq!(
                step(Some(P::Started), Ev::Restart { expired }),
                Ok((Some(P::Started), vec![]))
            );
        }
        assert_eq!(
            run(
                Some(P::Started),
                &[Ev::Restart { expired: true }, Ev::HandOff]
            )
            .1,
            vec![E::AnswerStarted]
        );
        for p in [P::Started, P::Returned] {
            assert_eq!(
                step(Some(p), Ev::Forget),
                Ok((None, vec![E::RemoveJournal, E::AnswerForgotten]))
            );
        }
        // Nothing still under way is forgotten.
        for p in [P::Staging, P::Committing, P::Prepared, P::Owned] {
            assert!(step(Some(p), Ev::Forget).is_err(), "{p:?}");
        }
        assert_eq!(step(None, Ev::Forget), Ok((None, vec![E::AnswerForgotten])));
    }

    #[test]
    fn a_commit_cut_short_is_undone_before_the_staging_copy_goes() {
        for ev in [
            Ev::Restart { expired: false },
            Ev::ChannelEnded { failed: true },
            Ev::ChannelEnded { failed: false },
        ] {
            let (phase, effects) = step(Some(P::Committing), ev).unwrap();
            assert_eq!(phase, None, "{ev:?}");
            assert_eq!(
                effects,
                vec![E::UndoCommit, E::DeleteStaging, E::RemoveJournal],
                "{ev:?}"
            );
        }
        // The previous state is dropped only after the vote is durable.
        let (_, effects) = step(Some(P::Staging), Ev::Commit).unwrap();
        let voted = effects
            .iter()
            .position(|e| *e == E::WriteJournal(P::Prepared))
            .unwrap();
        let dropped = effects.iter().position(|e| *e == E::DropPrevious).unwrap();
        let committing = effects
            .iter()
            .position(|e| *e == E::WriteJournal(P::Committing))
            .unwrap();
        let put = effects.iter().position(|e| *e == E::PutInPlace).unwrap();
        assert!(
            committing < put && put < voted && voted < dropped,
            "{effects:?}"
        );
    }

    #[test]
    fn a_prepared_copy_without_a_decision_is_dropped_and_an_owned_one_adopted() {
        assert_eq!(
            run(Some(P::Prepared), &[Ev::Queued]).1,
            vec![E::Timer(PREPARED_WAIT, Ev::NoDecision)]
        );
        assert_eq!(
            run(Some(P::Prepared), &[Ev::NoDecision]),
            (
                Some(P::Returned),
                vec![E::StopService, E::DropCopy, E::WriteJournal(P::Returned)]
            )
        );
        // The decision came meanwhile: nothing dropped.
        assert_eq!(
            run(Some(P::Prepared), &[Ev::Decided, Ev::NoDecision]).0,
            Some(P::Owned)
        );
        assert_eq!(
            run(Some(P::Owned), &[Ev::Queued]).1,
            vec![E::Timer(ADOPT_AFTER, Ev::AdoptDue)]
        );
        assert_eq!(
            run(Some(P::Owned), &[Ev::AdoptDue, Ev::Healthy]),
            (
                Some(P::Started),
                vec![
                    E::StartService,
                    E::AnswerStarted,
                    E::WriteJournal(P::Started)
                ]
            )
        );
    }

    #[test]
    fn a_crash_at_every_phase_recovers_to_one_place() {
        // (journalled phase at the crash, phase after the restart, effects of the restart)
        let table: [(Phase, Phase, Vec<TargetEffect>); 9] = [
            (None, None, vec![]),
            (
                Some(P::Staging),
                None,
                vec![E::DeleteStaging, E::RemoveJournal],
            ),
            (
                Some(P::Committing),
                None,
                vec![E::UndoCommit, E::DeleteStaging, E::RemoveJournal],
            ),
            (Some(P::Prepared), Some(P::Prepared), vec![E::Queue]),
            (Some(P::Owned), Some(P::Owned), vec![E::Queue]),
            (Some(P::Started), Some(P::Started), vec![]),
            (
                Some(P::Returned),
                Some(P::Returned),
                vec![E::StopService, E::DeleteStaging],
            ),
            (
                Some(P::Returned),
                None,
                vec![E::StopService, E::DeleteStaging, E::RemoveJournal],
            ),
            (Some(P::Started), Some(P::Started), vec![]),
        ];
        for (i, (at, after, effects)) in table.into_iter().enumerate() {
            let expired = i >= 7;
            assert_eq!(
                step(at, Ev::Restart { expired }),
                Ok((after, effects.clone())),
                "{at:?}"
            );
            // What the restart leads to: a prepared copy waits for the decision, an owned one
            // starts here; nothing that started is dropped.
            let (end, all) = run(after, &[Ev::Queued, Ev::NoDecision, Ev::AdoptDue]);
            match at {
                Some(P::Prepared) => assert_eq!(end, Some(P::Returned)),
                Some(P::Owned) => assert!(all.contains(&E::StartService)),
                _ => assert!(!all.contains(&E::StartService), "{at:?}: {all:?}"),
            }
        }
    }

    /// A crash between any two effects of any step leaves a journalled phase from which a
    /// restart never both starts the service here and lets the source run it, and never
    /// drops a copy the service started from.
    #[test]
    fn a_crash_between_any_two_effects_is_recovered_safely() {
        for from in ALL {
            for ev in events() {
                let Ok((_, effects)) = step(from, ev) else {
                    continue;
                };
                for at in journalled(from, &effects) {
                    let (_, after) = run(
                        at,
                        &[
                            Ev::Restart { expired: false },
                            Ev::Queued,
                            Ev::NoDecision,
                            Ev::AdoptDue,
                        ],
                    );
                    if matches!(at, Some(P::Started)) {
                        assert!(
                            !after.contains(&E::DropCopy) && !after.contains(&E::StopService),
                            "{from:?} {ev:?}: {after:?}"
                        );
                    }
                    if after.contains(&E::StartService) {
                        assert_eq!(at, Some(P::Owned), "{from:?} {ev:?}");
                    }
                }
            }
        }
    }

    /// Every order of up to four events from every phase: the service is started only from
    /// `Owned`; once it answered "started" nothing stops it or drops its state; a copy is
    /// dropped only in a step that also makes or keeps the migration `Returned`; and the
    /// source hears "given back" or "abandoned" only when the target will not run it.
    #[test]
    fn no_order_of_events_runs_the_service_here_after_giving_it_back() {
        let evs = events();
        let mut orders: Vec<Vec<TargetEvent>> = vec![vec![]];
        for _ in 0..4 {
            orders = orders
                .into_iter()
                .flat_map(|o| {
                    evs.iter().map(move |e| {
                        let mut o = o.clone();
                        o.push(*e);
                        o
                    })
                })
                .collect();
        }
        for from in ALL {
            for order in &orders {
                let mut phase = from;
                let mut answered_started = false;
                let mut given_back = false;
                for ev in order {
                    let Ok((next, effects)) = step(phase, *ev) else {
                        continue;
                    };
                    // An abandon is answered only once no start is in progress here.
                    if let Some(i) = effects.iter().position(|e| *e == E::AnswerAbandoned) {
                        assert!(
                            effects[..i].contains(&E::WaitForStarts),
                            "{from:?} {order:?}"
                        );
                    }
                    for e in &effects {
                        match e {
                            E::StartService => {
                                assert_eq!(next, Some(P::Owned), "{from:?} {order:?}");
                                assert!(!given_back, "{from:?} {order:?}");
                            }
                            E::AnswerStarted => answered_started = true,
                            E::AnswerGivenBack | E::AnswerAbandoned => {
                                assert!(!answered_started, "{from:?} {order:?}");
                                given_back = true;
                            }
                            E::DropCopy | E::StopService => {
                                assert!(!answered_started, "{from:?} {order:?}");
                                assert_ne!(phase, Some(P::Started), "{from:?} {order:?}");
                                // Given back now, or forgotten after it was given back.
                                assert!(
                                    next == Some(P::Returned)
                                        || (phase, next) == (Some(P::Returned), None),
                                    "{from:?} {order:?}"
                                );
                            }
                            _ => {}
                        }
                    }
                    if given_back && next.is_some() {
                        assert_eq!(next, Some(P::Returned), "{from:?} {order:?}");
                    }
                    if next.is_none() {
                        // Forgotten (a restart): ids are never reused.
                        (answered_started, given_back) = (false, false);
                    }
                    phase = next;
                }
            }
        }
    }
}
