//! The source's side of the hand-off (transport service `"handoff"`): once the move is
//! decided, the target is asked to start the service; without an answer it is asked to give
//! the service back (`Abandon`), and without an answer to that either the outcome is unknown
//! (the service may run there, so it must not run here).

use std::time::Duration;

use super::protocol::{Handoff, Switched, HANDOFF, START_TIMEOUT};
use super::source_machine::Handed;
use godwit_runtime::service::{ServiceSpec, ServiceTimings};
use godwit_transport::{open, Peer};

/// How long the source waits for the target to confirm it gave the service back.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);

/// A migrated service started on the target, with the target's timings (zero when it had
/// been started before).
#[derive(Debug, Clone, Default)]
pub(super) struct Started {
    pub(super) pid: Option<u32>,
    pub(super) spawn_s: f64,
    pub(super) healthy_s: f64,
    pub(super) vip_s: Option<f64>,
    /// The service's own start: its exec until its first passing check.
    pub(super) start_s: Option<f64>,
}

impl Started {
    pub(super) fn reply(&self) -> Handoff {
        Handoff::Started {
            pid: self.pid,
            spawn_s: self.spawn_s,
            healthy_s: self.healthy_s,
            vip_s: self.vip_s,
            start_s: self.start_s,
        }
    }
}

/// What a hand-off came to.
#[derive(Debug)]
pub(super) enum HandoffOutcome {
    /// The target runs the service.
    Started(Started),
    /// The target does not run it and never will: the source may.
    GivenBack(String),
    /// No answer: the target may or may not run it.
    Unknown(String),
}

impl HandoffOutcome {
    /// The outcome as the source's state machine takes it.
    pub(super) fn handed(&self) -> Handed {
        match self {
            HandoffOutcome::Started(_) => Handed::Started,
            HandoffOutcome::GivenBack(_) => Handed::GivenBack,
            HandoffOutcome::Unknown(_) => Handed::Unknown,
        }
    }
}

/// Sends `request` on a new hand-off stream to `peer` and reads its one answer within
/// `within`; `Err` says why there is none.
async fn ask(peer: &Peer, request: &Handoff, within: Duration) -> Result<Handoff, String> {
    let exchange = async {
        let mut ch = open(peer, HANDOFF).await.map_err(|e| e.to_string())?;
        ch.send(request).await.map_err(|e| e.to_string())?;
        ch.recv::<Handoff>().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(within, exchange).await {
        Ok(Ok(Some(answer))) => Ok(answer),
        Ok(Ok(None)) => Err("the target closed the hand-off stream".into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

/// Asks the target to start the decided service of `migration` as `spec` says (with the
/// service's stop and start `timings` here); without an answer, asks it to give the service
/// back.
pub(super) async fn hand_off(
    peer: &Peer,
    migration: &str,
    spec: &ServiceSpec,
    timings: Option<ServiceTimings>,
) -> HandoffOutcome {
    let start = Handoff::Start {
        migration: migration.to_string(),
        spec: Box::new(spec.clone()),
        timings,
    };
    let why = match ask(peer, &start, START_TIMEOUT + Duration::from_secs(5)).await {
        Ok(Handoff::Started {
            pid,
            spawn_s,
            healthy_s,
            vip_s,
            start_s,
        }) => {
            return HandoffOutcome::Started(Started {
                pid,
                spawn_s,
                healthy_s,
                vip_s,
                start_s,
            })
        }
        Ok(Handoff::Failed { reason }) => return HandoffOutcome::GivenBack(reason),
        // Neither says where the service runs: asked to give it back, the target answers
        // the same, and the outcome stays unknown.
        Ok(Handoff::NotHeld { reason }) => format!("the target: {reason}"),
        Ok(Handoff::Refused { reason }) => format!("the target refused: {reason}"),
        Ok(other) => format!("unexpected hand-off reply {other:?}"),
        Err(e) => format!("the hand-off: {e}"),
    };
    abandon(peer, migration, why).await
}

/// Asks the target to give the service of `migration` back (the hand-off failed for `why`),
/// and waits until it has.
pub(super) async fn abandon(peer: &Peer, migration: &str, why: String) -> HandoffOutcome {
    let abandon = Handoff::Abandon {
        migration: migration.to_string(),
    };
    match ask(peer, &abandon, ABANDON_TIMEOUT).await {
        Ok(Handoff::Abandoned) => {
            HandoffOutcome::GivenBack(format!("{why}; the target gave it back"))
        }
        // It had started the service before the abandon came (the answer was lost): it keeps
        // it, and the frozen instance here must never run again.
        Ok(Handoff::Started {
            pid,
            spawn_s,
            healthy_s,
            vip_s,
            start_s,
        }) => HandoffOutcome::Started(Started {
            pid,
            spawn_s,
            healthy_s,
            vip_s,
            start_s,
        }),
        Ok(Handoff::NotHeld { reason }) => {
            HandoffOutcome::Unknown(format!("{why}; the target: {reason}"))
        }
        Ok(Handoff::Refused { reason }) => {
            HandoffOutcome::Unknown(format!("{why}; the target refused: {reason}"))
        }
        _ => HandoffOutcome::Unknown(why),
    }
}

/// How long the source waits for the target to forget a migration.
const FORGET_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells the target that the source has acted on the outcome of `migration` (its instance
/// killed, or running here again) and forgot it: the target may forget it too. Best effort: a
/// target that does not hear it keeps the outcome, which costs a small file.
///
/// `switched`: when the service runs on the target, the move's mode and measured downtime,
/// which the target keeps as its switch latency.
pub(super) async fn forget(peer: &Peer, migration: &str, switched: Option<Switched>) {
    let forget = Handoff::Forget {
        migration: migration.to_string(),
        switched,
    };
    match ask(peer, &forget, FORGET_TIMEOUT).await {
        Ok(Handoff::Forgotten) => {}
        Ok(other) => tracing::info!(migration, reply = ?other, "the target kept the migration"),
        Err(e) => tracing::info!(migration, error = %e, "the target was not told to forget"),
    }
}
