//! The target's side of migrations into this node, past the state channel: the hand-off
//! (transport service `"handoff"`), the watcher that settles migrations left prepared or
//! owned, and the recovery at start. Every phase change is the target state machine's
//! ([`target_machine::step`]), taken under the journal's guard; this file runs the effects.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::error::MigrateError;
use super::handoff::Started;
use super::journal::{now_ms, Journal, JournalGuard, TargetEntry, TargetPhase};
use super::protocol::{Handoff, Switched, HANDOFF, START_TIMEOUT};
use super::target_machine::{self, TargetEffect, TargetEvent, RETURNED_KEPT_MS};
use super::vip::Takeover;
use crate::tasks::remove_tree;
use godwit_runtime::service::{Health, Manager, RunState, ServiceSpec};
use godwit_transport::{Channel, PeerInfo, Services};

/// How often the target checks a migrated service's health until it first passes: a TCP or
/// HTTP check that is refused costs tens of microseconds, so every 2 ms (the first pass comes
/// on average 1 ms after the service listens, not 5 as at 10 ms)...
const CUTOVER_POLL: Duration = Duration::from_millis(2);
/// ... and a command check, a process each time, every 10 ms.
const CUTOVER_POLL_COMMAND: Duration = Duration::from_millis(10);

/// The target's side of migrations into this node: the journal, and starting the services
/// whose move was decided (by the hand-off, or on its own when the source is gone).
#[derive(Debug)]
pub struct Target {
    journal: Arc<Journal>,
    manager: Arc<Manager>,
    /// One start at a time, so a hand-off and an adoption never start a service twice.
    starting: Arc<tokio::sync::Mutex<()>>,
    /// Migrations whose service passed its first check here while the journal still says
    /// `Owned` (`Started` is recorded just after the answer): the machine takes them as
    /// `Started`, so an abandon that comes meanwhile never gives a running service back.
    started: Mutex<HashSet<String>>,
    /// The owner of the watcher and the settlers.
    tasks: crate::Tasks,
    /// The placement log's part (with a coordinator): the epoch a migrated service starts
    /// under is admitted here first.
    gate: Option<Arc<dyn crate::gate::PlacementGate>>,
    /// Where the switch latencies of the moves into this node go ([`Target::keep_switches`]).
    switches: std::sync::OnceLock<Arc<super::switches::SwitchHistory>>,
}

/// A migrated service that stayed healthy, its VIP on the interface but not announced yet.
struct Ready {
    started: Started,
    vip: Option<Takeover>,
    /// The supervisor announced the VIP already (its own first pass came first).
    vip_active: bool,
    name: String,
    began: Instant,
}

impl Ready {
    /// Announces the VIP (the supervisor adds and announces it at its own first pass, and
    /// takes this one over then): clients come here from now on.
    async fn announce(self) -> Started {
        let vip_s = match self.vip {
            Some(_) if self.vip_active => Some(self.started.healthy_s),
            Some(vip) => vip.announce(&self.name, self.began).await,
            None => None,
        };
        Started {
            vip_s,
            ..self.started
        }
    }

    /// Given back meanwhile: the address goes unannounced.
    async fn withdraw(self) {
        if let Some(vip) = self.vip {
            vip.undo().await;
        }
    }
}

/// Why a start gave no answer "started".
#[derive(Debug)]
enum StartError {
    /// Refused or given back: the target does not run the service and never will.
    GivenBack(String),
    /// The target holds no such migration: it says nothing about where the service runs.
    NotHeld(String),
    /// A journal write failed: the target cannot vouch for either, so it does not answer (the
    /// source is left in doubt and keeps the service from running there).
    Journal(MigrateError),
}

/// What running a step's effects came to: the answer it reached, if any, with the effects
/// after it (run once the answer is out), and whether the service is to start.
#[derive(Debug, Default)]
struct Ran {
    answer: Option<TargetEffect>,
    start: bool,
    rest: Vec<TargetEffect>,
}

/// A start that answered "started": the effects that go after the answer, under the start
/// lock (so no other start finds the migration `Owned` meanwhile).
struct AfterAnswer {
    lock: tokio::sync::OwnedMutexGuard<()>,
    effects: Vec<TargetEffect>,
}

