//! Moving a managed service to another node, end to end (`godwit migrate`):
//!
//! 1. connect to the target over the transport (mutual TLS: only a cluster node can be a
//!    target, and the target only accepts a cluster node);
//! 2. push the service's image (only missing chunks move);
//! 3. measure the path and read the service's dirty rate from the probe: the pre-copy model's
//!    inputs;
//! 4. move the state in rounds with the probe tracking the state files' dirty pages, freeze
//!    the service, send the last round, verify, commit on the target ([`super::drive`]);
//! 5. hand the service to the target, which starts it from the committed state and answers
//!    once healthy (its VIP comes up there), then kill the frozen source without thawing it;
//! 6. remove the source's copy of the state, append the migration to the audit log.
//!
//! Every phase change is the source state machine's ([`super::source_machine::step`]): the
//! driver and this file run its effects. Before the decision any failure resumes the source;
//! if the target gives the service back after it, the source resumes from its own copy,
//! which nothing changed since the freeze.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span, warn, Instrument};

use super::audit::{MigrationReport, MigrationStats};
use super::drive::{drive, Source, SwitchMode};
use super::error::MigrateError;
use super::handoff::{abandon, forget, hand_off, HandoffOutcome};
use super::journal::{now_ms, Journal, SourceEntry, SourcePhase};
use super::model::{self, LEARN_FROM};
use super::progress::{Phase, Progress, Reporter};
use super::protocol::Switched;
use super::scan::StateScan;
use super::source_machine::{self, Handed, SourceEffect, SourceEvent, SourceState};
use super::transfer::StateSender;
use crate::tasks::remove_tree;
use godwit_core::policy::PrecopyInput;
use godwit_image::ImageStore;
use godwit_probe::{DirtyTracker, SharedSnapshot};
use godwit_runtime::service::{Manager, RunState, ServiceSpec};
use godwit_transport::agent::Transport;
use godwit_transport::Peer;

/// The least share of the downtime target left to the frozen round's copy, however long the
/// rest of the cut-over took last time: a target below the cut-over's own cost then still
/// gets the shortest frozen round the live rounds reach (transitional), not a stop-and-copy
/// that would be far longer.
const MIN_FROZEN_SHARE: f64 = 0.25;
/// The path probe before a move, bytes.
const FIRST_PROBE: u64 = 4 << 20;
/// How long the second probe, on a fast path, is sized to take, seconds.
const PROBE_SECONDS: f64 = 0.25;
/// Its most bytes.
const LONGEST_PROBE: u64 = 32 << 20;
/// The sample of the state that the zstd level is chosen on: chunks of this size ...
const SAMPLE_CHUNK: usize = 1 << 20;
/// ... this many, spread evenly over the state's bytes.
const SAMPLE_CHUNKS: usize = 8;

/// Up to `chunks` pieces of `chunk` bytes of the state's files (`files` under `root`), taken
/// at even steps through their bytes in listing order; what cannot be read is skipped.
fn sample_state(
    root: &Path,
    files: &[super::FileMeta],
    chunks: usize,
    chunk: usize,
) -> Vec<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let sized: Vec<(&str, u64)> = files
        .iter()
        .filter_map(|f| Some((f.rel.as_str(), f.size?)))
        .filter(|(_, size)| *size > 0)
        .collect();
    let total: u64 = sized.iter().map(|(_, s)| s).sum();
    if total == 0 || chunks == 0 {
        return Vec::new();
    }
    let step = (total / chunks as u64).max(1);
    let mut out = Vec::new();
    let (mut base, mut index) = (0u64, 0usize);
    for k in 0..chunks as u64 {
        let at = k * step;
        while index < sized.len() && base + sized[index].1 <= at {
            base += sized[index].1;
            index += 1;
        }
        let Some(&(rel, size)) = sized.get(index) else {
            break;
        };
        let offset = at - base;
        let len = (size - offset).min(chunk as u64) as usize;
        let Ok(file) = std::fs::File::open(root.join(rel)) else {
            continue;
        };
        let mut buf = vec![0u8; len];
        if let Ok(n) = file.read_at(&mut buf, offset) {
            buf.truncate(n);
            if n > 0 {
                out.push(buf);
            }
        }
    }
    out
}

/// Test hook: milliseconds the source waits between its decision and the hand-off.
pub const HANDOFF_DELAY_ENV: &str = "GODWIT_TEST_HANDOFF_DELAY_MS";
/// Test hook: milliseconds the source waits after the log committed its intent, before
/// anything else (a source that dies there leaves an intent no journal records).
pub const INTENT_DELAY_ENV: &str = "GODWIT_TEST_INTENT_DELAY_MS";
/// How often a source whose hand-off went unanswered asks again, and for how long.
const RESOLVE_EVERY: Duration = Duration::from_secs(2);
const RESOLVE_FOR: Duration = Duration::from_secs(600);

