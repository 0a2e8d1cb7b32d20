//! Moving a managed service to another node, end to end (`godwit migrate`):
//!
//! 1. connect to the target over the transport (mutual TLS: only a cluster node can be a
//!    target, and the target only accepts a cluster node);
//! 2. push the service's image (only missing chunks move);
//! 3. measure the path and read the service's dirty rate from the probe: the pre-copy model's
//!    inputs;
//! 4. move the state in rounds with the probe tracking the state files' dirty pages, freeze
//!    the service, send the last round, verify, commit on the target ([`super::drive`]);
//! 5. kill the frozen source without thawing it (its VIP goes first), hand the spec to the
//!    target, which starts the service from the committed state and answers once healthy (its
//!    VIP comes up there);
//! 6. remove the source's copy of the state, append the migration to the audit log.
//!
//! Before the commit any failure thaws the source. If the target cannot start the service
//! after the commit, the source starts again from its own copy, which nothing changed since
//! the freeze.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn, Instrument};

use super::drive::{drive, DriveReport, Mode, Source};
use super::scan::StateScan;
use super::transfer::StateSender;
use crate::image::ImageStore;
use crate::policy::PrecopyInput;
use crate::probe::{DirtyTracker, SharedSnapshot};
use crate::service::{Health, Manager, RunState, ServiceSpec};
use crate::transport::agent::Transport;
use crate::transport::{open, Channel, PeerInfo, Services};

/// Name of the hand-off service (start a migrated service from committed state).
pub const HANDOFF: &str = "handoff";
/// How long the target may take to report the service healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
enum Handoff {
    /// The spec as JSON (its serde shape is not one bincode encodes).
    Start {
        migration: String,
        spec: Vec<u8>,
    },
    Started {
        pid: Option<u32>,
    },
    Failed {
        reason: String,
    },
}

/// Registers the hand-off service on a target: a migrated service's spec arrives after its
/// state was committed; the service is started and the answer comes once it is healthy.
pub fn register_handoff(services: &Services, manager: Arc<Manager>) {
    services.register(HANDOFF, move |peer, ch| handoff(peer, ch, manager.clone()));
}

async fn handoff(peer: PeerInfo, mut ch: Channel, manager: Arc<Manager>) {
    let Ok(Some(Handoff::Start { migration, spec })) = ch.recv::<Handoff>().await else {
        return;
    };
    let reply = match start_migrated(&manager, &spec).await {
        Ok(pid) => {
            info!(peer = %peer.node, migration, "migrated service started");
            Handoff::Started { pid }
        }
        Err(reason) => {
            warn!(peer = %peer.node, migration, reason, "migrated service not started");
            Handoff::Failed { reason }
        }
    };
    let _ = ch.send(&reply).await;
    let _ = ch.finish();
}

async fn start_migrated(manager: &Manager, spec: &[u8]) -> Result<Option<u32>, String> {
    let mut spec: ServiceSpec = serde_json::from_slice(spec).map_err(|e| e.to_string())?;
    spec.autostart = true;
    let name = spec.name.clone();
    if manager.spec(&name).is_some() {
        // A stale definition from an earlier stay here: replaced.
        manager.remove(&name).await.map_err(|e| e.to_string())?;
    }
    manager.add(spec).await.map_err(|e| e.to_string())?;
    let s = manager
        .wait_for(&name, START_TIMEOUT, |s| {
            s.health == Health::Healthy || matches!(s.state, RunState::Failed)
        })
        .await
        .map_err(|e| e.to_string())?;
    if s.health == Health::Healthy {
        Ok(s.pid)
    } else {
        Err(format!(
            "{name} is {} ({:?}) after the hand-off",
            s.state, s.health
        ))
    }
}

/// What to move where.
#[derive(Debug, Clone)]
pub struct MigrateRequest {
    /// The service.
    pub service: String,
    /// The target node.
    pub to: String,
    /// Its transport address.
    pub addr: SocketAddr,
    /// How to switch.
    pub mode: Mode,
    /// The downtime target.
    pub downtime_target: Duration,
    /// Who asked (for the audit log).
    pub requested_by: String,
}

