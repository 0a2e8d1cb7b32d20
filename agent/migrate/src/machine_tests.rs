//! Both machines together: every interleaving (up to a bound) of the source's decision, the
//! messages between the agents (delivered late, or lost), the target's start, timers and a
//! crash of either agent, from the moment the target holds the verified copy as prepared.
//! The service never runs on both nodes at once.

use std::collections::HashSet;

use super::journal::{SourcePhase, TargetPhase};
use super::source_machine::{self, Halt, Handed, SourceEffect, SourceEvent, SourceState};
use super::target_machine::{self, Phase, TargetEffect, TargetEvent};

/// Which request of the source an answer is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Req {
    HandOff,
    Abandon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct World {
    src: SourceState,
    src_journal: Option<SourcePhase>,
    src_runs: bool,
    /// The target machine's phase (the shell's, counting an answered start as `Started`),
    /// and what its journal holds.
    tgt: Phase,
    tgt_journal: Phase,
    /// From the start of the service's process until it is stopped.
    tgt_runs: bool,
    /// A start in progress, and whether the hand-off (not an adoption) asked for it.
    starting: Option<bool>,
    /// An abandon waiting for that start to end before it gives the service back.
    abandon_parked: bool,
    /// Messages on their way to the target.
    decided_msg: bool,
    handoff_msg: bool,
    abandon_msg: bool,
    abort_msg: bool,
    /// What the source waits for, and the answer on its way.
    asking: Option<Req>,
    answer: Option<(Req, Handed)>,
    restarts: u8,
}

impl World {
    fn start() -> World {
        World {
            src: SourceState::Halted(Halt::Freeze),
            src_journal: Some(SourcePhase::Copying),
            src_runs: false,
            tgt: Some(TargetPhase::Prepared),
            tgt_journal: Some(TargetPhase::Prepared),
            tgt_runs: false,
            starting: None,
            abandon_parked: false,
            decided_msg: false,
            handoff_msg: false,
            abandon_msg: false,
            abort_msg: false,
            asking: None,
            answer: None,
            restarts: 0,
        }
    }

    /// The source steps with `event` and runs the effects.
    fn source(&mut self, event: SourceEvent) {
        let Ok((next, effects)) = source_machine::step(self.src, event) else {
            return;
        };
        self.src = next;
        for e in effects {
            match e {
                SourceEffect::WriteJournal(p) => self.src_journal = Some(p),
                SourceEffect::RemoveJournal => self.src_journal = None,
                SourceEffect::Thaw | SourceEffect::Start | SourceEffect::StartHere => {
                    self.src_runs = true
                }
                SourceEffect::Freeze
                | SourceEffect::Stop
                | SourceEffect::KillFrozen
                | SourceEffect::KillLeftovers => self.src_runs = false,
                SourceEffect::AbortTransfer => self.abort_msg = true,
                SourceEffect::TellDecided => self.decided_msg = true,
                SourceEffect::HandOff => {
                    self.handoff_msg = true;
                    self.asking = Some(Req::HandOff);
                }
                _ => {}
            }
        }
    }

    /// The target steps with `event` (from `req`, when the source asked) and runs the effects.
    fn target(&mut self, event: TargetEvent, req: Option<Req>) {
        let (next, effects) = match target_machine::step(self.tgt, event) {
            Ok(step) => step,
            // Refused: the answer says nothing of where the service runs.
            Err(_) => {
                if let Some(r) = req {
                    self.answer = Some((r, Handed::Unknown));
                }
                return;
            }
        };
        self.tgt = next;
        for e in effects {
            match e {
                TargetEffect::WriteJournal(TargetPhase::Started) => {} // see `record`
                TargetEffect::WriteJournal(p) => self.tgt_journal = Some(p),
                TargetEffect::RemoveJournal => self.tgt_journal = None,
                TargetEffect::StartService => {
                    self.tgt_runs = true;
                    self.starting = Some(req == Some(Req::HandOff));
                }
                TargetEffect::StopService => self.tgt_runs = false,
                TargetEffect::WaitForStarts if self.starting.is_some() => {
                    // The rest (stop, drop, answer) once the start ended.
                    self.abandon_parked = true;
                    return;
                }
                TargetEffect::AnswerStarted => self.reply(req, Handed::Started),
                TargetEffect::AnswerGivenBack | TargetEffect::AnswerAbandoned => {
                    self.reply(req, Handed::GivenBack)
                }
                TargetEffect::AnswerNotHeld => self.reply(req, Handed::Unknown),
                _ => {}
            }
        }
    }

    fn reply(&mut self, req: Option<Req>, handed: Handed) {
        if let Some(r) = req {
            self.answer = Some((r, handed));
        }
    }