impl Target {
    /// The target side over this node's journal and services.
    pub fn new(
        journal: Arc<Journal>,
        manager: Arc<Manager>,
        tasks: crate::Tasks,
        gate: Option<Arc<dyn crate::gate::PlacementGate>>,
    ) -> Arc<Target> {
        Arc::new(Target {
            journal,
            manager,
            starting: Arc::new(tokio::sync::Mutex::new(())),
            started: Mutex::new(HashSet::new()),
            tasks,
            gate,
            switches: std::sync::OnceLock::new(),
        })
    }

    /// Keeps the switch latency of each committed move into this node in `history` (set
    /// once; without it the figures the sources send are not kept).
    pub fn keep_switches(&self, history: Arc<super::switches::SwitchHistory>) {
        let _ = self.switches.set(history);
    }

    fn phase(&self, id: &str) -> Option<TargetPhase> {
        self.journal.target(id).map(|e| e.phase)
    }

    fn started(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Steps migration `g.id()` with `event`: the entry as it was and the effects.
    fn step(
        &self,
        g: &JournalGuard<'_>,
        event: TargetEvent,
    ) -> Result<(Option<TargetEntry>, Vec<TargetEffect>), target_machine::Refused> {
        let entry = g.target();
        let phase = match entry.as_ref().map(|e| e.phase) {
            Some(TargetPhase::Owned) if self.started().contains(g.id()) => {
                Some(TargetPhase::Started)
            }
            p => p,
        };
        let (next, effects) = target_machine::step(phase, event)?;
        if next == Some(TargetPhase::Started) && phase != next {
            self.started().insert(g.id().to_string());
        }
        Ok((entry, effects))
    }

    /// Runs `effects` of migration `entry` in order under `g` (given up while waiting for the
    /// starts), up to the answer or the start, which are the caller's.
    async fn run<'a>(
        self: &'a Arc<Self>,
        mut g: JournalGuard<'a>,
        entry: Option<&TargetEntry>,
        effects: Vec<TargetEffect>,
    ) -> Result<Ran, MigrateError> {
        let id = g.id().to_string();
        let need =
            || entry.ok_or_else(|| MigrateError::BadState(format!("no journal entry for {id}")));
        let mut _starts = None;
        let mut effects = effects.into_iter();
        while let Some(effect) = effects.next() {
            match effect {
                TargetEffect::WriteJournal(phase) => {
                    g.set_target(phase)?;
                    if phase == TargetPhase::Started {
                        self.started().remove(&id);
                    }
                }
                TargetEffect::RemoveJournal => g.remove_target()?,
                TargetEffect::DropCopy => {
                    let _ = remove_tree(need()?.dest.clone()).await;
                }
                TargetEffect::DeleteStaging => {
                    let _ = remove_tree(need()?.staging.clone()).await;
                }
                TargetEffect::UndoCommit => {
                    let entry = need()?.clone();
                    tokio::task::spawn_blocking(move || super::receiver::undo_commit(&entry))
                        .await
                        .map_err(|e| MigrateError::BadState(e.to_string()))??;
                }
                TargetEffect::StopService => {
                    let service = &need()?.service;
                    if self.manager.spec(service).is_some() {
                        if let Err(e) = self.manager.remove(service).await {
                            warn!(%service, error = %e, "removing a given-back service");
                        }
                    }
                    self.manager.unpark(service).await;
                }
                // A start in progress sees the new phase and gives the service back itself.
                TargetEffect::WaitForStarts => {
                    drop(g);
                    _starts = Some(self.starting.clone().lock_owned().await);
                    g = self.journal.lock(&id).await;
                }
                TargetEffect::StartService => {
                    return Ok(Ran {
                        start: true,
                        rest: effects.collect(),
                        ..Ran::default()
                    })
                }
                answer @ (TargetEffect::AnswerStarted
                | TargetEffect::AnswerGivenBack
                | TargetEffect::AnswerAbandoned
                | TargetEffect::AnswerNotHeld
                | TargetEffect::AnswerForgotten) => {
                    return Ok(Ran {
                        answer: Some(answer),
                        rest: effects.collect(),
                        ..Ran::default()
                    })
                }
                other => {
                    return Err(MigrateError::BadState(format!(
                        "{other:?} outside the state channel"
                    )))
                }
            }
        }
        Ok(Ran::default())
    }