/// A migration as reported and audited: predicted against actual.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MigrationReport {
    /// Its id.
    pub id: String,
    /// The service.
    pub service: String,
    /// From this node.
    pub from: String,
    /// To that node.
    pub to: String,
    /// Who asked.
    pub requested_by: String,
    /// `committed` or `failed: ...`.
    pub result: String,
    /// Start and end, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// End.
    pub finished_unix_ms: u64,
    /// Image chunks sent (0 when the target had them).
    pub image_chunks_sent: u64,
    /// Path measured before the move: RTT, milliseconds.
    pub rtt_ms: f64,
    /// Path measured before the move: bytes per second.
    pub bandwidth_bytes_per_second: f64,
    /// Dirty rate the probe reported for the service, bytes per second.
    pub dirty_bytes_per_second: f64,
    /// State size, bytes.
    pub state_bytes: u64,
    /// The pre-copy run: estimate, mode, rounds, frozen time.
    pub transfer: Option<DriveReport>,
    /// Rounds the model predicted (live rounds plus the frozen one).
    pub predicted_rounds: Option<u32>,
    /// Rounds run.
    pub actual_rounds: usize,
    /// From the freeze (or stop) to the service healthy on the target, seconds.
    pub downtime_seconds: Option<f64>,
    /// Wall time of the whole migration, seconds.
    pub total_seconds: f64,
}

/// Migration counters, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationStats {
    /// Migrations committed.
    pub committed: u64,
    /// Migrations that failed.
    pub failed: u64,
    /// The last one.
    pub last: Option<MigrationReport>,
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
    /// Counters.
    pub stats: Mutex<MigrationStats>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct ManagedSource<'a> {
    manager: &'a Manager,
    name: String,
}