    /// Every next world.
    fn next(&self) -> Vec<World> {
        let mut out = Vec::new();
        let mut go = |f: &dyn Fn(&mut World)| {
            let mut w = *self;
            f(&mut w);
            if w != *self {
                out.push(w);
            }
        };
        // The source decides (its journal write lands, or fails and it resumes).
        if matches!(self.src, SourceState::Halted(_)) {
            go(&|w| {
                w.source(SourceEvent::TargetCommitted);
                w.source(SourceEvent::DecisionRecorded);
            });
            go(&|w| {
                w.source(SourceEvent::TargetCommitted);
                w.source(SourceEvent::Failed);
            });
        }
        // Messages arrive at the target.
        if self.decided_msg {
            go(&|w| {
                w.decided_msg = false;
                w.target(TargetEvent::Decided, None);
            });
        }
        if self.abort_msg {
            go(&|w| {
                w.abort_msg = false;
                w.target(TargetEvent::AbortCommitted, None);
            });
        }
        if self.handoff_msg && self.starting.is_none() {
            go(&|w| {
                w.handoff_msg = false;
                w.target(TargetEvent::HandOff, Some(Req::HandOff));
            });
        }
        if self.abandon_msg {
            go(&|w| {
                w.abandon_msg = false;
                w.target(TargetEvent::Abandon, Some(Req::Abandon));
            });
        }
        // A start ends.
        if let Some(asked) = self.starting {
            for event in [TargetEvent::Healthy, TargetEvent::StartFailed] {
                go(&|w| {
                    w.starting = None;
                    w.target(event, asked.then_some(Req::HandOff));
                    if w.abandon_parked {
                        w.abandon_parked = false;
                        w.tgt_runs = false;
                        w.answer = Some((Req::Abandon, Handed::GivenBack));
                    }
                });
            }
        }
        // `Started` recorded after the answer.
        if self.tgt == Some(TargetPhase::Started) && self.tgt_journal != self.tgt {
            go(&|w| w.tgt_journal = Some(TargetPhase::Started));
        }
        // The watcher's timers (at any time: the machine ignores them where they do not
        // apply).
        go(&|w| w.target(TargetEvent::NoDecision, None));
        if self.starting.is_none() {
            go(&|w| w.target(TargetEvent::AdoptDue, None));
        }
        // The source hears an answer, or gives up waiting.
        if let (Some((r, handed)), Some(asking)) = (self.answer, self.asking) {
            if r == asking {
                go(&|w| {
                    w.answer = None;
                    w.asking = None;
                    w.source(SourceEvent::HandedOff(handed));
                });
            }
        }
        match self.asking {
            Some(Req::HandOff) => go(&|w| {
                w.asking = Some(Req::Abandon);
                w.abandon_msg = true;
            }),
            Some(Req::Abandon) => go(&|w| {
                w.asking = None;
                w.source(SourceEvent::HandedOff(Handed::Unknown));
            }),
            None => {}
        }
        // A pending source asks again.
        if self.src == SourceState::Pending && self.asking.is_none() {
            go(&|w| {
                w.handoff_msg = true;
                w.asking = Some(Req::HandOff);
            });
        }
        // A crash of either agent (twice in all): what is in flight to or from it is lost.
        if self.restarts < 2 {
            go(&|w| {
                w.restarts += 1;
                (w.asking, w.answer) = (None, None);
                if let Some(p) = w.src_journal {
                    w.source(SourceEvent::Restart(p));
                } else {
                    w.src = SourceState::Done; // over: nothing to recover
                }
            });
            go(&|w| {
                w.restarts += 1;
                (w.decided_msg, w.handoff_msg, w.abandon_msg, w.abort_msg) =
                    (false, false, false, false);
                (w.starting, w.abandon_parked, w.answer) = (None, false, None);
                w.tgt = w.tgt_journal;
                w.target(TargetEvent::Restart { expired: false }, None);
            });
        }
        out
    }
}

#[test]
fn no_interleaving_runs_the_service_on_both_nodes() {
    let mut seen = HashSet::new();
    let mut todo = vec![World::start()];
    while let Some(w) = todo.pop() {
        if !seen.insert(w) {
            continue;
        }
        assert!(!(w.src_runs && w.tgt_runs), "both run it: {w:#?}");
        todo.extend(w.next());
    }
    // The exploration reached the interesting ends: started there, resumed here.
    assert!(seen
        .iter()
        .any(|w| w.src == SourceState::Done && w.tgt_runs));
    assert!(seen
        .iter()
        .any(|w| w.src == SourceState::Resumed && w.src_runs));
    assert!(seen.len() > 500, "{} worlds", seen.len());
}