    /// Starts the service of migration `id` for `event` (the hand-off, or an adoption when
    /// the source is gone) if its move was decided or is being decided now; idempotent once
    /// started. On failure the service is removed here, the copy dropped and the migration
    /// marked `Returned`: the source may run it. `None`: nothing to start.
    async fn start_owned(
        self: &Arc<Self>,
        id: &str,
        spec: Option<&ServiceSpec>,
        event: TargetEvent,
    ) -> Result<Option<(Started, Option<AfterAnswer>)>, StartError> {
        let lock = self.starting.clone().lock_owned().await;
        let g = self.journal.lock(id).await;
        let (entry, effects) = self
            .step(&g, event)
            .map_err(|r| StartError::NotHeld(r.to_string()))?;
        let ran = self
            .run(g, entry.as_ref(), effects)
            .await
            .map_err(StartError::Journal)?;
        if ran.answer == Some(TargetEffect::AnswerNotHeld) {
            return Err(StartError::NotHeld(format!(
                "migration {id} is not held here"
            )));
        }
        let Some(entry) = entry else {
            return Err(StartError::NotHeld(format!(
                "migration {id} is not held here"
            )));
        };
        if ran.answer == Some(TargetEffect::AnswerGivenBack) {
            return Err(StartError::GivenBack(format!(
                "migration {id} was given back here"
            )));
        }
        if ran.answer == Some(TargetEffect::AnswerStarted) {
            let started = Started {
                pid: self.manager.status(&entry.service).ok().and_then(|s| s.pid),
                ..Started::default()
            };
            return Ok(Some((started, None)));
        }
        if !ran.start {
            return Ok(None);
        }
        let started = self.start_spec(id, &entry, spec).await;
        let g = self.journal.lock(id).await;
        let event = match started {
            Ok(_) => TargetEvent::Healthy,
            Err(_) => TargetEvent::StartFailed,
        };
        let (_, effects) = self
            .step(&g, event)
            .map_err(|r| StartError::GivenBack(r.to_string()))?;
        // Stepped `Started` (an abandon now hears it runs here) or given back, before any
        // client is sent here: the VIP is announced only for a service that stays.
        let ran = self
            .run(g, Some(&entry), effects)
            .await
            .map_err(StartError::Journal)?;
        match (ran.answer, started) {
            (Some(TargetEffect::AnswerStarted), Ok(ready)) => Ok(Some((
                ready.announce().await,
                Some(AfterAnswer {
                    lock,
                    effects: ran.rest,
                }),
            ))),
            (_, Err(why)) => Err(StartError::GivenBack(why)),
            (answer, Ok(ready)) => {
                ready.withdraw().await;
                Err(StartError::GivenBack(format!(
                    "given back meanwhile ({answer:?})"
                )))
            }
        }
    }

    /// Runs the effects that follow the answer "started" (recording it).
    async fn after_answer(self: &Arc<Self>, id: &str, after: AfterAnswer) {
        let g = self.journal.lock(id).await;
        let entry = g.target();
        if let Err(e) = self.run(g, entry.as_ref(), after.effects).await {
            warn!(migration = %id, error = %e, "recording the start");
        }
        drop(after.lock);
    }

