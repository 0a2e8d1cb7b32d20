//! The source's crash recovery, when an agent starts (before any service starts): every
//! migration the journal holds is stepped with a restart ([`SourceEvent::Restart`]) and the
//! machine's effects run here: leftover processes killed, VIP released, then the service
//! resumed here (not decided) or kept from starting and handed off again (decided). The
//! target's recovery is [`super::target::Target::recover`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::audit::MigrationReport;
use super::journal::{now_ms, Journal, SourceEntry};
use super::source::Migrator;
use super::source_machine::{self, SourceEffect, SourceEvent, SourceState};
use godwit_runtime::service::{Manager, RunState, ServiceSpec};

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
/// killed and its VIP released, and the migration is sorted into resume or decided. The
/// rest of the machine's effects (start, audit, forget; or resolve) are
/// [`finish_recovery`]'s.
pub fn recover_sources(journal: &Journal, vip_interface: Option<&str>) -> SourceRecovery {
    let mut out = SourceRecovery::default();
    for e in journal.sources() {
        let effects = match source_machine::step(SourceState::Rounds, SourceEvent::Restart(e.phase))
        {
            Ok((_, effects)) => effects,
            Err(r) => {
                warn!(migration = %e.migration, refused = %r, "source: not recovered");
                continue;
            }
        };
        info!(migration = %e.migration, service = %e.service, phase = ?e.phase, "source: migration to resolve after a restart");
        let spec: Option<ServiceSpec> = serde_json::from_str(&e.spec).ok();
        for effect in effects {
            match effect {
                SourceEffect::KillLeftovers => kill_leftovers(&e.cgroup),
                SourceEffect::ReleaseVip => release_vip(spec.as_ref(), vip_interface),
                SourceEffect::KeepFromStarting => out.decided.push(e.clone()),
                SourceEffect::StartHere => match &spec {
                    Some(spec) => out.resume.push((e.migration.clone(), spec.clone())),
                    None => {
                        warn!(migration = %e.migration, "unreadable spec in the journal: dropped");
                        match journal.try_lock(&e.migration).map(|g| g.remove_source()) {
                            Some(Ok(())) => {}
                            Some(Err(err)) => {
                                warn!(migration = %e.migration, error = %err, "cannot drop the journal entry")
                            }
                            None => warn!(migration = %e.migration, "the journal is busy"),
                        }
                        break;
                    }
                },
                // Once the services run: `finish_recovery`.
                SourceEffect::Audit | SourceEffect::RemoveJournal | SourceEffect::ResolveLater => {}
                other => warn!(effect = ?other, "not a recovery's effect"),
            }
        }
    }
    out
}

/// Releases the VIP of `spec`, if any, from `vip_interface` (or the default interface).
fn release_vip(spec: Option<&ServiceSpec>, vip_interface: Option<&str>) {
    let Some(vip) = spec.and_then(|s| s.vip) else {
        return;
    };
    let iface = vip_interface
        .map(str::to_string)
        .or_else(godwit_runtime::service::vip::default_interface);
    if let Some(iface) = iface {
        if let Err(err) = godwit_runtime::service::vip::remove(vip, &iface) {
            warn!(%vip, error = %err, "releasing a crashed migration's VIP");
        }
    }
}

/// Kills whatever still runs in the cgroup directory `cgroup` (frozen tasks included).
pub(super) fn kill_leftovers(cgroup: &Path) {
    let procs = || {
        std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    };
    if !procs() {
        return;
    }
    warn!(cgroup = %cgroup.display(), "killing a crashed agent's leftover service processes");
    if let Err(e) = std::fs::write(cgroup.join("cgroup.kill"), "1") {
        warn!(cgroup = %cgroup.display(), error = %e, "cgroup.kill");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finishes a source recovery once the services and the transport run: resumed services
/// start here (unless the configuration already started them), are audited and forgotten;
/// decided ones are handed off again in the background.
pub async fn finish_recovery(
    rec: SourceRecovery,
    manager: &Manager,
    journal: &Journal,
    migrator: Option<&Arc<Migrator>>,
) {
    for (id, mut spec) in rec.resume {
        let name = spec.name.clone();
        // With a coordinator, the log decides: a move it committed is finished from here,
        // whatever the journal says.
        let entry = journal.sources().into_iter().find(|e| e.migration == id);
        if let (Some(m), Some(e)) = (migrator, entry) {
            if let (Some(g), Some(intent)) = (&m.gate, e.intent) {
                match g.settle(&e.service, intent, &e.to).await {
                    super::gate::LogDecision::Committed(epoch) => {
                        info!(migration = %id, service = %name, epoch, "the placement log committed the move before the restart: handing it off");
                        let e = SourceEntry {
                            epoch: Some(epoch),
                            ..e
                        };
                        m.tasks.spawn(m.clone().resolve(e));
                        continue;
                    }
                    super::gate::LogDecision::Refused(why) => {
                        info!(migration = %id, service = %name, reason = %why, "the placement log did not move it: it runs here again");
                    }
                }
            }
        }
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
            let report = MigrationReport {
                id: id.clone(),
                service: name,
                from: m.node.clone(),
                requested_by: "recovery".into(),
                result: "failed: the agent restarted before the decision; resumed on the source"
                    .into(),
                finished_unix_ms: now_ms(),
                ..MigrationReport::default()
            };
            if let Err(e) = m.append_audit(&report) {
                warn!(migration = %id, error = %e, "cannot append to the audit log");
            }
        }
        if let Err(e) = journal.lock(&id).await.remove_source() {
            warn!(migration = %id, error = %e, "cannot close the migration's journal entry");
        }
    }
    for e in rec.decided {
        match migrator {
            Some(m) => {
                m.tasks.spawn(m.clone().resolve(e));
            }
            None => {
                warn!(migration = %e.migration, "decided migration, but no transport to hand it off")
            }
        }
    }
}
