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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn, Instrument};

use super::drive::{drive, DriveReport, Mode, Source};
use super::journal::{now_ms, Journal, SourceEntry, SourcePhase, TargetEntry, TargetPhase};
use super::progress::{Phase, Progress, Reporter};
use super::scan::StateScan;
use super::transfer::StateSender;
use godwit_core::policy::PrecopyInput;
use godwit_image::ImageStore;
use godwit_probe::{DirtyTracker, SharedSnapshot};
use godwit_runtime::service::{Health, Manager, RunState, ServiceSpec};
use godwit_transport::agent::Transport;
use godwit_transport::{open, Channel, Peer, PeerInfo, Services};

/// Name of the hand-off service (start a migrated service from committed state).
pub const HANDOFF: &str = "handoff";
/// How long the target may take to report the service healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The cut-over's cost outside the frozen round's copy (freeze, hash check, commit, decision,
/// hand-off) assumed before this node has measured one, seconds.
const DEFAULT_CUTOVER_S: f64 = 0.05;
/// The least share of the downtime target left to the frozen round's copy, however long the
/// rest of the cut-over took last time: a target below the cut-over's own cost then still
/// gets the shortest frozen round the live rounds reach (transitional), not a stop-and-copy
/// that would be far longer.
const MIN_FROZEN_SHARE: f64 = 0.25;
/// A round's own cost beyond moving its bytes (listing, the probe's flush, write-back, round
/// trips) assumed before this node has measured one, seconds: the model's latency term adds
/// it to the path's RTT.
const DEFAULT_ROUND_OVERHEAD_S: f64 = 0.02;
/// The bytes dirtied during rounds 0 of the last moves below which their `s` is not taken.
const SCAN_SHARE_EVIDENCE: f64 = 64e6;
/// What a live round costs beyond the frozen one (writing the dirty pages back, a running
/// service beside it) assumed before this node has measured one, seconds.
const DEFAULT_LIVE_OVERHEAD_S: f64 = 0.015;
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
/// How often the target checks a migrated service's health until it first passes: a TCP or
/// HTTP check that is refused costs tens of microseconds, so every 2 ms (the first pass comes
/// on average 1 ms after the service listens, not 5 as at 10 ms)...
const CUTOVER_POLL: Duration = Duration::from_millis(2);
/// ... and a command check, a process each time, every 10 ms.
const CUTOVER_POLL_COMMAND: Duration = Duration::from_millis(10);
/// How long a VIP added at the cut-over waits for the service's supervisor to take it over.
const VIP_ADOPT_WITHIN: Duration = Duration::from_secs(60);
/// How long the source waits for the target to confirm it gave the service back.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);
/// A target that knows the decision starts the service itself when no hand-off came by then
/// (the source died after deciding).
pub const ADOPT_AFTER: Duration = Duration::from_secs(3);
/// A target drops a prepared copy when no decision came by then (the source resumed, or died
/// before deciding and resumes when it restarts).
pub const PREPARED_WAIT: Duration = Duration::from_secs(30);
/// How often a source whose hand-off went unanswered asks again, and for how long.
const RESOLVE_EVERY: Duration = Duration::from_secs(2);
const RESOLVE_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
enum Handoff {
    /// The spec as JSON (its serde shape is not one bincode encodes).
    Start {
        migration: String,
        spec: Vec<u8>,
    },
    Started {
        pid: Option<u32>,
        /// The target's clock from the hand-off's arrival: spawned, healthy, VIP up (seconds).
        spawn_s: f64,
        healthy_s: f64,
        vip_s: Option<f64>,
    },
    /// The target does not run the service and never will for this migration.
    Failed {
        reason: String,
    },
    /// The source gives up waiting: the target stops the service and gives it back.
    Abandon {
        migration: String,
    },
    Abandoned,
}

/// The target's side of migrations into this node: the journal, and starting the services
/// whose move was decided (by the hand-off, or on its own when the source is gone).
#[derive(Debug)]
pub struct Target {
    journal: Arc<Journal>,
    manager: Arc<Manager>,
    /// One start at a time, so a hand-off and an adoption never start a service twice.
    starting: Arc<tokio::sync::Mutex<()>>,
}