/// What to move where.
#[derive(Debug, Clone)]
pub struct MigrateRequest {
    /// The service.
    pub service: String,
    /// The target node.
    pub to: String,
    /// Its transport address.
    pub addr: SocketAddr,
    /// How to switch (`None`: as the model says).
    pub mode: Option<SwitchMode>,
    /// The downtime target.
    pub downtime_target: Duration,
    /// Who asked (for the audit log): the caller's verified certificate name, such as
    /// `operator alice` or `node n1` (see [`super::control`]).
    pub requested_by: String,
    /// Verify by re-hashing every file of the state on both sides with the service frozen,
    /// rather than by the hash tree the rounds kept (slower: it reads the whole state).
    pub full_verify: bool,
    /// Where the migration's progress goes as it runs (`godwit migrate` shows it).
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    /// Replace a service of that name on the target (the operator's `--replace`).
    pub replace: bool,
}

/// Runs migrations from this node.
#[derive(Debug)]
pub struct Migrator {
    /// This node's name.
    pub node: String,
    /// Its services.
    pub manager: Arc<Manager>,
    /// Its transport.
    pub transport: Arc<Transport>,
    /// Its image store.
    pub images: Option<Arc<ImageStore>>,
    /// The probe's dirty-page tracking.
    pub tracker: Option<DirtyTracker>,
    /// The probe's snapshots (dirty rates).
    pub snapshot: SharedSnapshot,
    /// The audit log (JSON lines).
    pub audit: PathBuf,
    /// The migration journal (crash recovery); `None` only in tests.
    pub journal: Option<Arc<Journal>>,
    /// Counters.
    pub stats: Mutex<MigrationStats>,
    /// This migrator, for the background tasks it spawns (set by [`Migrator::into_arc`]).
    pub me: std::sync::OnceLock<std::sync::Weak<Migrator>>,
    /// The owner of the tasks migrations from here spawn.
    pub tasks: crate::Tasks,
    /// The services a migration from here is moving now: one at a time per service. Shared
    /// with the coordinator's reconciler, which closes only intents no migration here owns.
    pub moving: Moving,
    /// Bounds the audit lines of refusals.
    pub refusals: Mutex<super::audit::RefusalLimiter>,
    /// The placement log's part, when a coordinator places services.
    pub gate: Option<Arc<dyn super::gate::PlacementGate>>,
}

/// The services migrations from this node are moving now (see [`Migrator::moving`]).
pub type Moving = std::sync::Arc<Mutex<std::collections::BTreeSet<String>>>;

/// A service claimed by one migration from this node; released when it goes.
struct Claim<'a> {
    moving: &'a Mutex<std::collections::BTreeSet<String>>,
    service: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.moving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.service);
    }
}

/// A migration's id: the service's name and 64 random bits, so no two migrations (from any
/// node, at any time) share one and no peer can guess the next.
pub(crate) fn migration_id(service: &str) -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for its length; getrandom(2) writes at most that.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // The kernel's pool always answers after boot; the clock is the fallback's entropy.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{service}-{hex}")
}

/// The spec the hand-off sends: with a coordinator, stamped with the node and the epoch the
/// log committed the move at, which the target admits before it starts anything.
fn handed_spec(spec: &ServiceSpec, entry: &SourceEntry) -> ServiceSpec {
    let mut spec = spec.clone();
    if let Some(epoch) = entry.epoch {
        super::gate::stamp(&mut spec, &entry.to, epoch);
    }
    spec
}

struct ManagedSource<'a> {
    manager: &'a Manager,
    name: String,
    journal: Option<(&'a Journal, SourceEntry)>,
    /// Where the service goes once decided, and the migration.
    peer: &'a Peer,
    entry: SourceEntry,
    /// The service's spec as the target starts it.
    target_spec: &'a ServiceSpec,
    /// What the hand-off came to.
    handed: Option<HandoffOutcome>,
    /// The effects the driver left to the migrator, in order.
    then: Vec<SourceEffect>,
    /// Where the progress goes.
    progress: Reporter,
    /// The placement log's part (with a coordinator).
    gate: Option<&'a dyn super::gate::PlacementGate>,
    /// Set once the log committed the move.
    decided: &'a std::sync::atomic::AtomicBool,
    /// How long stopping the service took (intermittent), seconds.
    stopped_s: Option<f64>,
}