    async fn start_spec(
        &self,
        id: &str,
        entry: &TargetEntry,
        spec: Option<&ServiceSpec>,
    ) -> Result<Ready, String> {
        let began = Instant::now();
        // The spec the transfer brought (kept as JSON in the journal), else the hand-off's.
        let hand_off = spec;
        let mut spec: ServiceSpec = match (&entry.spec, spec) {
            (Some(json), _) => serde_json::from_str(json).map_err(|e| e.to_string())?,
            (None, Some(spec)) => spec.clone(),
            (None, None) => return Err("no spec for the service".into()),
        };
        spec.autostart = true;
        let name = spec.name.clone();
        if let Some(g) = &self.gate {
            // The hand-off's spec carries the epoch the log committed the move at; an
            // adoption (no hand-off) takes the log's placement here.
            let epoch = g
                .admit(&name, hand_off.and_then(crate::gate::stamped))
                .await
                .map_err(|e| format!("the placement log: {e}"))?;
            crate::gate::stamp(&mut spec, g.node(), epoch);
        }
        if self.manager.spec(&name).is_some() {
            // A stale definition from an earlier stay here: replaced.
            self.manager
                .remove(&name)
                .await
                .map_err(|e| e.to_string())?;
        }
        let health = spec.health.clone();
        let poll = match &health {
            Some(h) if h.tcp.is_none() && h.http.is_none() => CUTOVER_POLL_COMMAND,
            _ => CUTOVER_POLL,
        };
        // The address goes on the interface while the service starts, unannounced: clients
        // keep going to the frozen source until the gratuitous ARP (or, for IPv6, the
        // unsolicited neighbour advertisement) at the first passing check.
        let mut vip = Takeover::begin(&self.manager, spec.vip);
        // The check's command runs as the service's user, as the supervisor's does.
        let limits = self.manager.runtime().limits(&spec).ok();
        if let Err(e) = self.manager.add(spec).await {
            if let Some(vip) = vip {
                vip.undo().await;
            }
            return Err(e.to_string());
        }
        if let Some(vip) = vip.as_mut() {
            vip.watch(&self.tasks, self.manager.clone(), name.clone());
        }
        let spawn_s = began.elapsed().as_secs_f64();
        let given_back = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if self.phase(id) == Some(TargetPhase::Returned) {
                    break;
                }
            }
        };
        // The service's own check, every few milliseconds until it first passes: the
        // supervisor checks at the service's interval, and clients wait for this.
        let first_pass = async {
            loop {
                let st = self.manager.status(&name).map_err(|e| e.to_string())?;
                if st.health == Health::Healthy {
                    return Ok(st);
                }
                if st.state == RunState::Failed {
                    return Err(format!("{name} is {} after the hand-off", st.state));
                }
                if st.state == RunState::Running {
                    if let Some(h) = &health {
                        if godwit_runtime::service::check(h, limits.as_ref()).await {
                            return Ok(st);
                        }
                    }
                }
                tokio::time::sleep(poll).await;
            }
        };
        // Then it must stay healthy: one passing check is not a service that works (one
        // that listens, then fails on a lock, passes once). Until this ends the move can
        // still be given back, so the VIP waits for it too.
        let settled = async {
            let s = first_pass.await?;
            let first_pass_s = began.elapsed().as_secs_f64();
            settle(&self.manager, &name, health.as_ref(), &s, poll).await?;
            Ok::<_, String>((s, first_pass_s))
        };
        let (s, first_pass_s) = tokio::select! {
            s = tokio::time::timeout(START_TIMEOUT, settled) => match s {
                Ok(s) => s?,
                Err(_) => return Err(format!("{name} did not pass its health check within {START_TIMEOUT:?}")),
            },
            () = given_back => return Err("given back while starting".into()),
        };
        let healthy_s = began.elapsed().as_secs_f64();
        Ok(Ready {
            started: Started {
                pid: s.pid,
                spawn_s,
                healthy_s,
                vip_s: None,
                start_s: Some((first_pass_s - spawn_s).max(0.0)),
            },
            vip,
            vip_active: s.vip_active,
            name,
            began,
        })
    }

    /// The source gave up waiting: unless the service runs here already, this node stops it
    /// and never starts it again. The answer to send.
    async fn abandon(self: &Arc<Self>, id: &str) -> Result<Handoff, MigrateError> {
        let g = self.journal.lock(id).await;
        let (entry, effects) = self
            .step(&g, TargetEvent::Abandon)
            .map_err(|r| MigrateError::BadState(r.to_string()))?;
        let ran = self.run(g, entry.as_ref(), effects).await?;
        Ok(match ran.answer {
            Some(TargetEffect::AnswerStarted) => Started {
                pid: entry
                    .and_then(|e| self.manager.status(&e.service).ok())
                    .and_then(|s| s.pid),
                ..Started::default()
            }
            .reply(),
            Some(TargetEffect::AnswerNotHeld) => Handoff::NotHeld {
                reason: format!("migration {id} is not held here"),
            },
            _ => Handoff::Abandoned,
        })
    }

    /// The source acted on the outcome of migration `id`: the entry goes. The answer.
    async fn forget(
        self: &Arc<Self>,
        id: &str,
        switched: Option<Switched>,
    ) -> Result<Handoff, MigrateError> {
        let g = self.journal.lock(id).await;
        // The service runs here by this migration: the source's figure is this node's switch
        // latency. Only while the entry is here, so a repeated forget counts nothing again.
        let ran_here = match g.target().map(|e| e.phase) {
            Some(TargetPhase::Started) => true,
            Some(TargetPhase::Owned) => self.started().contains(id),
            _ => false,
        };
        let (entry, effects) = match self.step(&g, TargetEvent::Forget) {
            Ok(stepped) => stepped,
            Err(r) => {
                return Ok(Handoff::Refused {
                    reason: r.to_string(),
                })
            }
        };
        self.run(g, entry.as_ref(), effects).await?;
        if let (true, Some(s), Some(h)) = (ran_here, switched, self.switches.get()) {
            let h = h.clone();
            let kept = tokio::task::spawn_blocking(move || h.record(s.mode, s.downtime_s))
                .await
                .unwrap_or(false);
            if kept {
                info!(migration = id, mode = ?s.mode, latency_ms = (s.downtime_s * 1e3).round(), "switch latency recorded");
            }
        }
        Ok(Handoff::Forgotten)
    }

    /// Whether `peer` is the source of migration `id` here (or no entry exists, so there is
    /// nothing to protect): hand-off, abandon and forget are the source's alone.
    fn check_source(&self, id: &str, peer: &str) -> Result<(), String> {
        match self.journal.target(id) {
            Some(e) if e.from != peer => Err(format!(
                "migration {id} came from {}, not from {peer}",
                e.from
            )),
            _ => Ok(()),
        }
    }

    /// Resolves migration `id` left `Prepared` or `Owned` by a transfer that ended, or found
    /// so at start: a prepared copy waits for the decision (the hand-off) and is dropped
    /// without one; an owned one is started here if no hand-off did it.
    async fn settle(self: Arc<Self>, id: String) {
        let timer = {
            let g = self.journal.lock(&id).await;
            match self.step(&g, TargetEvent::Queued) {
                Ok((_, effects)) => effects.into_iter().find_map(|e| match e {
                    TargetEffect::Timer(after, event) => Some((after, event)),
                    _ => None,
                }),
                Err(r) => {
                    warn!(migration = %id, refused = %r, "not settled");
                    None
                }
            }
        };
        let Some((after, event)) = timer else {
            return;
        };
        tokio::time::sleep(after).await;
        match event {
            TargetEvent::AdoptDue => {
                match self.start_owned(&id, None, TargetEvent::AdoptDue).await {
                    Ok(Some((_, after))) => {
                        info!(migration = %id, "decided but not handed off: migrated service started without the source");
                        if let Some(after) = after {
                            self.after_answer(&id, after).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(migration = %id, error = ?e, "migrated service not started"),
                }
            }
            event => {
                let g = self.journal.lock(&id).await;
                let result = match self.step(&g, event) {
                    Ok((entry, effects)) if !effects.is_empty() => {
                        info!(migration = %id, "no decision for the prepared copy: dropped");
                        self.run(g, entry.as_ref(), effects).await.map(|_| ())
                    }
                    Ok(_) => Ok(()),
                    Err(r) => Err(MigrateError::BadState(r.to_string())),
                };
                if let Err(e) = result {
                    warn!(migration = %id, error = %e, "settling the migration");
                }
            }
        }
    }

    /// Resolves the migrations the ids of which arrive on `pending` (each settled on a task of its own).
    pub fn watch(
        self: &Arc<Self>,
        mut pending: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> tokio::task::JoinHandle<Option<()>> {
        let me = self.clone();
        self.tasks.spawn(async move {
            while let Some(id) = pending.recv().await {
                me.tasks.spawn(me.clone().settle(id));
            }
        })
    }

    /// At start: removes staging copies (no transfer survives a restart), forgets given-back
    /// migrations, and queues prepared and owned ones on `pending`.
    pub fn recover(&self, state_root: &Path, pending: &tokio::sync::mpsc::UnboundedSender<String>) {
        for e in self.journal.targets() {
            let Some(g) = self.journal.try_lock(&e.migration) else {
                warn!(migration = %e.migration, "the journal is busy: not recovered");
                continue;
            };
            let expired = now_ms().saturating_sub(e.at_unix_ms) > RETURNED_KEPT_MS;
            let effects =
                match target_machine::step(Some(e.phase), TargetEvent::Restart { expired }) {
                    Ok((_, effects)) => effects,
                    Err(r) => {
                        warn!(migration = %e.migration, refused = %r, "not recovered");
                        continue;
                    }
                };
            let result = effects.into_iter().try_for_each(|effect| match effect {
                // Before the staging copies go: the state that was at the destination may
                // sit at a staging name.
                TargetEffect::UndoCommit => super::receiver::undo_commit(&e),
                TargetEffect::DeleteStaging => {
                    let _ = std::fs::remove_dir_all(&e.staging);
                    Ok(())
                }
                TargetEffect::RemoveJournal => g.remove_target(),
                // Nothing defines the service here after a restart: only what a start under
                // way left in its cgroup can run.
                TargetEffect::StopService => {
                    if self.manager.spec(&e.service).is_none() {
                        let rt = self.manager.runtime();
                        let cgroup = rt
                            .v2_root
                            .join(&rt.section.cgroup_parent)
                            .join(format!("{}.service", e.service));
                        super::recovery::kill_leftovers(&cgroup);
                    }
                    Ok(())
                }
                TargetEffect::Queue => {
                    info!(migration = %e.migration, phase = ?e.phase, "target: migration to resolve");
                    let _ = pending.send(e.migration.clone());
                    Ok(())
                }
                other => Err(MigrateError::BadState(format!("{other:?} at a restart"))),
            });
            match result {
                Ok(()) => {
                    info!(migration = %e.migration, phase = ?e.phase, "target: migration recovered")
                }
                Err(err) => {
                    warn!(migration = %e.migration, error = %err, "target: migration not recovered")
                }
            }
        }
        remove_stale_staging(state_root);
    }
}

/// Checks in a row a migrated service must pass, after its first, before it counts as
/// started (with [`HealthSpec::settle_ms`] passed since the first).
///
/// [`HealthSpec::settle_ms`]: godwit_runtime::service::HealthSpec::settle_ms
const SETTLE_CHECKS: u32 = 3;

/// Waits until the instance that passed its first check (`first`) has stayed up and healthy:
/// the same process, [`SETTLE_CHECKS`] checks in a row passing, over the spec's `settle_ms`.
/// An error when it exits, is restarted or fails a check meanwhile.
async fn settle(
    manager: &Manager,
    name: &str,
    health: Option<&godwit_runtime::service::HealthSpec>,
    first: &godwit_runtime::service::ServiceStatus,
    poll: Duration,
) -> Result<(), String> {
    let window = Duration::from_millis(health.map_or(0, |h| h.settle_ms));
    // The check's command runs as the service's user, as the supervisor's does.
    let limits = manager
        .spec(name)
        .and_then(|s| manager.runtime().limits(&s).ok());
    let from = Instant::now();
    let mut passes = 1;
    while passes < SETTLE_CHECKS || from.elapsed() < window {
        tokio::time::sleep(poll).await;
        let st = manager.status(name).map_err(|e| e.to_string())?;
        if st.state != RunState::Running || st.pid != first.pid {
            return Err(format!(
                "{name} passed its first check, then was {} (pid {:?}, was {:?}) {} ms later",
                st.state,
                st.pid,
                first.pid,
                from.elapsed().as_millis()
            ));
        }
        if let Some(h) = health {
            if !godwit_runtime::service::check(h, limits.as_ref()).await {
                return Err(format!(
                    "{name} passed its first check, then failed one {} ms later",
                    from.elapsed().as_millis()
                ));
            }
        }
        passes += 1;
    }
    Ok(())
}

/// Removes every `*.staging-*` directory under `state_root`.
fn remove_stale_staging(state_root: &Path) {
    for e in std::fs::read_dir(state_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().contains(".staging-") {
            info!(dir = %e.path().display(), "stale staging copy removed");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Registers the hand-off service on a target: once a migrated service's move is decided,
/// its start arrives here; the answer comes once it is healthy (or it is given back).
pub fn register_handoff(services: &Services, target: Arc<Target>) {
    services.register(HANDOFF, move |peer, ch| handoff(peer, ch, target.clone()));
}

async fn handoff(peer: PeerInfo, mut ch: Channel, target: Arc<Target>) {
    let mut after = None;
    let request = match ch.recv::<Handoff>().await {
        Ok(Some(request)) => request,
        _ => return,
    };
    let migration = match &request {
        Handoff::Start { migration, .. }
        | Handoff::Abandon { migration }
        | Handoff::Forget { migration, .. } => migration.clone(),
        other => {
            warn!(peer = %peer.node, request = ?other, "not a hand-off request");
            return;
        }
    };
    // Only the migration's source may start, abandon or forget it: another node's
    // certificate moves nothing here.
    if let Err(reason) = target.check_source(&migration, &peer.node) {
        warn!(peer = %peer.node, migration, reason, "hand-off refused: not the migration's source");
        let _ = ch.send(&Handoff::Refused { reason }).await;
        let _ = ch.finish();
        return;
    }
    let reply = match request {
        Handoff::Start {
            migration,
            spec,
            timings,
        } => {
            match target
                .start_owned(&migration, Some(&spec), TargetEvent::HandOff)
                .await
            {
                Ok(Some((st, then))) => {
                    // The figures of the service this migration moved (the journal's name).
                    if let (Some(t), Some(e)) = (timings, target.journal.target(&migration)) {
                        target.manager.learn_timings(&e.service, t);
                    }
                    info!(peer = %peer.node, migration, spawn_s = st.spawn_s, healthy_s = st.healthy_s, vip_s = ?st.vip_s, "migrated service started");
                    after = then;
                    st.reply()
                }
                Ok(None) => Handoff::NotHeld {
                    reason: format!("nothing to start for migration {migration}"),
                },
                Err(StartError::GivenBack(reason)) => {
                    warn!(peer = %peer.node, migration, reason, "migrated service not started; given back");
                    Handoff::Failed { reason }
                }
                Err(StartError::NotHeld(reason)) => {
                    warn!(peer = %peer.node, migration, reason, "hand-off for a migration not held here");
                    Handoff::NotHeld { reason }
                }
                Err(StartError::Journal(e)) => {
                    warn!(peer = %peer.node, migration, error = %e, "hand-off not answered: the journal failed");
                    return;
                }
            }
        }
        Handoff::Abandon { migration } => match target.abandon(&migration).await {
            Ok(reply) => {
                info!(peer = %peer.node, migration, ?reply, "hand-off abandoned by the source");
                reply
            }
            Err(e) => {
                warn!(peer = %peer.node, migration, error = %e, "abandon not answered: the journal failed");
                return;
            }
        },
        Handoff::Forget {
            migration,
            switched,
        } => match target.forget(&migration, switched).await {
            Ok(reply) => reply,
            Err(e) => {
                warn!(peer = %peer.node, migration, error = %e, "forget not answered: the journal failed");
                return;
            }
        },
        _ => return,
    };
    let _ = ch.send(&reply).await;
    let _ = ch.finish();
    // `Started` is recorded once the answer is on its way (an fsync off the source's path,
    // which waits for the answer to kill its frozen instance), under the start lock.
    if let Some(after) = after {
        target.after_answer(&migration, after).await;
    }
}