impl Source for ManagedSource<'_> {
    async fn freeze(&mut self) -> Result<(), String> {
        self.manager
            .freeze(&self.name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn thaw(&mut self) -> Result<(), String> {
        self.manager
            .thaw(&self.name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn stop(&mut self) -> Result<(), String> {
        self.manager
            .stop(&self.name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn start(&mut self) -> Result<(), String> {
        self.manager
            .start(&self.name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Migrator {
    /// Moves `req.service` to `req.to`; the report says what happened either way and is
    /// appended to the audit log.
    pub async fn migrate(&self, req: MigrateRequest) -> MigrationReport {
        let id = format!("{}-{}", req.service, now_ms());
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
        let result = self.run(&req, &id, &mut report).instrument(span).await;
        report.result = match &result {
            Ok(()) => "committed".into(),
            Err(e) => format!("failed: {e}"),
        };
        report.finished_unix_ms = now_ms();
        report.total_seconds = started.elapsed().as_secs_f64();
        {
            let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            if result.is_ok() {
                st.committed += 1;
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

    fn append_audit(&self, report: &MigrationReport) -> std::io::Result<()> {
        if let Some(dir) = self.audit.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.audit)?;
        writeln!(f, "{}", serde_json::to_string(report).unwrap_or_default())
    }

    async fn run(
        &self,
        req: &MigrateRequest,
        id: &str,
        report: &mut MigrationReport,
    ) -> Result<(), String> {
        let spec = self
            .manager
            .spec(&req.service)
            .ok_or_else(|| format!("no service {:?} here", req.service))?;
        let status = self
            .manager
            .status(&req.service)
            .map_err(|e| e.to_string())?;
        if status.state != RunState::Running {
            return Err(format!("{} is {}, not running", req.service, status.state));
        }
        if req.to == self.node {
            return Err("the target is this node".into());
        }
        let peer = self
            .transport
            .endpoint()
            .connect(req.addr, &req.to)
            .await
            .map_err(|e| e.to_string())?;
        // The image, by content: only what the target lacks moves.
        let mut target_spec = spec.clone();
        if let (Some(image_id), Some(store)) = (&status.image_id, &self.images) {
            let digest = crate::image::Digest::parse(image_id).map_err(|e| e.to_string())?;
            let pushed = crate::image::push(&peer, store, &digest)
                .await
                .map_err(|e| format!("image: {e}"))?;
            report.image_chunks_sent = pushed.chunks_sent;
            target_spec.image = None;
            target_spec.image_id = Some(image_id.clone());
        }
        // The model's inputs.
        let path = self
            .transport
            .measure(&req.to, req.addr, 4 << 20)
            .await
            .map_err(|e| format!("path: {e}"))?;
        report.rtt_ms = path.rtt_ms;
        report.bandwidth_bytes_per_second = path.bandwidth_bytes_per_second;
        report.dirty_bytes_per_second = self.dirty_rate(&status.cgroup);
        let section = &self.manager.runtime().section;
        let state_dir = spec.state_dir(section);
        let scan =
            StateScan::new(&state_dir, &spec.state_relative(section)).map_err(|e| e.to_string())?;
        report.state_bytes = scan
            .list()
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|f| f.size)
            .sum();
        let input = PrecopyInput {
            state_bytes: report.state_bytes as f64,
            dirty_bytes_per_s: report.dirty_bytes_per_second,
            bandwidth_bytes_per_s: report.bandwidth_bytes_per_second,
            rtt_s: report.rtt_ms / 1e3,
            downtime_target_s: req.downtime_target.as_secs_f64(),
            max_rounds: 10,
        };
        let mut sender = StateSender::begin(&peer, id, &req.service, scan, Some(1))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(t) = &self.tracker {
            sender.track_with(t.clone());
        }
        let mut source = ManagedSource {
            manager: &self.manager,
            name: req.service.clone(),
        };
        let frozen_from = Instant::now();
        let outcome = drive(sender, &mut source, input, req.mode).await;
        let drive_report = match outcome {
            Ok(r) => r,
            Err((e, r)) => {
                report.actual_rounds = r.rounds.len();
                report.transfer = Some(r);
                return Err(e.to_string());
            }
        };
        report.predicted_rounds = Some(drive_report.estimate.live_rounds + 1);
        report.actual_rounds = drive_report.rounds.len();
        let frozen_at = frozen_from
            + Duration::from_secs_f64(
                (drive_report.total_seconds - drive_report.frozen_seconds).max(0.0),
            );
        report.transfer = Some(drive_report);
        // Committed on the target: the frozen source must not run another instruction.
        self.manager
            .kill(&req.service)
            .await
            .map_err(|e| e.to_string())?;
        let mut ch = open(&peer, HANDOFF).await.map_err(|e| e.to_string())?;
        ch.send(&Handoff::Start {
            migration: id.to_string(),
            spec: serde_json::to_vec(&target_spec).unwrap_or_default(),
        })
        .await
        .map_err(|e| e.to_string())?;
        let answer =
            tokio::time::timeout(START_TIMEOUT + Duration::from_secs(5), ch.recv::<Handoff>())
                .await
                .map_err(|_| "the target did not answer the hand-off".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        match answer {
            Ok(Some(Handoff::Started { .. })) => {
                report.downtime_seconds = Some(frozen_at.elapsed().as_secs_f64());
                self.manager
                    .remove(&req.service)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&state_dir);
                peer.close("migrated");
                Ok(())
            }
            other => {
                let why = match other {
                    Ok(Some(Handoff::Failed { reason })) => reason,
                    Ok(other) => format!("unexpected hand-off reply {other:?}"),
                    Err(e) => e,
                };
                warn!(reason = %why, "the target did not start the service: starting it here again");
                if let Err(e) = self.manager.start(&req.service).await {
                    warn!(error = %e, "and it did not start here either");
                }
                Err(format!("hand-off: {why}"))
            }
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