impl Target {
    /// The target side over this node's journal and services.
    pub fn new(journal: Arc<Journal>, manager: Arc<Manager>) -> Arc<Target> {
        Arc::new(Target {
            journal,
            manager,
            starting: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn phase(&self, id: &str) -> Option<TargetPhase> {
        self.journal.target(id).map(|e| e.phase)
    }

    /// Starts the service of migration `id` if its move was decided or is being decided now
    /// (`Prepared` or `Owned`); idempotent once started. On failure the service is removed
    /// here, the copy dropped and the migration marked `Returned`: the source may run it.
    async fn start_owned(&self, id: &str, spec: Option<&[u8]>) -> Result<Started, String> {
        let start_lock = self.starting.clone().lock_owned().await;
        let entry = {
            let _g = self.journal.lock().await;
            match self.journal.target(id) {
                Some(e) if matches!(e.phase, TargetPhase::Prepared | TargetPhase::Owned) => {
                    // The decision on the state channel, sent with the hand-off, may have
                    // recorded it already: no second fsync on the way to the start.
                    if e.phase == TargetPhase::Prepared {
                        self.journal
                            .set_target(id, TargetPhase::Owned)
                            .map_err(|e| e.to_string())?;
                    }
                    e
                }
                Some(e) if e.phase == TargetPhase::Started => {
                    return Ok(Started {
                        pid: self.manager.status(&e.service).ok().and_then(|s| s.pid),
                        ..Started::default()
                    });
                }
                other => {
                    return Err(format!(
                        "migration {id} is not held here ({:?})",
                        other.map(|e| e.phase)
                    ))
                }
            }
        };
        let started = self.start_spec(id, &entry, spec).await;
        let _g = self.journal.lock().await;
        match (started, self.phase(id)) {
            (Ok(started), Some(TargetPhase::Owned)) => {
                // `Started` is recorded once the answer is on its way (an fsync off the
                // source's path, which waits for the answer to kill its frozen instance).
                // Until then the start lock stays held, so no other start finds `Owned`
                // meanwhile; an abandon first makes it `Returned`, and a crash first leaves
                // `Owned`, which starts the service here again: either way, one place.
                let (journal, id) = (self.journal.clone(), id.to_string());
                tokio::spawn(async move {
                    let _held = start_lock;
                    let _g = journal.lock().await;
                    if journal.target(&id).map(|e| e.phase) == Some(TargetPhase::Owned) {
                        if let Err(e) = journal.set_target(&id, TargetPhase::Started) {
                            warn!(migration = %id, error = %e, "recording the start");
                        }
                    }
                });
                Ok(started)
            }
            (result, phase) => {
                let why = match result {
                    Err(e) => e,
                    Ok(_) => format!("given back meanwhile ({phase:?})"),
                };
                self.give_back(&entry).await;
                Err(why)
            }
        }
    }

    async fn start_spec(
        &self,
        id: &str,
        entry: &TargetEntry,
        spec: Option<&[u8]>,
    ) -> Result<Started, String> {
        let began = Instant::now();
        let bytes = entry
            .spec
            .as_ref()
            .map(|s| s.as_bytes())
            .or(spec)
            .ok_or("no spec for the service")?;
        let mut spec: ServiceSpec = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        spec.autostart = true;
        let name = spec.name.clone();
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
        let vip = spec.vip.and_then(|addr| {
            let iface = self
                .manager
                .runtime()
                .section
                .vip_interface
                .clone()
                .or_else(godwit_runtime::service::vip::default_interface)?;
            Some((addr, iface))
        });
        // The address goes on the interface while the service starts, unannounced: clients
        // keep going to the frozen source until the gratuitous ARP (or, for IPv6, the
        // unsolicited neighbour advertisement) at the first passing check.
        let assigning = vip.clone().map(|(addr, iface)| {
            tokio::task::spawn_blocking(move || {
                godwit_runtime::service::vip::assign(addr, &iface).map_err(|e| e.to_string())
            })
        });
        if let Err(e) = self.manager.add(spec).await {
            if let (Some(t), Some((addr, iface))) = (assigning, vip) {
                if matches!(t.await, Ok(Ok(()))) {
                    let _ = tokio::task::spawn_blocking(move || {
                        godwit_runtime::service::vip::remove(addr, &iface)
                    })
                    .await;
                }
            }
            return Err(e.to_string());
        }
        let released = vip.as_ref().map(|(addr, iface)| {
            release_unless_adopted(self.manager.clone(), name.clone(), *addr, iface.clone())
        });
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
                        if godwit_runtime::service::check(h).await {
                            return Ok(st);
                        }
                    }
                }
                tokio::time::sleep(poll).await;
            }
        };
        let s = tokio::select! {
            s = tokio::time::timeout(START_TIMEOUT, first_pass) => match s {
                Ok(s) => s?,
                Err(_) => return Err(format!("{name} did not pass its health check within {START_TIMEOUT:?}")),
            },
            () = given_back => return Err("given back while starting".into()),
        };
        let healthy_s = began.elapsed().as_secs_f64();
        // Announced at once (the supervisor adds and announces it at its own first pass, and
        // takes this one over then).
        let vip_s = match (vip, assigning) {
            (Some(_), _) if s.vip_active => Some(healthy_s),
            (Some((addr, iface)), Some(assigning)) => {
                let assigned = match assigning.await {
                    // Released meanwhile (the first instance stopped): added again below.
                    Ok(Ok(())) if released.as_ref().is_some_and(|r| r.load(Ordering::SeqCst)) => {
                        Err("released".to_string())
                    }
                    Ok(r) => r,
                    Err(e) => Err(e.to_string()),
                };
                let announced = tokio::task::block_in_place(|| match assigned {
                    Ok(()) => godwit_runtime::service::vip::announce(addr, &iface)
                        .map_err(|e| e.to_string()),
                    // The supervisor may be adding it at the same moment: present is enough.
                    Err(_) => godwit_runtime::service::vip::add(addr, &iface).or_else(|e| {
                        if godwit_runtime::service::vip::present(addr, &iface) {
                            Ok(())
                        } else {
                            Err(e.to_string())
                        }
                    }),
                });
                match announced {
                    Ok(()) => Some(began.elapsed().as_secs_f64()),
                    Err(e) => {
                        // Not there at all: it comes with the supervisor's own first pass.
                        warn!(service = %name, vip = %addr, error = %e, "the cut-over could not bring up the VIP; the supervisor will");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(Started {
            pid: s.pid,
            spawn_s,
            healthy_s,
            vip_s,
        })
    }

    /// Removes the service and the copy of migration `entry` and marks it `Returned`. The
    /// caller holds the journal's lock.
    async fn give_back(&self, entry: &TargetEntry) {
        if self.manager.spec(&entry.service).is_some() {
            if let Err(e) = self.manager.remove(&entry.service).await {
                warn!(service = %entry.service, error = %e, "removing a given-back service");
            }
        }
        self.manager.unpark(&entry.service).await;
        let _ = std::fs::remove_dir_all(&entry.dest);
        if let Err(e) = self
            .journal
            .set_target(&entry.migration, TargetPhase::Returned)
        {
            warn!(migration = %entry.migration, error = %e, "cannot record the give-back");
        }
    }

    /// The source gave up waiting: whatever this node did with migration `id`, it stops and
    /// never starts it again.
    async fn abandon(&self, id: &str) {
        let was = {
            let _g = self.journal.lock().await;
            match self.journal.target(id) {
                Some(e) if e.phase != TargetPhase::Returned => {
                    let _ = self.journal.set_target(id, TargetPhase::Returned);
                    Some(e)
                }
                _ => None,
            }
        };
        // A start in progress sees `Returned` and gives the service back itself.
        let _s = self.starting.lock().await;
        if let Some(e) = was.filter(|e| e.phase != TargetPhase::Staging) {
            let _g = self.journal.lock().await;
            self.give_back(&e).await;
        }
    }

    /// Resolves migration `id` left `Prepared` or `Owned` by a transfer that ended, or found
    /// so at start: a prepared copy waits for the decision (the hand-off) and is dropped
    /// without one; an owned one is started here if no hand-off did it.
    async fn settle(self: Arc<Self>, id: String) {
        match self.phase(&id) {
            Some(TargetPhase::Prepared) => {
                tokio::time::sleep(PREPARED_WAIT).await;
                let _g = self.journal.lock().await;
                if let Some(e) = self
                    .journal
                    .target(&id)
                    .filter(|e| e.phase == TargetPhase::Prepared)
                {
                    info!(migration = %id, "no decision for the prepared copy: dropped");
                    self.give_back(&e).await;
                }
            }
            Some(TargetPhase::Owned) => {
                tokio::time::sleep(ADOPT_AFTER).await;
                if self.phase(&id) == Some(TargetPhase::Owned) {
                    info!(migration = %id, "decided but not handed off: starting it here");
                    match self.start_owned(&id, None).await {
                        Ok(_) => {
                            info!(migration = %id, "migrated service started without the source")
                        }
                        Err(e) => {
                            warn!(migration = %id, error = %e, "migrated service not started")
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Resolves the migrations the ids of which arrive on `pending` (see [`Target::settle`]).
    pub fn watch(
        self: &Arc<Self>,
        mut pending: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(id) = pending.recv().await {
                tokio::spawn(me.clone().settle(id));
            }
        })
    }

    /// At start: removes staging copies (no transfer survives a restart), forgets given-back
    /// migrations, and queues prepared and owned ones on `pending`.
    pub fn recover(&self, state_root: &Path, pending: &tokio::sync::mpsc::UnboundedSender<String>) {
        for e in self.journal.targets() {
            match e.phase {
                TargetPhase::Staging | TargetPhase::Returned => {
                    let _ = std::fs::remove_dir_all(&e.staging);
                    let _ = self.journal.remove_target(&e.migration);
                    info!(migration = %e.migration, phase = ?e.phase, "target: migration cleaned up");
                }
                TargetPhase::Prepared | TargetPhase::Owned => {
                    info!(migration = %e.migration, phase = ?e.phase, "target: migration to resolve");
                    let _ = pending.send(e.migration.clone());
                }
                // Kept a day to answer a repeated hand-off.
                TargetPhase::Started => {
                    if now_ms().saturating_sub(e.at_unix_ms) > 86_400_000 {
                        let _ = self.journal.remove_target(&e.migration);
                    }
                }
            }
        }
        remove_stale_staging(state_root);
    }
}

/// The VIP a cut-over added for service `name` stays only if its supervisor takes it over
/// (its own first passing check): if the service stops, is removed or given back first, the
/// address is released here, and the flag returned is set.
fn release_unless_adopted(
    manager: Arc<Manager>,
    name: String,
    addr: std::net::IpAddr,
    iface: String,
) -> Arc<AtomicBool> {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    tokio::spawn(async move {
        let held = manager
            .wait_for(&name, VIP_ADOPT_WITHIN, |s| {
                s.vip_active || s.state != RunState::Running
            })
            .await
            .is_ok_and(|s| s.vip_active);
        if !held {
            flag.store(true, Ordering::SeqCst);
            warn!(service = %name, vip = %addr, "the cut-over's VIP was not taken over: released");
            if let Err(e) = tokio::task::spawn_blocking(move || {
                godwit_runtime::service::vip::remove(addr, &iface)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            {
                warn!(error = %e, "releasing the cut-over's VIP");
            }
        }
    });
    released
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
    let reply = match ch.recv::<Handoff>().await {
        Ok(Some(Handoff::Start { migration, spec })) => {
            match target.start_owned(&migration, Some(&spec)).await {
                Ok(st) => {
                    info!(peer = %peer.node, migration, spawn_s = st.spawn_s, healthy_s = st.healthy_s, vip_s = ?st.vip_s, "migrated service started");
                    Handoff::Started {
                        pid: st.pid,
                        spawn_s: st.spawn_s,
                        healthy_s: st.healthy_s,
                        vip_s: st.vip_s,
                    }
                }
                Err(reason) => {
                    warn!(peer = %peer.node, migration, reason, "migrated service not started; given back");
                    Handoff::Failed { reason }
                }
            }
        }
        Ok(Some(Handoff::Abandon { migration })) => {
            target.abandon(&migration).await;
            info!(peer = %peer.node, migration, "hand-off abandoned by the source: given back");
            Handoff::Abandoned
        }
        _ => return,
    };
    let _ = ch.send(&reply).await;
    let _ = ch.finish();
}

/// A migrated service started on the target, with the target's timings (zero when it had
/// been started before).
#[derive(Debug, Clone, Default)]
struct Started {
    pid: Option<u32>,
    spawn_s: f64,
    healthy_s: f64,
    vip_s: Option<f64>,
}

/// What a hand-off came to.
enum HandoffOutcome {
    /// The target runs the service.
    Started(Started),
    /// The target does not run it and never will: the source may.
    GivenBack(String),
    /// No answer: the target may or may not run it.
    Unknown(String),
}

async fn hand_off(peer: &Peer, entry: &SourceEntry) -> HandoffOutcome {
    let ask = async {
        let mut ch = open(peer, HANDOFF).await.map_err(|e| e.to_string())?;
        ch.send(&Handoff::Start {
            migration: entry.migration.clone(),
            spec: entry.target_spec.as_bytes().to_vec(),
        })
        .await
        .map_err(|e| e.to_string())?;
        ch.recv::<Handoff>().await.map_err(|e| e.to_string())
    };
    let why = match tokio::time::timeout(START_TIMEOUT + Duration::from_secs(5), ask).await {
        Ok(Ok(Some(Handoff::Started {
            pid,
            spawn_s,
            healthy_s,
            vip_s,
        }))) => {
            return HandoffOutcome::Started(Started {
                pid,
                spawn_s,
                healthy_s,
                vip_s,
            })
        }
        Ok(Ok(Some(Handoff::Failed { reason }))) => return HandoffOutcome::GivenBack(reason),
        Ok(Ok(other)) => format!("unexpected hand-off reply {other:?}"),
        Ok(Err(e)) => e,
        Err(_) => "the target did not answer the hand-off".to_string(),
    };
    // Ask the target to give the service back, and wait until it has.
    let abandon = async {
        let mut ch = open(peer, HANDOFF).await.map_err(|e| e.to_string())?;
        ch.send(&Handoff::Abandon {
            migration: entry.migration.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
        ch.recv::<Handoff>().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(ABANDON_TIMEOUT, abandon).await {
        Ok(Ok(Some(Handoff::Abandoned))) => {
            HandoffOutcome::GivenBack(format!("{why}; the target gave it back"))
        }
        _ => HandoffOutcome::Unknown(why),
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
    /// Who asked (for the audit log): the caller's verified certificate name, such as
    /// `operator alice` or `node n1` (see [`super::control`]).
    pub requested_by: String,
    /// Verify by re-hashing every file of the state on both sides with the service frozen,
    /// rather than by the hash tree the rounds kept (slower: it reads the whole state).
    pub full_verify: bool,
    /// Where the migration's progress goes as it runs (`godwit migrate` shows it).
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
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
    /// `committed`, `failed: ...`, or `refused: ...` (the caller may not start migrations:
    /// nothing was tried).
    pub result: String,
    /// Start and end, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// End.
    pub finished_unix_ms: u64,
    /// Image chunks sent (0 when the target had them).
    pub image_chunks_sent: u64,
    /// Path measured before the move: RTT, milliseconds.
    pub rtt_ms: f64,
    /// Path measured before the move: bytes per second (incompressible data).
    pub bandwidth_bytes_per_second: f64,
    /// The bandwidth after compression the model used: what the chosen zstd level is
    /// expected to move, bytes of state per second.
    pub effective_bandwidth_bytes_per_second: f64,
    /// The zstd level and the measurements it was chosen from.
    pub compression: Option<godwit_transport::LevelChoice>,
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
    /// The cut-over's cost outside the frozen round's copy, as expected before the move (the
    /// median of the last committed moves from this node, or a default), seconds.
    pub cutover_estimate_s: f64,
    /// The downtime target less that cost (at least a quarter of the target): the budget the
    /// pre-copy model gives the frozen round, seconds.
    pub frozen_round_target_s: f64,
    /// The frozen round's own cost beyond moving its bytes, as expected before the move (the
    /// median of the last committed moves from this node, or a default); the model's `RTT` is
    /// the path's plus this, seconds.
    pub round_overhead_estimate_s: f64,
    /// What a live round costs beyond that (the model's `o_l`), as expected before the move,
    /// seconds.
    pub live_overhead_estimate_s: f64,
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
    /// Requests refused before anything was tried (no certificate: the HTTP API; a caller or
    /// fencing token not allowed).
    pub refused: u64,
    /// The last one.
    pub last: Option<MigrationReport>,
    /// What the last few committed moves showed of the model's own figures, oldest first.
    pub learned: std::collections::VecDeque<Observed>,
}

/// What the pre-copy model takes from one committed move from this node: the next moves use
/// the medians over the last [`LEARN_FROM`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Observed {
    /// The cut-over's cost outside the frozen round's copy, seconds.
    pub cutover_s: f64,
    /// The frozen round's fixed cost (the RTT in it): its time beyond its bytes at `B_r`.
    pub frozen_overhead_s: Option<f64>,
    /// What a live round after round 0 costs beyond that (the fit's fixed cost less the
    /// frozen round's), seconds.
    pub live_overhead_s: Option<f64>,
    /// The rate of the rounds after round 0, bytes per second.
    pub round_bytes_per_s: Option<f64>,
    /// What round 1 sent and what the probe saw dirtied while round 0 ran, bytes: the model's
    /// `s` is their ratio.
    pub scan_bytes: Option<(f64, f64)>,
    /// How much faster the rounds after round 1 saw pages dirtied than the probe's rate for
    /// the service before the move (the median over them), bytes per second: pages a service
    /// rewrites (a hot set) stay dirty between the kernel's write-backs, so the probe counts
    /// them once per write-back, while every round cleans them and counts them again.
    /// Recorded, not used: added to `D` it also inflated round 1, where a long round 0 counts
    /// a hot page once, and the estimate got worse.
    pub dirty_extra: Option<f64>,
    /// The same rounds' rate over the probe's (the median over them): the model's `D'/D`,
    /// the rate it takes from round 2 on (round 1 keeps `D`).
    pub dirty_later_ratio: Option<f64>,
    /// The frozen round: bytes and seconds. Across moves whose frozen rounds differ in size
    /// they give the frozen round's own rate and fixed cost.
    pub frozen_round: Option<(f64, f64)>,
}

/// Committed moves the model learns from.
const LEARN_FROM: usize = 5;

impl Observed {
    fn of(t: &DriveReport, probe_rate: f64) -> Observed {
        let rate = t
            .round_fit
            .map(|f| f.bytes_per_s)
            .unwrap_or(t.estimate.input.bandwidth_bytes_per_s);
        let frozen = t
            .rounds
            .last()
            .filter(|_| rate > 0.0)
            .map(|r| (t.cutover.final_round_s - r.bytes as f64 / rate).clamp(0.0, 1.0));
        Observed {
            cutover_s: (t.frozen_seconds - t.cutover.final_round_s).clamp(0.0, 1.0),
            frozen_overhead_s: frozen,
            live_overhead_s: t
                .round_fit
                .zip(frozen)
                .map(|(f, o)| (f.overhead_s - o).clamp(0.0, 1.0)),
            round_bytes_per_s: t.round_fit.map(|f| f.bytes_per_s),
            dirty_extra: median(t.dirty_rates.iter().skip(2).copied())
                .map(|m| m - probe_rate)
                .filter(|_| probe_rate > 0.0),
            frozen_round: t
                .rounds
                .last()
                .filter(|_| t.rounds.len() > 1)
                .map(|r| (r.bytes as f64, t.cutover.final_round_s)),
            dirty_later_ratio: median(t.dirty_rates.iter().skip(2).copied())
                .filter(|_| probe_rate > 0.0)
                .map(|m| m / probe_rate),
            scan_bytes: t.scan_share.and_then(|_| {
                let r1 = t.rounds.get(1)?;
                let dirtied = (r1.dirty_pages * super::scan::BLOCK).max(r1.bytes);
                Some((r1.bytes as f64, dirtied as f64))
            }),
        }
    }
}

/// The frozen rounds' line `t = o_f + V/B_f` through `(bytes, seconds)` points, when their
/// sizes differ by half or more and the rate is positive and below the live rounds' `br`
/// (0: unknown).
fn frozen_fit(points: &[(f64, f64)], br: f64) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(v, t)| *v > 0.0 && *t > 0.0)
        .collect();
    let (lo, hi) = points.iter().fold((f64::MAX, 0.0f64), |(lo, hi), (v, _)| {
        (lo.min(*v), hi.max(*v))
    });
    if points.len() < 2 || hi < 1.5 * lo {
        return None;
    }
    godwit_core::policy::fit_rounds(&points)
        .filter(|(_, b)| b.is_finite() && *b > 0.0 && (br <= 0.0 || *b < br))
}

/// The median of the values present, if any.
fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
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
    /// This migrator, for the background tasks it spawns (set by [`Migrator::new`]).
    pub me: std::sync::OnceLock<std::sync::Weak<Migrator>>,
}

/// A failed migration: over (the service runs on the source), or pending when the hand-off
/// went unanswered (the journal entry stays, and a background task resolves it).
enum MoveError {
    Failed(String),
    Pending(String),
}

struct ManagedSource<'a> {
    manager: &'a Manager,
    name: String,
    journal: Option<(&'a Journal, SourceEntry)>,
    /// Where the service goes once decided, and the migration.
    peer: &'a Peer,
    entry: SourceEntry,
    /// What the hand-off came to, and its times (seconds): the hand-off, then the kill.
    handed: Option<(HandoffOutcome, f64, f64)>,
    /// Where the progress goes.
    progress: Reporter,
}

impl ManagedSource<'_> {
    fn record(&mut self, phase: SourcePhase) -> Result<(), String> {
        if let Some((j, e)) = &mut self.journal {
            e.phase = phase;
            e.at_unix_ms = now_ms();
            j.put_source(e).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Source for ManagedSource<'_> {
    async fn decide(&mut self) -> Result<(), String> {
        self.record(SourcePhase::Committed)
    }
    async fn freeze(&mut self) -> Result<(), String> {
        // Not journalled first (an fsync on the downtime): a restart after a crash treats a
        // migration still `Copying` as one that may have frozen the service, and kills and
        // restarts it from its own state (`recover_sources`), exactly as for `Frozen`.
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
        self.record(SourcePhase::Frozen)?;
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
    /// The hand-off first, the kill after: the frozen instance runs no other instruction
    /// either way, and keeping it (and its VIP) until the target's VIP is up means a client
    /// never sends into a void. Its connections are reset when it dies (the VIP is still
    /// here), new ones were accepted by its kernel and are reset too, and clients reconnect
    /// to the target, which their neighbour caches already name (gratuitous ARP).
    async fn hand_over(&mut self) {
        self.progress.phase(Phase::Handoff);
        let t = Instant::now();
        // Fault injection for the tests: a source that dies between its decision and the
        // hand-off (the target must then start the service on its own).
        if let Some(ms) = std::env::var(HANDOFF_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            warn!(ms, "{HANDOFF_DELAY_ENV}: the hand-off waits");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let outcome = hand_off(self.peer, &self.entry).await;
        let handoff_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        match &outcome {
            // The target runs it, or may: this instance must never run again.
            HandoffOutcome::Started(_) | HandoffOutcome::Unknown(_) => {
                if let Err(e) = self.manager.kill(&self.name).await {
                    warn!(error = %e, "killing the frozen source");
                }
            }
            // Never ran there: the caller thaws this one.
            HandoffOutcome::GivenBack(_) => {}
        }
        self.handed = Some((outcome, handoff_s, t.elapsed().as_secs_f64()));
    }
    fn progress(&mut self, progress: Progress) {
        self.progress.send(progress);
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
                if let Some(t) = &report.transfer {
                    st.learned
                        .push_back(Observed::of(t, report.dirty_bytes_per_second));
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
        let report = MigrationReport {
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
        if let Err(e) = self.append_audit(&report) {
            warn!(file = %self.audit.display(), error = %e, "cannot append to the audit log");
        }
        warn!(service, to, requested_by, why, "migration request refused");
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
        let mut progress = Reporter::new(req.progress.clone());
        progress.phase(Phase::Image);
        let peer = self
            .transport
            .endpoint()
            .connect(req.addr, &req.to)
            .await
            .map_err(|e| e.to_string())?;
        // The image, by content: only what the target lacks moves.
        let mut target_spec = spec.clone();
        if let (Some(image_id), Some(store)) = (&status.image_id, &self.images) {
            let digest = godwit_image::Digest::parse(image_id).map_err(|e| e.to_string())?;
            let pushed = godwit_image::push(&peer, store, &digest)
                .await
                .map_err(|e| format!("image: {e}"))?;
            report.image_chunks_sent = pushed.chunks_sent;
            target_spec.image = None;
            target_spec.image_id = Some(image_id.clone());
        }
        // The model's inputs.
        progress.phase(Phase::Measure);
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
        let files = scan.list().map_err(|e| e.to_string())?;
        report.state_bytes = files.iter().filter_map(|f| f.size).sum();
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
            .map_err(|e| e.to_string())?
        };
        info!(level = ?choice.level, expected_mb_s = choice.expected_bytes_per_second / 1e6, path_mb_s = choice.path_bytes_per_second / 1e6, "compression chosen");
        report.effective_bandwidth_bytes_per_second = choice.expected_bytes_per_second;
        let level = choice.level;
        report.compression = Some(choice);
        // The downtime target covers the whole cut-over; the model's budget is what is left of
        // it for the frozen round's copy once the rest (as the last move from here measured it)
        // is paid.
        let target_s = req.downtime_target.as_secs_f64();
        report.cutover_estimate_s = self.expected_cutover_s();
        let frozen_fit = self.expected_frozen_fit();
        report.round_overhead_estimate_s = match frozen_fit {
            Some((o, _)) => (o - report.rtt_ms / 1e3).clamp(0.0, 1.0),
            None => self.expected_round_overhead_s(report.rtt_ms / 1e3),
        };
        report.live_overhead_estimate_s = self.expected_live_overhead_s();
        report.frozen_round_target_s =
            (target_s - report.cutover_estimate_s).max(target_s * MIN_FROZEN_SHARE);
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
            scan_share: self.expected_scan_share(),
            round_bandwidth_bytes_per_s: self.expected_round_bandwidth(),
            live_overhead_s: report.live_overhead_estimate_s,
            later_dirty_bytes_per_s: report.dirty_bytes_per_second
                * self.expected_later_dirty_ratio(),
            frozen_bandwidth_bytes_per_s: frozen_fit.map_or(0.0, |(_, b)| b),
        };
        let mut entry = SourceEntry {
            migration: id.to_string(),
            service: req.service.clone(),
            to: req.to.clone(),
            addr: req.addr,
            phase: SourcePhase::Copying,
            spec: serde_json::to_string(&spec).map_err(|e| e.to_string())?,
            target_spec: serde_json::to_string(&target_spec).map_err(|e| e.to_string())?,
            cgroup: PathBuf::from(&status.cgroup),
            state_dir: state_dir.clone(),
            at_unix_ms: now_ms(),
        };
        if let Some(j) = &self.journal {
            j.put_source(&entry).map_err(|e| format!("journal: {e}"))?;
        }
        let result = self
            .move_and_hand_off(
                req, id, report, &peer, &mut entry, scan, input, level, progress,
            )
            .await;
        if let Some(j) = &self.journal {
            // Left in place only while the hand-off is unresolved (a background task owns it).
            if !matches!(&result, Err(MoveError::Pending(_))) {
                if let Err(e) = j.remove_source(id) {
                    warn!(error = %e, "cannot close the migration's journal entry");
                }
            }
        }
        result.map_err(|e| match e {
            MoveError::Failed(e) | MoveError::Pending(e) => e,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn move_and_hand_off(
        &self,
        req: &MigrateRequest,
        id: &str,
        report: &mut MigrationReport,
        peer: &Peer,
        entry: &mut SourceEntry,
        scan: StateScan,
        input: PrecopyInput,
        level: Option<i32>,
        progress: Reporter,
    ) -> Result<(), MoveError> {
        let fail = MoveError::Failed;
        let mut sender = StateSender::begin_with_spec(
            peer,
            id,
            &req.service,
            Some(entry.target_spec.clone()),
            scan,
            level,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
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
            handed: None,
            progress,
        };
        let frozen_from = Instant::now();
        let outcome = drive(sender, &mut source, input, req.mode).await;
        let drive_report = match outcome {
            Ok(r) => r,
            Err((e, r)) => {
                // Not decided: the driver resumed the source; the target drops its copy.
                report.actual_rounds = r.rounds.len();
                report.transfer = Some(r);
                return Err(fail(e.to_string()));
            }
        };
        entry.phase = SourcePhase::Committed;
        // A transitional move asked for where the model would not iterate runs the rounds the
        // termination check lets it: that is its prediction.
        let e = &drive_report.estimate;
        let live = match (drive_report.mode, e.start, e.forced_live_rounds) {
            (Mode::Transitional, start, Some(n))
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
        let Some((outcome, handoff_s, kill_s)) = source.handed.take() else {
            return Err(fail("decided, but no hand-off was made".into()));
        };
        if let Some(c) = report.transfer.as_mut().map(|t| &mut t.cutover) {
            c.handoff_s = handoff_s;
            c.kill_s = kill_s;
            if let HandoffOutcome::Started(st) = &outcome {
                c.target_spawn_s = Some(st.spawn_s);
                c.target_healthy_s = Some(st.healthy_s);
                c.target_vip_s = st.vip_s;
            }
        }
        match outcome {
            HandoffOutcome::Started(_) => {
                report.downtime_seconds = Some(frozen_at.elapsed().as_secs_f64());
                self.clean_source(entry).await;
                peer.close("migrated");
                Ok(())
            }
            HandoffOutcome::GivenBack(why) => {
                // It never ran there, and the frozen instance here ran nothing since the
                // freeze: it carries on as if the move had not been tried.
                warn!(reason = %why, "the target gave the service back: thawing it here");
                if let Err(e) = self.manager.thaw(&req.service).await {
                    warn!(error = %e, "thaw failed: restarting it here");
                    let _ = self.manager.kill(&req.service).await;
                    if let Err(e) = self.manager.start(&req.service).await {
                        warn!(error = %e, "and it did not start here either");
                    }
                }
                Err(fail(format!(
                    "hand-off: {why}; the service runs here again"
                )))
            }
            HandoffOutcome::Unknown(why) => {
                warn!(reason = %why, "hand-off unanswered: resolving it in the background");
                if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
                    tokio::spawn(me.resolve(entry.clone()));
                }
                Err(MoveError::Pending(format!(
                    "hand-off: {why}; unresolved, the service runs nowhere until the target answers"
                )))
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
        let _ = std::fs::remove_dir_all(&entry.state_dir);
    }

    /// Hands migration `entry` (decided) off again until the target answers: it runs the
    /// service (then the copy here goes), or it gave it back (then it starts here).
    async fn resolve(self: Arc<Self>, entry: SourceEntry) {
        let deadline = Instant::now() + RESOLVE_FOR;
        loop {
            let outcome = match self
                .transport
                .endpoint()
                .connect(entry.addr, &entry.to)
                .await
            {
                Ok(peer) => hand_off(&peer, &entry).await,
                Err(e) => HandoffOutcome::Unknown(e.to_string()),
            };
            let result = match outcome {
                HandoffOutcome::Started(_) => {
                    self.clean_source(&entry).await;
                    "resolved: the service runs on the target".to_string()
                }
                HandoffOutcome::GivenBack(why) => {
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
                    format!("resolved: given back ({why}); the service runs here")
                }
                HandoffOutcome::Unknown(why) if Instant::now() < deadline => {
                    info!(migration = %entry.migration, reason = %why, "hand-off still unresolved");
                    tokio::time::sleep(RESOLVE_EVERY).await;
                    continue;
                }
                HandoffOutcome::Unknown(why) => {
                    warn!(migration = %entry.migration, reason = %why, "hand-off unresolved: giving up; the journal keeps it for the next start");
                    return;
                }
            };
            info!(migration = %entry.migration, "{result}");
            // Audited before the journal entry goes: whoever sees the migration closed also
            // finds it in the audit log (a crash between the two audits it twice, never not).
            let _ = self.append_audit(&MigrationReport {
                id: entry.migration.clone(),
                service: entry.service.clone(),
                from: self.node.clone(),
                to: entry.to.clone(),
                requested_by: "recovery".into(),
                result,
                started_unix_ms: entry.at_unix_ms,
                finished_unix_ms: now_ms(),
                ..MigrationReport::default()
            });
            if let Some(j) = &self.journal {
                let _ = j.remove_source(&entry.migration);
            }
            return;
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

    /// The cut-over's cost outside the frozen round's copy: the median over the last committed
    /// migrations from this node of what they spent frozen beyond their frozen round, or
    /// [`DEFAULT_CUTOVER_S`].
    fn expected_cutover_s(&self) -> f64 {
        median(self.stats().learned.iter().map(|o| Some(o.cutover_s))).unwrap_or(DEFAULT_CUTOVER_S)
    }

    /// The frozen round's own cost beyond moving its bytes (less the path's RTT now, which
    /// the model adds): the median over the last committed migrations from this node, or
    /// [`DEFAULT_ROUND_OVERHEAD_S`].
    fn expected_round_overhead_s(&self, rtt_s: f64) -> f64 {
        median(self.stats().learned.iter().map(|o| o.frozen_overhead_s))
            .map(|o| (o - rtt_s).clamp(0.0, 1.0))
            .unwrap_or(DEFAULT_ROUND_OVERHEAD_S)
    }

    /// What a live round costs beyond the frozen one: the median over the last committed
    /// migrations from this node, or [`DEFAULT_LIVE_OVERHEAD_S`].
    fn expected_live_overhead_s(&self) -> f64 {
        median(self.stats().learned.iter().map(|o| o.live_overhead_s))
            .unwrap_or(DEFAULT_LIVE_OVERHEAD_S)
    }

    /// The frozen round's fixed cost and rate `(o_f, B_f)`: the least-squares line through
    /// the last committed migrations' frozen rounds when their sizes differ by half or more
    /// (else a line through near-equal sizes is noise) and it gives a positive rate; `None`
    /// otherwise (the fixed cost is then learned at the live rounds' `B_r`).
    fn expected_frozen_fit(&self) -> Option<(f64, f64)> {
        let points: Vec<(f64, f64)> = self
            .stats()
            .learned
            .iter()
            .filter_map(|o| o.frozen_round)
            .collect();
        frozen_fit(&points, self.expected_round_bandwidth())
    }

    /// `D'/D`, the dirty rate from round 2 on over the probe's: the median over the last
    /// committed migrations from this node that ran rounds past round 2, within 0.5 to 2, or
    /// 1 (the model's `D` throughout).
    fn expected_later_dirty_ratio(&self) -> f64 {
        median(self.stats().learned.iter().map(|o| o.dirty_later_ratio))
            .map_or(1.0, |r| r.clamp(0.5, 2.0))
    }

    /// The rate of the rounds after round 0 (scattered pages): the median of the last committed
    /// migrations' fits, or 0 (the model then takes the path's).
    fn expected_round_bandwidth(&self) -> f64 {
        median(self.stats().learned.iter().map(|o| o.round_bytes_per_s)).unwrap_or(0.0)
    }

    /// The model's `s` (the share of round 0's dirtied pages that round 1 sends): over the
    /// last committed migrations, what their rounds 1 sent over what their rounds 0 saw
    /// dirtied (weighted by volume: a move that dirtied little says little, and a median of
    /// ratios took a near-idle move's 0.09 for a 5 MB/s one), or the uniform-writes value
    /// while they dirtied less than [`SCAN_SHARE_EVIDENCE`] in all.
    fn expected_scan_share(&self) -> f64 {
        let (sent, dirtied) = self
            .stats()
            .learned
            .iter()
            .filter_map(|o| o.scan_bytes)
            .fold((0.0, 0.0), |(a, b), (s, d)| (a + s, b + d));
        if dirtied >= SCAN_SHARE_EVIDENCE {
            (sent / dirtied).clamp(0.05, 1.0)
        } else {
            godwit_core::policy::UNIFORM_SCAN_SHARE
        }
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

/// What a restarted source must do about the migrations its journal holds.
#[derive(Debug, Default)]
pub struct SourceRecovery {
    /// Not decided when the agent stopped: the service runs here again (migration id, spec).
    pub resume: Vec<(String, ServiceSpec)>,
    /// Decided: the service is the target's; the hand-off is finished from here.
    pub decided: Vec<SourceEntry>,
}

impl SourceRecovery {
    /// Services that must not start here: their move was decided.
    pub fn not_here(&self) -> std::collections::BTreeSet<String> {
        self.decided.iter().map(|e| e.service.clone()).collect()
    }
}

/// Reads the source side of the journal at start, before any service starts: every
/// migration's leftover processes (the instance the crashed agent ran, maybe frozen) are
/// killed and its VIP released, and the migration is sorted into resume or decided.
pub fn recover_sources(journal: &Journal, vip_interface: Option<&str>) -> SourceRecovery {
    let mut out = SourceRecovery::default();
    for e in journal.sources() {
        kill_leftovers(&e.cgroup);
        let spec: Option<ServiceSpec> = serde_json::from_str(&e.spec).ok();
        if let Some(vip) = spec.as_ref().and_then(|s| s.vip) {
            let iface = vip_interface
                .map(str::to_string)
                .or_else(godwit_runtime::service::vip::default_interface);
            if let Some(iface) = iface {
                if let Err(err) = godwit_runtime::service::vip::remove(vip, &iface) {
                    warn!(%vip, error = %err, "releasing a crashed migration's VIP");
                }
            }
        }
        info!(migration = %e.migration, service = %e.service, phase = ?e.phase, "source: migration to resolve after a restart");
        match (e.phase, spec) {
            (SourcePhase::Committed, _) => out.decided.push(e),
            (_, Some(spec)) => out.resume.push((e.migration.clone(), spec)),
            (_, None) => {
                warn!(migration = %e.migration, "unreadable spec in the journal: dropped");
                let _ = journal.remove_source(&e.migration);
            }
        }
    }
    out
}

/// Kills whatever still runs in the cgroup directory `cgroup` (frozen tasks included).
fn kill_leftovers(cgroup: &Path) {
    let procs = || {
        std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    };
    if !procs() {
        return;
    }
    warn!(cgroup = %cgroup.display(), "killing a crashed agent's leftover service processes");
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finishes a source recovery once the services and the transport run: resumed services
/// start here (unless the configuration already started them), decided ones are handed off
/// again in the background.
pub async fn finish_recovery(
    rec: SourceRecovery,
    manager: &Manager,
    journal: &Journal,
    migrator: Option<&Arc<Migrator>>,
) {
    for (id, mut spec) in rec.resume {
        let name = spec.name.clone();
        let started = match manager.status(&name) {
            Ok(s) if s.state == RunState::Running => Ok(()),
            Ok(_) => manager.start(&name).await.map(|_| ()),
            Err(_) => {
                spec.autostart = true;
                manager.add(spec).await.map(|_| ())
            }
        };
        match &started {
            Ok(()) => {
                info!(migration = %id, service = %name, "not decided before the restart: the service runs here")
            }
            Err(e) => {
                warn!(migration = %id, service = %name, error = %e, "not decided before the restart, and it did not start here")
            }
        }
        // Audited first, as in `Migrator::resolve`.
        if let Some(m) = migrator {
            let _ = m.append_audit(&MigrationReport {
                id: id.clone(),
                service: name,
                from: m.node.clone(),
                requested_by: "recovery".into(),
                result: "failed: the agent restarted before the decision; resumed on the source"
                    .into(),
                finished_unix_ms: now_ms(),
                ..MigrationReport::default()
            });
        }
        let _ = journal.remove_source(&id);
    }
    for e in rec.decided {
        match migrator {
            Some(m) => {
                tokio::spawn(m.clone().resolve(e));
            }
            None => {
                warn!(migration = %e.migration, "decided migration, but no transport to hand it off")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frozen_rounds_own_rate_comes_from_rounds_of_different_sizes() {
        const MB: f64 = 1e6;
        // Four moves at 5 MB/s froze 1.4 MB in 30 ms; one at 20 MB/s froze 4.5 MB in 65 ms.
        let mut points = vec![(1.4 * MB, 0.030); 4];
        points.push((4.5 * MB, 0.065));
        let (o, b) = frozen_fit(&points, 117.5 * MB).unwrap();
        assert!((b / MB - 88.6).abs() < 1.0, "{b}");
        assert!((o - 0.0142).abs() < 0.001, "{o}");
        // Rounds of about one size say nothing of a rate.
        assert_eq!(
            frozen_fit(&[(4.5 * MB, 0.065), (4.0 * MB, 0.06)], 0.0),
            None
        );
        assert_eq!(frozen_fit(&points[..1], 0.0), None);
        // A frozen round no slower than the live rounds: their rate stands.
        assert_eq!(frozen_fit(&points, 80.0 * MB), None);
    }
}