impl ManagedSource<'_> {
    /// After the log committed the move, the service runs here again only once the log places
    /// it here again.
    async fn may_run_here(&self) -> Result<(), MigrateError> {
        if !self.decided.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        match self.gate {
            Some(g) if !g.place_back(&self.name, &self.entry.to).await => {
                Err(MigrateError::Refused(format!(
                    "the target gave {} back, but the placement log does not place it here: it stays stopped",
                    self.name
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Source for ManagedSource<'_> {
    async fn record(&mut self, phase: SourcePhase) -> Result<(), MigrateError> {
        // With a coordinator, the log's commit is the decision; the journal follows it (a
        // restart asks the log about a migration the journal does not show decided).
        let mut logged = false;
        if let (SourcePhase::Committed, Some(g), Some(intent)) =
            (phase, self.gate, self.entry.intent)
        {
            match g.commit(&self.name, intent, &self.entry.to).await {
                super::gate::LogDecision::Committed(epoch) => {
                    info!(epoch, "the placement log committed the move");
                    self.decided
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.entry.epoch = Some(epoch);
                    logged = true;
                }
                super::gate::LogDecision::Refused(why) => {
                    return Err(MigrateError::Refused(format!(
                        "the placement log refused the move: {why}"
                    )))
                }
            }
        }
        if let Some((j, e)) = &mut self.journal {
            e.phase = phase;
            e.at_unix_ms = now_ms();
            e.epoch = self.entry.epoch;
            let put = j.lock(&e.migration).await.put_source(e);
            match put {
                Ok(()) => {}
                Err(err) if logged => {
                    warn!(error = %err, "journalling the decision failed; the placement log holds it")
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
    async fn freeze(&mut self) -> Result<(), MigrateError> {
        // Not journalled first (an fsync on the downtime): a restart after a crash treats a
        // migration still `Copying` as one that may have frozen the service, and kills and
        // restarts it from its own state (`recover_sources`), exactly as for `Frozen`.
        self.manager
            .freeze_for(&self.name, &self.entry.migration)
            .await?;
        Ok(())
    }
    async fn thaw(&mut self) -> Result<(), MigrateError> {
        self.may_run_here().await?;
        self.manager
            .thaw_for(&self.name, &self.entry.migration)
            .await?;
        Ok(())
    }
    /// The VIP stays until the kill after the hand-off: with the service's sockets closed, a
    /// client's new connection is refused at once and retried, not lost to an address nobody
    /// holds until TCP's retry a second later.
    async fn stop(&mut self) -> Result<(), MigrateError> {
        let t = Instant::now();
        self.manager.stop_keeping_vip(&self.name).await?;
        self.stopped_s = Some(t.elapsed().as_secs_f64());
        Ok(())
    }
    async fn start(&mut self) -> Result<(), MigrateError> {
        self.may_run_here().await?;
        self.manager.start(&self.name).await?;
        Ok(())
    }
    /// The hand-off first, the kill after (the driver's, unless given back): the frozen
    /// instance runs no other instruction either way, and keeping it (and its VIP) until the
    /// target's VIP is up means a client never sends into a void. Its connections are reset
    /// when it dies (the VIP is still here), new ones were accepted by its kernel and are
    /// reset too, and clients reconnect to the target, which their neighbour caches already
    /// name (gratuitous ARP).
    async fn hand_over(&mut self) -> Handed {
        self.progress.phase(Phase::Handoff);
        // Fault injection for the tests: a source that dies between its decision and the
        // hand-off (the target must then start the service on its own).
        if let Some(ms) = std::env::var(HANDOFF_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            warn!(ms, "{HANDOFF_DELAY_ENV}: the hand-off waits");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let outcome = hand_off(
            self.peer,
            &self.entry.migration,
            &handed_spec(self.target_spec, &self.entry),
            self.manager.timings(&self.name),
        )
        .await;
        let handed = outcome.handed();
        self.handed = Some(outcome);
        handed
    }
    async fn kill(&mut self) {
        if let Err(e) = self.manager.kill(&self.name).await {
            warn!(error = %e, "killing the frozen source");
        }
    }
    fn then(&mut self, effects: Vec<SourceEffect>) {
        self.then.extend(effects);
    }
    fn progress(&mut self, progress: Progress) {
        self.progress.send(progress);
    }
}

impl Migrator {
    /// Moves `req.service` to `req.to`; the report says what happened either way and is
    /// appended to the audit log.
    pub async fn migrate(&self, req: MigrateRequest) -> MigrationReport {
        let _claim = match self.claim(&req.service) {
            Ok(claim) => claim,
            Err(why) => return self.refuse(&req.service, &req.to, &req.requested_by, &why),
        };
        let id = migration_id(&req.service);
        let span = info_span!("migration", id = %id, service = %req.service, to = %req.to);
        let started = Instant::now();
        let mut report = MigrationReport {
            id: id.clone(),
            service: req.service.clone(),
            from: self.node.clone(),
            to: req.to.clone(),
            requested_by: req.requested_by.clone(),
            started_unix_ms: now_ms(),
            ..MigrationReport::default()
        };
        // With a coordinator, the intent is in the log before anything moves.
        let intent = match &self.gate {
            None => None,
            Some(g) => match g.begin(&req.service, &req.to).await {
                Ok(epoch) => Some(epoch),
                Err(why) => {
                    return self.refuse(
                        &req.service,
                        &req.to,
                        &req.requested_by,
                        &format!("the coordinator refused the move: {why}"),
                    )
                }
            },
        };
        if let (Some(ms), Some(intent)) = (
            std::env::var(INTENT_DELAY_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok()),
            intent,
        ) {
            warn!(ms, intent, "{INTENT_DELAY_ENV}: the migration waits");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let decided = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .run(&req, &id, &mut report, intent, &decided)
            .instrument(span)
            .await;
        if let (Some(g), Some(intent), Err(_)) = (&self.gate, intent, &result) {
            if !decided.load(std::sync::atomic::Ordering::SeqCst) {
                // Until the log answers, however long that takes (the source may be cut off
                // from the leader): an intent left open would keep the service out of every
                // later move and out of the reconciler's hands. The caller is answered now.
                let (g, service) = (g.clone(), req.service.clone());
                self.tasks
                    .spawn(async move { g.abort(&service, intent).await });
            }
        }
        report.result = match &result {
            Ok(()) => "committed".into(),
            Err(e) => format!("failed: {e}"),
        };
        if let Some(t) = &report.transfer {
            report.predicted_downtime_s =
                godwit_core::policy::predicted_hold_s(&t.estimate, t.mode).map(|h| {
                    h + report.cutover_estimate_s + report.start_estimate_s.unwrap_or(0.0)
                });
        }
        if let (Ok(()), Some(d)) = (&result, report.downtime_seconds) {
            report.downtime_target_missed =
                super::audit::missed_target(d, report.downtime_target_s);
        }
        if let Some(missed) = &report.downtime_target_missed {
            warn!(
                id,
                predicted_ms = ?report.predicted_downtime_s.map(|d| (d * 1e3).round()),
                stop_ms = ?report.stop_estimate_s.map(|d| (d * 1e3).round()),
                start_ms = ?report.start_estimate_s.map(|d| (d * 1e3).round()),
                "the move {missed}"
            );
        }
        report.finished_unix_ms = now_ms();
        report.total_seconds = started.elapsed().as_secs_f64();
        {
            let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            if result.is_ok() {
                st.committed += 1;
                if report.downtime_target_missed.is_some() {
                    st.downtime_target_missed += 1;
                }
                if let Some(t) = &report.transfer {
                    st.learned
                        .push_back(model::observed(t, report.dirty_bytes_per_second));
                    while st.learned.len() > LEARN_FROM {
                        st.learned.pop_front();
                    }
                }
            } else {
                st.failed += 1;
            }
            st.last = Some(report.clone());
        }
        if let Err(e) = self.append_audit(&report) {
            warn!(file = %self.audit.display(), error = %e, "cannot append to the audit log");
        }
        info!(
            id,
            result = %report.result,
            downtime_ms = ?report.downtime_seconds.map(|d| (d * 1e3).round()),
            "migration finished"
        );
        report
    }

    /// Claims `service` for one migration: refused (not queued) while another migration from
    /// here moves it, or one whose hand-off is unresolved still holds it in the journal.
    fn claim(&self, service: &str) -> Result<Claim<'_>, String> {
        let mut moving = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        if moving.contains(service) {
            return Err(format!("a migration of {service} is already under way"));
        }
        if let Some(e) = self
            .journal
            .as_ref()
            .and_then(|j| j.sources().into_iter().find(|e| e.service == service))
        {
            return Err(format!(
                "migration {} of {service} is not resolved yet",
                e.migration
            ));
        }
        moving.insert(service.to_string());
        Ok(Claim {
            moving: &self.moving,
            service: service.to_string(),
        })
    }

    /// Refuses a request to move `service` to `to` from `requested_by` without trying
    /// anything: the refusal is appended to the audit log (result `refused: why`) and
    /// counted, like a migration.
    pub fn refuse(
        &self,
        service: &str,
        to: &str,
        requested_by: &str,
        why: &str,
    ) -> MigrationReport {
        let now = now_ms();
        let mut report = MigrationReport {
            id: format!("{service}-{now}-refused"),
            service: service.to_string(),
            from: self.node.clone(),
            to: to.to_string(),
            requested_by: requested_by.to_string(),
            result: format!("refused: {why}"),
            started_unix_ms: now,
            finished_unix_ms: now,
            ..MigrationReport::default()
        };
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        let Some(left_out) = admitted else {
            return report;
        };
        let mut audited = report.clone();
        if left_out > 0 {
            audited.result = format!(
                "{} ({left_out} earlier refusals not written)",
                report.result
            );
        }
        if let Err(e) = self.append_audit(&audited) {
            warn!(file = %self.audit.display(), error = %e, "cannot append to the audit log");
        }
        warn!(
            service,
            to, requested_by, why, left_out, "migration request refused"
        );
        report.result = audited.result;
        report
    }

    pub(super) fn append_audit(&self, report: &MigrationReport) -> std::io::Result<()> {
        super::audit::append(&self.audit, report)
    }

    async fn run(
        &self,
        req: &MigrateRequest,
        id: &str,
        report: &mut MigrationReport,
        intent: Option<u64>,
        decided: &std::sync::atomic::AtomicBool,
    ) -> Result<(), MigrateError> {
        let spec = self
            .manager
            .spec(&req.service)
            .ok_or_else(|| MigrateError::Unmovable(format!("no service {:?} here", req.service)))?;
        let status = self.manager.status(&req.service)?;
        if status.state != RunState::Running {
            return Err(MigrateError::Unmovable(format!(
                "{} is {}, not running",
                req.service, status.state
            )));
        }
        if req.to == self.node {
            return Err(MigrateError::Unmovable("the target is this node".into()));
        }
        let mut progress = Reporter::new(req.progress.clone());
        progress.phase(Phase::Image);
        let peer = self.transport.endpoint().connect(req.addr, &req.to).await?;
        // The image, by content: only what the target lacks moves.
        let mut target_spec = spec.clone();
        if let (Some(image_id), Some(store)) = (&status.image_id, &self.images) {
            let digest = godwit_image::Digest::parse(image_id)
                .map_err(|e| MigrateError::BadState(e.to_string()))?;
            let pushed = godwit_image::push(&peer, store, &digest).await?;
            report.image_chunks_sent = pushed.chunks_sent;
            target_spec.image = None;
            target_spec.image_id = Some(image_id.clone());
        }
        // The model's inputs.
        progress.phase(Phase::Measure);
        let mut path = self
            .transport
            .measure(&req.to, req.addr, FIRST_PROBE)
            .await
            .map_err(MigrateError::Path)?;
        // On a path fast enough, a second probe sized to take about `PROBE_SECONDS`: a few
        // milliseconds of a busy host's scheduling weigh less in it (4 MiB once measured
        // 88 MB/s where round 0 then ran at 115, and the model predicted a round too many).
        let longer = (path.bandwidth_bytes_per_second * PROBE_SECONDS) as u64;
        if longer >= 2 * FIRST_PROBE {
            let bytes = longer.min(LONGEST_PROBE);
            match self.transport.measure(&req.to, req.addr, bytes).await {
                Ok(p) if p.bandwidth_bytes_per_second > 0.0 => path = p,
                Ok(_) => {}
                Err(e) => debug!(error = %e, "the longer path probe failed: the first stands"),
            }
        }
        report.rtt_ms = path.rtt_ms;
        report.bandwidth_bytes_per_second = path.bandwidth_bytes_per_second;
        report.dirty_bytes_per_second = self.dirty_rate(&status.cgroup);
        let section = &self.manager.runtime().section;
        let state_dir = spec.state_dir(section);
        let scan = StateScan::new(&state_dir, &spec.state_relative(section))?;
        let files = scan.list()?;
        report.state_bytes = files.iter().filter_map(|f| f.size).sum();
        report.state_dirty_share = {
            let (root, files) = (state_dir.clone(), files.clone());
            tokio::task::spawn_blocking(move || crate::scan::dirty_share(&root, &files))
                .await
                .ok()
                .flatten()
        };
        // The zstd level from this machine's speed on a sample of the state and the path's:
        // the bandwidth after compression is what the model takes.
        let choice = {
            let (root, path_bps) = (state_dir.clone(), path.bandwidth_bytes_per_second);
            tokio::task::spawn_blocking(move || {
                let sample = sample_state(&root, &files, SAMPLE_CHUNKS, SAMPLE_CHUNK);
                let parts: Vec<&[u8]> = sample.iter().map(Vec::as_slice).collect();
                godwit_transport::choose_level(&parts, path_bps)
            })
            .await
            .map_err(|e| MigrateError::BadState(e.to_string()))?
        };
        info!(level = ?choice.level, expected_mb_s = choice.expected_bytes_per_second / 1e6, path_mb_s = choice.path_bytes_per_second / 1e6, "compression chosen");
        report.effective_bandwidth_bytes_per_second = choice.expected_bytes_per_second;
        let level = choice.level;
        report.compression = Some(choice);
        // The downtime target covers the whole cut-over; the model's budget is what is left of
        // it for the frozen round's copy once the rest (as the last move from here measured it)
        // is paid.
        let target_s = req.downtime_target.as_secs_f64();
        report.downtime_target_s = target_s;
        // The service's own stop and start, as its last ones here took: an intermittent move
        // stops it, every move starts it on the target. Never measured: not counted, and the
        // report says so.
        let timings = self.manager.timings(&req.service).unwrap_or_default();
        report.stop_estimate_s = timings.expected_stop_s();
        report.start_estimate_s = timings.expected_start_s();
        let learned = self.stats().learned;
        report.learned_moves = learned.len();
        report.cutover_estimate_s = model::expected_cutover_s(&learned);
        let frozen_fit = model::expected_frozen_fit(&learned);
        report.round_overhead_estimate_s = match frozen_fit {
            Some((o, _)) => (o - report.rtt_ms / 1e3).clamp(0.0, 1.0),
            None => model::expected_round_overhead_s(&learned, report.rtt_ms / 1e3),
        };
        report.live_overhead_estimate_s = model::expected_live_overhead_s(&learned);
        report.frozen_round_target_s =
            (target_s - report.cutover_estimate_s - report.start_estimate_s.unwrap_or(0.0))
                .max(target_s * MIN_FROZEN_SHARE);
        let input = PrecopyInput {
            state_bytes: report.state_bytes as f64,
            dirty_bytes_per_s: report.dirty_bytes_per_second,
            bandwidth_bytes_per_s: report.effective_bandwidth_bytes_per_second,
            // A round's fixed cost above half the frozen round's budget is taken as half:
            // with a larger one no frozen round fits the target in either mode, and iterating
            // still gives the shortest.
            rtt_s: report.rtt_ms / 1e3
                + report
                    .round_overhead_estimate_s
                    .min(report.frozen_round_target_s / 2.0),
            downtime_target_s: report.frozen_round_target_s,
            max_rounds: 10,
            scan_share: model::expected_scan_share(&learned),
            round_bandwidth_bytes_per_s: model::expected_round_bandwidth(&learned),
            live_overhead_s: report.live_overhead_estimate_s,
            later_dirty_bytes_per_s: report.dirty_bytes_per_second
                * model::later_dirty_ratio(&learned, report.state_dirty_share),
            frozen_bandwidth_bytes_per_s: frozen_fit.map_or(0.0, |(_, b)| b),
            stop_s: report.stop_estimate_s.unwrap_or(0.0),
        };
        let mut entry = SourceEntry {
            migration: id.to_string(),
            service: req.service.clone(),
            to: req.to.clone(),
            addr: req.addr,
            phase: SourcePhase::Copying,
            spec: serde_json::to_string(&spec)
                .map_err(|e| MigrateError::BadState(e.to_string()))?,
            target_spec: serde_json::to_string(&target_spec)
                .map_err(|e| MigrateError::BadState(e.to_string()))?,
            cgroup: PathBuf::from(&status.cgroup),
            state_dir: state_dir.clone(),
            at_unix_ms: now_ms(),
            intent,
            epoch: None,
        };
        if let Some(j) = &self.journal {
            j.lock(id)
                .await
                .put_source(&entry)
                .map_err(|e| MigrateError::Journal(Box::new(e)))?;
        }
        // The journal entry is left in place only while the hand-off is unresolved (a
        // background task owns it then): the machine's effects say.
        self.move_and_hand_off(
            req,
            id,
            report,
            &peer,
            (&mut entry, &target_spec),
            scan,
            input,
            level,
            progress,
            decided,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn move_and_hand_off(
        &self,
        req: &MigrateRequest,
        id: &str,
        report: &mut MigrationReport,
        peer: &Peer,
        (entry, target_spec): (&mut SourceEntry, &ServiceSpec),
        scan: StateScan,
        input: PrecopyInput,
        level: Option<i32>,
        progress: Reporter,
        decided: &std::sync::atomic::AtomicBool,
    ) -> Result<(), MigrateError> {
        let begun = StateSender::begin_with_spec(
            peer,
            id,
            &req.service,
            Some(target_spec.clone()),
            req.replace,
            scan,
            level,
        )
        .await;
        let mut sender = match begun {
            Ok(sender) => sender,
            Err(e) => {
                // Nothing to abort yet: the machine's other effects still apply.
                if let Ok((_, effects)) =
                    source_machine::step(SourceState::Rounds, SourceEvent::Failed)
                {
                    self.apply(entry, effects).await;
                }
                return Err(e);
            }
        };
        if let Some(t) = &self.tracker {
            sender.track_with(t.clone());
            sender.watch_direct_io(entry.cgroup.clone());
        }
        sender.full_verify(req.full_verify);
        let mut source = ManagedSource {
            manager: &self.manager,
            name: req.service.clone(),
            journal: self.journal.as_deref().map(|j| (j, entry.clone())),
            peer,
            entry: entry.clone(),
            target_spec,
            handed: None,
            then: Vec::new(),
            progress,
            gate: self.gate.as_deref(),
            decided,
            stopped_s: None,
        };
        let frozen_from = Instant::now();
        let outcome = drive(sender, &mut source, input, req.mode).await;
        let then = std::mem::take(&mut source.then);
        let drive_report = match outcome {
            Ok(mut r) => {
                r.cutover.stop_s = source.stopped_s;
                r
            }
            Err((e, mut r)) => {
                r.cutover.stop_s = source.stopped_s;
                // Not decided: the driver resumed the source; the target drops its copy.
                report.actual_rounds = r.rounds.len();
                report.transfer = Some(r);
                self.apply(entry, then).await;
                return Err(e);
            }
        };
        entry.phase = SourcePhase::Committed;
        // A transitional move asked for where the model would not iterate runs the rounds the
        // termination check lets it: that is its prediction.
        let e = &drive_report.estimate;
        let live = match (drive_report.mode, e.start, e.forced_live_rounds) {
            (SwitchMode::Transitional, start, Some(n))
                if start != godwit_core::policy::StartDecision::Iterate =>
            {
                n
            }
            _ => e.live_rounds,
        };
        report.predicted_rounds = Some(live + 1);
        report.actual_rounds = drive_report.rounds.len();
        let frozen_at = frozen_from
            + Duration::from_secs_f64(
                (drive_report.total_seconds - drive_report.frozen_seconds).max(0.0),
            );
        report.transfer = Some(drive_report);
        let Some(outcome) = source.handed.take() else {
            self.apply(entry, then).await;
            return Err(MigrateError::BadState(
                "decided, but no hand-off was made".into(),
            ));
        };
        if let (Some(c), HandoffOutcome::Started(st)) =
            (report.transfer.as_mut().map(|t| &mut t.cutover), &outcome)
        {
            c.target_spawn_s = Some(st.spawn_s);
            c.target_healthy_s = Some(st.healthy_s);
            c.target_vip_s = st.vip_s;
            c.target_start_s = st.start_s;
        }
        if let HandoffOutcome::Started(_) = &outcome {
            report.downtime_seconds = Some(frozen_at.elapsed().as_secs_f64());
        }
        if let HandoffOutcome::GivenBack(why) = &outcome {
            // It never ran there, and the frozen instance here ran nothing since the freeze:
            // it carries on as if the move had not been tried.
            warn!(reason = %why, "the target gave the service back: thawing it here");
        }
        self.apply(entry, then).await;
        match outcome {
            HandoffOutcome::Started(_) => {
                // Off the client's path: the frozen instance is dead by now. The target keeps
                // the downtime measured here as its switch latency.
                let switched =
                    report
                        .transfer
                        .as_ref()
                        .zip(report.downtime_seconds)
                        .map(|(t, downtime_s)| Switched {
                            mode: t.mode,
                            downtime_s,
                        });
                forget(peer, id, switched).await;
                peer.close("migrated");
                Ok(())
            }
            HandoffOutcome::GivenBack(why) => {
                forget(peer, id, None).await;
                Err(MigrateError::GivenBack(why))
            }
            HandoffOutcome::Unknown(why) => {
                warn!(reason = %why, "hand-off unanswered: resolving it in the background");
                Err(MigrateError::Unresolved(why))
            }
        }
    }

    /// Runs the source machine's effects that are the migrator's (after the driver's), in
    /// order, for migration `entry`.
    async fn apply(&self, entry: &SourceEntry, effects: Vec<SourceEffect>) {
        for effect in effects {
            match effect {
                SourceEffect::RemoveCopy => self.clean_source(entry).await,
                SourceEffect::RemoveJournal => {
                    if let Some(j) = &self.journal {
                        if let Err(e) = j.lock(&entry.migration).await.remove_source() {
                            warn!(error = %e, "cannot close the migration's journal entry");
                        }
                    }
                }
                // Given back after the decision: the frozen instance resumes.
                SourceEffect::Thaw => {
                    if let Err(e) = self
                        .manager
                        .thaw_for(&entry.service, &entry.migration)
                        .await
                    {
                        warn!(error = %e, "thaw failed: restarting it here");
                        if let Err(e) = self.manager.kill(&entry.service).await {
                            warn!(error = %e, "killing the instance that did not thaw");
                        }
                        if let Err(e) = self.manager.start(&entry.service).await {
                            warn!(error = %e, "and it did not start here either");
                        }
                    }
                }
                SourceEffect::Start => {
                    if let Err(e) = self.manager.start(&entry.service).await {
                        warn!(error = %e, "the given-back service did not start here");
                    }
                }
                SourceEffect::ResolveLater => {
                    if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
                        me.tasks.clone().spawn(me.resolve(entry.clone()));
                    }
                }
                other => warn!(effect = ?other, "not the migrator's effect"),
            }
        }
    }

    /// The target runs the service: the source forgets it and removes its copy of the state.
    async fn clean_source(&self, entry: &SourceEntry) {
        if self.manager.spec(&entry.service).is_some() {
            if let Err(e) = self.manager.remove(&entry.service).await {
                warn!(error = %e, "removing the migrated service here");
            }
        }
        if let Err(e) = remove_tree(entry.state_dir.clone()).await {
            warn!(error = %e, dir = %entry.state_dir.display(), "removing the migrated state here");
        }
    }

    /// Hands migration `entry` (decided) off again until the target answers: it runs the
    /// service (then the copy here goes), or it gave it back (then it starts here).
    pub(super) async fn resolve(self: Arc<Self>, entry: SourceEntry) {
        let deadline = Instant::now() + RESOLVE_FOR;
        loop {
            let outcome = match self
                .transport
                .endpoint()
                .connect(entry.addr, &entry.to)
                .await
            {
                Ok(peer) => match serde_json::from_str::<ServiceSpec>(&entry.target_spec) {
                    Ok(spec) => {
                        hand_off(
                            &peer,
                            &entry.migration,
                            &handed_spec(&spec, &entry),
                            self.manager.timings(&entry.service),
                        )
                        .await
                    }
                    // Not ours to start there: the target is asked to give it back.
                    Err(e) => {
                        abandon(
                            &peer,
                            &entry.migration,
                            format!("bad spec in the journal: {e}"),
                        )
                        .await
                    }
                },
                Err(e) => HandoffOutcome::Unknown(e.to_string()),
            };
            let result = match &outcome {
                HandoffOutcome::Started(_) => {
                    "resolved: the service runs on the target".to_string()
                }
                HandoffOutcome::GivenBack(why) => {
                    format!("resolved: given back ({why}); the service runs here")
                }
                HandoffOutcome::Unknown(why) => why.clone(),
            };
            let effects = match source_machine::step(
                SourceState::Pending,
                SourceEvent::HandedOff(outcome.handed()),
            ) {
                Ok((_, effects)) => effects,
                Err(r) => {
                    warn!(migration = %entry.migration, refused = %r, "hand-off not resolved");
                    return;
                }
            };
            for effect in effects {
                match effect {
                    SourceEffect::RemoveCopy => self.clean_source(&entry).await,
                    SourceEffect::StartHere => self.start_here(&entry).await,
                    SourceEffect::Audit => {
                        info!(migration = %entry.migration, "{result}");
                        // Audited before the journal entry goes: whoever sees the migration
                        // closed also finds it in the audit log (a crash between the two
                        // audits it twice, never not).
                        if let Err(e) = self.append_audit(&MigrationReport {
                            id: entry.migration.clone(),
                            service: entry.service.clone(),
                            from: self.node.clone(),
                            to: entry.to.clone(),
                            requested_by: "recovery".into(),
                            result: result.clone(),
                            started_unix_ms: entry.at_unix_ms,
                            finished_unix_ms: now_ms(),
                            ..MigrationReport::default()
                        }) {
                            warn!(file = %self.audit.display(), error = %e, "cannot append to the audit log");
                        }
                    }
                    SourceEffect::RemoveJournal => {
                        if let Some(j) = &self.journal {
                            if let Err(e) = j.lock(&entry.migration).await.remove_source() {
                                warn!(migration = %entry.migration, error = %e, "cannot close the migration's journal entry");
                            }
                        }
                    }
                    SourceEffect::ResolveLater if Instant::now() < deadline => {
                        info!(migration = %entry.migration, reason = %result, "hand-off still unresolved");
                        tokio::time::sleep(RESOLVE_EVERY).await;
                    }
                    SourceEffect::ResolveLater => {
                        warn!(migration = %entry.migration, reason = %result, "hand-off unresolved: giving up; the journal keeps it for the next start");
                        return;
                    }
                    other => warn!(effect = ?other, "not the resolver's effect"),
                }
            }
            if outcome.handed() != Handed::Unknown {
                if let Ok(peer) = self
                    .transport
                    .endpoint()
                    .connect(entry.addr, &entry.to)
                    .await
                {
                    forget(&peer, &entry.migration, None).await;
                }
                return;
            }
        }
    }

    /// Starts the service of migration `entry` here again (given back after a restart): as
    /// defined here, or from the spec the journal kept.
    pub(super) async fn start_here(&self, entry: &SourceEntry) {
        // Decided in the log: only once the log places it here again.
        if let (Some(g), Some(_)) = (&self.gate, entry.intent) {
            if !g.place_back(&entry.service, &entry.to).await {
                warn!(migration = %entry.migration, service = %entry.service, "given back, but the placement log does not place it here: it stays stopped");
                return;
            }
        }
        let started = if self.manager.spec(&entry.service).is_some() {
            self.manager.start(&entry.service).await.map(|_| ())
        } else {
            match serde_json::from_str::<ServiceSpec>(&entry.spec) {
                Ok(mut spec) => {
                    spec.autostart = true;
                    self.manager.add(spec).await.map(|_| ())
                }
                Err(e) => {
                    warn!(error = %e, "bad spec in the journal");
                    Ok(())
                }
            }
        };
        if let Err(e) = started {
            warn!(error = %e, "the given-back service did not start here");
        }
    }

    /// The dirty rate the probe reports for the service's cgroup, bytes per second.
    fn dirty_rate(&self, cgroup: &str) -> f64 {
        let snap = self
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        snap.and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.cgroup_path.len() > 1 && cgroup.ends_with(&c.cgroup_path))
                .map(|c| c.dirty_bytes_per_second)
        })
        .unwrap_or(0.0)
    }

    /// Counters.
    pub fn stats(&self) -> MigrationStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Migrator {
    /// Wraps the migrator in an `Arc` that its background tasks can reach.
    pub fn into_arc(self) -> Arc<Migrator> {
        let me = Arc::new(self);
        let _ = me.me.set(Arc::downgrade(&me));
        me
    }
}
