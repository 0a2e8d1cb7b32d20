//! The receiving side of a state transfer (transport service `"state"`): rounds are written
//! into a staging directory, checked against the sender's hash tree, and committed in one
//! exchange. With the journal ([`TargetHooks`]) the commit is a prepared vote and every phase
//! change is the target state machine's ([`super::target_machine::step`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::error::MigrateError;
use super::journal::{now_ms, Journal, JournalGuard, TargetEntry, TargetPhase};
use super::protocol::{Msg, SERVICE};
use super::scan::{
    block_digest, file_digests, hash_tree, start_write_back, tree_of, tree_root, BlockDigest,
    FileMeta, BLOCK, UNKNOWN,
};
use super::target_machine::{step, TargetEffect, TargetEvent};
use super::transfer::{BATCH_BYTES, PIPELINE_PIECES};
use crate::tasks::remove_tree;
use godwit_transport::{Channel, PeerInfo, Piece, Services};

/// Registers the receiving side: state of service `S` is staged under `root/S.staging-<id>`
/// and committed to `root/S`. No journal: a commit is final at once (tests, tools).
pub fn register(services: &Services, root: PathBuf) {
    register_with(services, root, None);
}

/// The target's side of the migration journal: where each step is recorded, and where the
/// ids of migrations left prepared or owned (awaiting a decision or a start) are sent.
#[derive(Debug, Clone)]
pub struct TargetHooks {
    /// The journal.
    pub journal: Arc<Journal>,
    /// Ids of migrations left `Prepared` or `Owned` when the transfer's channel ends.
    pub pending: tokio::sync::mpsc::UnboundedSender<String>,
    /// This node's services: the service's process is forked ahead when the transfer
    /// begins ([`Manager::park`]), so the cut-over's start only execs it.
    ///
    /// [`Manager::park`]: godwit_runtime::service::Manager::park
    pub manager: Option<Arc<godwit_runtime::service::Manager>>,
    /// The owner of the tasks the target spawns.
    pub tasks: crate::Tasks,
}

/// [`register`] with the journal: the commit is a prepared vote until the source's decision.
pub fn register_with(services: &Services, root: PathBuf, hooks: Option<TargetHooks>) {
    let root = Arc::new(root);
    services.register(SERVICE, move |peer, ch| {
        receive(peer, ch, root.clone(), hooks.clone())
    });
}

/// Forks the service's process ahead of its start on this node ([`Manager::park`]), in the
/// background: the spec as the target starts it (`autostart`), unless the service is defined
/// here already. A failure only costs the cut-over the cgroup join it would have saved.
///
/// [`Manager::park`]: godwit_runtime::service::Manager::park
fn park_ahead(
    hooks: Option<&TargetHooks>,
    service: &str,
    spec: Option<&godwit_runtime::service::ServiceSpec>,
) -> Option<tokio::task::JoinHandle<Option<()>>> {
    let hooks = hooks?;
    let manager = hooks.manager.clone()?;
    let mut spec = spec?.clone();
    if spec.name != service || manager.spec(service).is_some() {
        return None;
    }
    spec.autostart = true;
    Some(hooks.tasks.spawn(async move {
        if let Err(e) = manager.park(spec).await {
            info!(error = %e, "no process forked ahead of the start");
        }
    }))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

/// How a transfer ended on the receiving side.
enum Outcome {
    /// Aborted before the commit, or the channel ended: the staging copy goes.
    Aborted,
    /// Committed; the decision may come later (or never: the journal's watcher decides).
    Prepared(PathBuf),
    /// Committed and decided: the service is this node's.
    Owned(PathBuf),
    /// Committed, then aborted by the source: the copy was dropped.
    Dropped,
}

/// Why a target refuses a `Begin` before anything is written: the spec is not the
/// migration's service, it names a host path, or the name is taken here (a service defined,
/// a process forked ahead, state on disk, another migration of it) and the operator did not
/// ask to replace it.
fn refuse_begin(
    migration: &str,
    service: &str,
    spec: Option<&godwit_runtime::service::ServiceSpec>,
    replace: bool,
    dest: &Path,
    hooks: Option<&TargetHooks>,
) -> Option<String> {
    if let Some(spec) = spec {
        if spec.name != service {
            return Some(format!(
                "the spec names {:?}, the migration moves {service:?}",
                spec.name
            ));
        }
        if let Some(image) = &spec.image {
            return Some(format!(
                "the spec names a host path ({}): a migrated service's image moves by id",
                image.display()
            ));
        }
    }
    let hooks = hooks?;
    if let Some(other) = hooks.journal.targets().into_iter().find(|e| {
        e.service == service
            && e.migration != migration
            && !matches!(e.phase, TargetPhase::Returned | TargetPhase::Started)
    }) {
        return Some(format!(
            "migration {} of {service:?} is under way here",
            other.migration
        ));
    }
    if replace {
        return None;
    }
    if let Some(m) = &hooks.manager {
        if m.spec(service).is_some() {
            return Some(format!(
                "a service {service:?} is defined here (the operator may --replace it)"
            ));
        }
        if m.is_parked(service) {
            return Some(format!("a process is forked ahead for {service:?} here"));
        }
    }
    // An empty directory holds nothing to lose (a start forked ahead makes one).
    let empty = std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_none());
    if dest.symlink_metadata().is_ok() && !empty {
        return Some(format!(
            "{service:?} has state here at {} (the operator may --replace it)",
            dest.display()
        ));
    }
    None
}

async fn receive(peer: PeerInfo, mut ch: Channel, root: Arc<PathBuf>, hooks: Option<TargetHooks>) {
    let (migration, service, spec, replace) = match ch.recv::<Msg>().await {
        Ok(Some(Msg::Begin {
            migration,
            service,
            spec,
            replace,
        })) => (migration, service, spec, replace),
        _ => return,
    };
    if !valid_name(&migration) || !valid_name(&service) {
        let _ = ch
            .send(&Msg::Failed {
                reason: format!("bad migration or service name {migration:?} / {service:?}"),
            })
            .await;
        return;
    }
    let staging = root.join(format!("{service}.staging-{migration}"));
    let dest = root.join(&service);
    if let Some(reason) = refuse_begin(
        &migration,
        &service,
        spec.as_deref(),
        replace,
        &dest,
        hooks.as_ref(),
    ) {
        warn!(peer = %peer.node, service, migration, reason, "migration into this node refused");
        let _ = ch.send(&Msg::Failed { reason }).await;
        return;
    }
    // The files will belong to the spec's user as this node knows it: one unknown here is
    // refused before anything is staged.
    let owner = Owner::of(hooks.as_ref(), spec.as_deref());
    if let Err(e) = &owner.ids {
        let reason = format!("this node cannot run {service}: {e}");
        warn!(peer = %peer.node, service, migration, reason, "migration into this node refused");
        let _ = ch.send(&Msg::Failed { reason }).await;
        return;
    }
    // The staging directory exists from here on: its inode names it in the journal, so a
    // recovery can tell which side of the commit's exchange it is on.
    let _ = remove_tree(staging.clone()).await;
    let staging_id = match fresh_dir(&staging) {
        Ok(id) => id,
        Err(e) => {
            let _ = ch
                .send(&Msg::Failed {
                    reason: e.to_string(),
                })
                .await;
            return;
        }
    };
    if let Some(h) = &hooks {
        let g = h.journal.lock(&migration).await;
        let begun = match step(g.target_phase(), TargetEvent::Begin) {
            Ok((_, effects)) => effects.into_iter().try_for_each(|effect| match effect {
                TargetEffect::CreateJournal(phase) => g.put_target(&TargetEntry {
                    migration: migration.clone(),
                    service: service.clone(),
                    from: peer.node.clone(),
                    phase,
                    staging: staging.clone(),
                    dest: dest.clone(),
                    staging_id: Some(staging_id),
                    // The journal keeps the spec as JSON, as before the typed wire.
                    spec: spec.as_ref().and_then(|s| serde_json::to_string(s).ok()),
                    at_unix_ms: now_ms(),
                }),
                other => Err(unexpected(other)),
            }),
            Err(refused) => Err(MigrateError::Peer(format!(
                "migration {migration}: {refused}"
            ))),
        };
        drop(g);
        if let Err(e) = begun {
            let _ = std::fs::remove_dir_all(&staging);
            let _ = ch
                .send(&Msg::Failed {
                    reason: e.to_string(),
                })
                .await;
            return;
        }
    }
    if ch.send(&Msg::Begun).await.is_err() {
        let _ = remove_tree(staging.clone()).await;
        if let Some(h) = &hooks {
            let g = h.journal.lock(&migration).await;
            let _ = g.remove_target();
        }
        return;
    }
    let parking = park_ahead(hooks.as_ref(), &service, spec.as_deref());
    let mut rx = Receiver {
        owner,
        staging: staging.clone(),
        files: BTreeMap::new(),
        digests: BTreeMap::new(),
        migration: migration.clone(),
        hooks: hooks.clone(),
        syncing: None,
        previous: None,
        max_bytes: hooks
            .as_ref()
            .and_then(|h| h.manager.as_ref())
            .map_or(godwit_runtime::service::DEFAULT_MAX_STATE_BYTES, |m| {
                m.runtime().section.max_state_bytes
            }),
    };
    let outcome = rx.run(&mut ch, &dest).await;
    match &outcome {
        Ok(Outcome::Owned(path)) => {
            info!(peer = %peer.node, service, migration, path = %path.display(), "state committed and decided");
        }
        Ok(Outcome::Prepared(path)) => {
            info!(peer = %peer.node, service, migration, path = %path.display(), "state committed; awaiting the decision");
        }
        Ok(Outcome::Aborted) => {
            info!(peer = %peer.node, service, migration, "state transfer aborted by the sender");
        }
        Ok(Outcome::Dropped) => {
            info!(peer = %peer.node, service, migration, "committed state dropped: the sender aborted");
        }
        Err(e) => {
            warn!(peer = %peer.node, service, migration, error = %e, "state transfer failed");
            let _ = ch
                .send(&Msg::Failed {
                    reason: e.to_string(),
                })
                .await;
        }
    }
    if !matches!(outcome, Ok(Outcome::Prepared(_) | Outcome::Owned(_))) {
        // No start here for this migration: the child forked ahead goes.
        if let (Some(parking), Some(m)) = (parking, hooks.as_ref().and_then(|h| h.manager.as_ref()))
        {
            let _ = parking.await;
            m.unpark(&service).await;
        }
    }
    let failed = matches!(outcome, Ok(Outcome::Aborted) | Err(_));
    let Some(h) = &hooks else {
        if failed {
            let _ = remove_tree(staging).await;
        }
        return;
    };
    // Unless a commit got as far as being recorded (then the watcher decides), the staging
    // copy and the entry go.
    let g = h.journal.lock(&migration).await;
    let ended = step(g.target_phase(), TargetEvent::ChannelEnded { failed })
        .map_err(|refused| MigrateError::BadState(refused.to_string()))
        .and_then(|(_, effects)| {
            effects.into_iter().try_for_each(|effect| match effect {
                TargetEffect::UndoCommit => g.target().map_or(Ok(()), |e| undo_commit(&e)),
                TargetEffect::DeleteStaging => {
                    let _ = std::fs::remove_dir_all(&staging);
                    Ok(())
                }
                TargetEffect::Queue => {
                    let _ = h.pending.send(migration.clone());
                    Ok(())
                }
                other => record(&g, other),
            })
        });
    if let Err(e) = ended {
        warn!(migration, error = %e, "closing the transfer in the journal");
    }
}

/// Entries a listing may have.
const MAX_ENTRIES: usize = 1 << 20;

/// Refuses a listing that is not a tree this node can hold: a path that is empty, absolute
/// or climbs (`..`, `.`, empty components), a path listed twice (say a file and a directory
/// at once), a path under a listed file, too many entries, or more bytes in all than
/// `max_bytes`.
fn check_listing(files: &[FileMeta], max_bytes: u64) -> Result<(), MigrateError> {
    if files.len() > MAX_ENTRIES {
        return Err(MigrateError::Peer(format!(
            "a listing of {} entries (at most {MAX_ENTRIES})",
            files.len()
        )));
    }
    let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
    let mut total = 0u64;
    for f in files {
        let ok = !f.rel.is_empty()
            && f.rel.len() <= 4096
            && !f.rel.starts_with('/')
            && f.rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !ok {
            return Err(MigrateError::Peer(format!("bad path {:?}", f.rel)));
        }
        if seen.insert(&f.rel, f.size.is_some()).is_some() {
            return Err(MigrateError::Peer(format!("{:?} is listed twice", f.rel)));
        }
        total = total
            .checked_add(f.size.unwrap_or(0))
            .filter(|t| *t <= max_bytes)
            .ok_or_else(|| {
                MigrateError::Peer(format!(
                    "the state is larger than this node takes for one service ({max_bytes} bytes)"
                ))
            })?;
    }
    for f in files {
        let mut at = f.rel.as_str();
        while let Some((parent, _)) = at.rsplit_once('/') {
            if seen.get(parent) == Some(&true) {
                return Err(MigrateError::Peer(format!(
                    "{:?} lies under {parent:?}, which is listed as a file",
                    f.rel
                )));
            }
            at = parent;
        }
    }
    Ok(())
}

/// Creates `dir` (its parents too); returns its device and inode.
fn fresh_dir(dir: &Path) -> Result<(u64, u64), MigrateError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir).map_err(|e| MigrateError::io(dir, e))?;
    let m = std::fs::metadata(dir).map_err(|e| MigrateError::io(dir, e))?;
    Ok((m.dev(), m.ino()))
}

/// Undoes the exchange of a commit that did not reach its vote (`Committing`): when the
/// destination is the staging copy (by device and inode), it goes back to the staging name
/// and what the exchange had put there (the state that was at the destination) returns to
/// the destination. Then the staging name holds only the copy, which the caller removes.
pub(crate) fn undo_commit(entry: &TargetEntry) -> Result<(), MigrateError> {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = entry.staging_id else {
        return Ok(());
    };
    let (staging, dest) = (&entry.staging, &entry.dest);
    let at_dest = std::fs::symlink_metadata(dest)
        .map(|m| (m.dev(), m.ino()) == (dev, ino))
        .unwrap_or(false);
    if !at_dest {
        // The exchange never happened: the destination is as it was.
        return Ok(());
    }
    if staging.symlink_metadata().is_ok() {
        exchange(staging, dest)?;
    } else {
        std::fs::rename(dest, staging).map_err(|e| MigrateError::io(dest, e))?;
        // Without the exchange, the previous state was renamed aside (`swap_into_place`).
        if let Some(aside) = previous_aside(dest) {
            std::fs::rename(&aside, dest).map_err(|e| MigrateError::io(&aside, e))?;
        }
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    warn!(migration = %entry.migration, dest = %dest.display(), "a commit cut short was undone: the state that was there is back");
    Ok(())
}

/// Where `swap_into_place` renamed a previous state aside on a filesystem without the
/// exchange, if it did.
fn previous_aside(dest: &Path) -> Option<PathBuf> {
    let name = dest.file_name()?.to_string_lossy().into_owned();
    let prefix = format!("{name}.previous-");
    std::fs::read_dir(dest.parent()?)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
}

/// `renameat2(a, b, RENAME_EXCHANGE)`.
fn exchange(a: &Path, b: &Path) -> Result<(), MigrateError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| MigrateError::BadState(format!("NUL in {}", p.display())))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(MigrateError::io(b, std::io::Error::last_os_error()))
    }
}

/// Runs a journal effect of the target machine under `g`.
fn record(g: &JournalGuard<'_>, effect: TargetEffect) -> Result<(), MigrateError> {
    match effect {
        TargetEffect::WriteJournal(phase) => g.set_target(phase).map(|_| ()),
        TargetEffect::RemoveJournal => g.remove_target(),
        other => Err(unexpected(other)),
    }
}

fn unexpected(effect: TargetEffect) -> MigrateError {
    MigrateError::BadState(format!("{effect:?} on the state channel"))
}

struct Receiver {
    /// Who the copy belongs to here, and the mode bits it keeps.
    owner: Owner,
    staging: PathBuf,
    files: BTreeMap<String, File>,
    /// The digest of every block of every file as written here (`UNKNOWN` where nothing was
    /// written since the listing sized it): the leaves of this side's hash tree.
    digests: BTreeMap<String, Vec<BlockDigest>>,
    migration: String,
    hooks: Option<TargetHooks>,
    /// The staging copy's fsync, started when the hash check is asked for (the frozen round is
    /// in by then), so the commit waits only for what is left of it.
    syncing: Option<tokio::task::JoinHandle<()>>,
    /// Where the commit's exchange put the state that was at the destination, until the vote
    /// is durable and it can go.
    previous: Option<PathBuf>,
    /// The largest state this node takes for one service (`[services] max_state_bytes`).
    max_bytes: u64,
}

impl Receiver {
    /// Runs the transfer.
    async fn run(&mut self, ch: &mut Channel, dest: &Path) -> Result<Outcome, MigrateError> {
        let mut listed: Vec<FileMeta> = Vec::new();
        // The tree of what was written, as of the last round.
        let mut our_tree: Option<Vec<(String, String)>> = None;
        let mut committed: Option<PathBuf> = None;
        loop {
            let msg = ch.recv::<Msg>().await;
            if let Some(path) = &committed {
                // Prepared: only the decision or an abort may follow.
                return match msg {
                    Ok(Some(Msg::Decided)) => {
                        if let Some(h) = &self.hooks {
                            let g = h.journal.lock(&self.migration).await;
                            let (_, effects) = step(g.target_phase(), TargetEvent::Decided)
                                .map_err(|refused| MigrateError::Peer(refused.to_string()))?;
                            for effect in effects {
                                match effect {
                                    // Sent below, once the guard is gone.
                                    TargetEffect::AnswerOwned => {}
                                    other => record(&g, other)?,
                                }
                            }
                        }
                        ch.send(&Msg::Owned).await?;
                        Ok(Outcome::Owned(path.clone()))
                    }
                    Ok(Some(Msg::Abort { .. })) => {
                        if let Some(h) = &self.hooks {
                            let g = h.journal.lock(&self.migration).await;
                            let (_, effects) = step(g.target_phase(), TargetEvent::AbortCommitted)
                                .map_err(|refused| MigrateError::Peer(refused.to_string()))?;
                            for effect in effects {
                                match effect {
                                    TargetEffect::DropCopy => {
                                        let _ = remove_tree(path.to_path_buf()).await;
                                    }
                                    other => record(&g, other)?,
                                }
                            }
                        }
                        let _ = ch.send(&Msg::Aborted).await;
                        Ok(Outcome::Dropped)
                    }
                    _ => Ok(Outcome::Prepared(path.clone())),
                };
            }
            match msg? {
                Some(Msg::Round { round, files }) => {
                    self.apply_listing(&files)?;
                    let bytes = self.write_pieces(ch, &files).await?;
                    listed = files;
                    ch.send(&Msg::RoundDone { round, bytes }).await?;
                    // This copy's hash tree, while the sender decides whether the round was
                    // the last: a hash check right after it then waits only for the sender's.
                    our_tree = Some(self.tree(&listed));
                }
                Some(Msg::Verify {
                    tree,
                    root: _,
                    full,
                }) => {
                    let t = Instant::now();
                    if self.syncing.is_none() {
                        // Best effort: the commit syncs everything again, and finds it clean.
                        let staging = self.staging.clone();
                        self.syncing = Some(tokio::task::spawn_blocking(move || {
                            let _ = sync_tree(&staging);
                        }));
                    }
                    let staging = self.staging.clone();
                    let ours = if full {
                        let listed = listed.clone();
                        tokio::task::spawn_blocking(move || hash_tree(&staging, &listed))
                            .await
                            .map_err(|e| MigrateError::BadState(e.to_string()))??
                    } else {
                        match our_tree.take() {
                            Some(t) => t,
                            None => self.tree(&listed),
                        }
                    };
                    let root = tree_root(&ours);
                    let ours: BTreeMap<String, String> = ours.into_iter().collect();
                    let theirs: BTreeMap<String, String> = tree.into_iter().collect();
                    let names: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
                    let mismatches = names
                        .into_iter()
                        .filter(|n| ours.get(*n) != theirs.get(*n))
                        .cloned()
                        .collect();
                    ch.send(&Msg::Verified {
                        root,
                        mismatches,
                        hash_seconds: t.elapsed().as_secs_f64(),
                    })
                    .await?;
                }
                Some(Msg::Digests { files, full }) => {
                    let mut out = Vec::new();
                    for rel in files {
                        let Some(size) = listed.iter().find(|f| f.rel == rel).and_then(|f| f.size)
                        else {
                            continue;
                        };
                        let digests = if full {
                            let path = self.staging.join(&rel);
                            tokio::task::block_in_place(|| file_digests(&path, size))?
                        } else {
                            let mut d = self.digests.get(&rel).cloned().unwrap_or_default();
                            d.resize(size.div_ceil(BLOCK) as usize, UNKNOWN);
                            d
                        };
                        out.push((rel, digests));
                    }
                    ch.send(&Msg::DigestsAre { files: out }).await?;
                }
                Some(Msg::Commit) => {
                    let mut drop_previous = false;
                    let t = Instant::now();
                    if let Some(early) = self.syncing.take() {
                        let _ = early.await;
                    }
                    let waited = t.elapsed().as_secs_f64();
                    let (path, sync_seconds, exchange_seconds) = match &self.hooks {
                        None => tokio::task::block_in_place(|| self.commit(dest))?,
                        Some(h) => {
                            let h = h.clone();
                            let g = h.journal.lock(&self.migration).await;
                            let (_, effects) = step(g.target_phase(), TargetEvent::Commit)
                                .map_err(|refused| MigrateError::Peer(refused.to_string()))?;
                            let mut done = None;
                            for effect in effects {
                                match effect {
                                    TargetEffect::PutInPlace => {
                                        done = Some(tokio::task::block_in_place(|| {
                                            self.commit(dest)
                                        })?);
                                    }
                                    // Sent below, once the guard is gone.
                                    TargetEffect::AnswerCommitted => {}
                                    // After the answer: the vote is durable.
                                    TargetEffect::DropPrevious => {
                                        drop_previous = true;
                                    }
                                    // The vote: durable before the source hears "Committed".
                                    other => {
                                        let t = Instant::now();
                                        record(&g, other)?;
                                        if let Some(d) = done.as_mut() {
                                            d.2 += t.elapsed().as_secs_f64();
                                        }
                                    }
                                }
                            }
                            done.ok_or_else(|| MigrateError::BadState("no commit".into()))?
                        }
                    };
                    ch.send(&Msg::Committed {
                        path: path.display().to_string(),
                        sync_seconds: sync_seconds + waited,
                        exchange_seconds,
                    })
                    .await?;
                    // What the exchange put at the staging name: the state that was here.
                    if let Some(previous) = self.previous.take() {
                        if drop_previous || self.hooks.is_none() {
                            let _ = remove_tree(previous).await;
                        }
                    }
                    if self.hooks.is_none() {
                        return Ok(Outcome::Owned(path));
                    }
                    committed = Some(path);
                }
                Some(Msg::Abort { .. }) | None => {
                    let _ = ch.send(&Msg::Aborted).await;
                    return Ok(Outcome::Aborted);
                }
                Some(other) => {
                    return Err(MigrateError::Peer(format!("unexpected {other:?}")));
                }
            }
        }
    }

    /// Makes the staging copy match the listing: directories, file sizes and modes; removes
    /// what is no longer listed.
    fn apply_listing(&mut self, files: &[FileMeta]) -> Result<(), MigrateError> {
        let keep: BTreeSet<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        check_listing(files, self.max_bytes)?;
        self.digests.retain(|rel, _| {
            files
                .iter()
                .any(|f| f.size.is_some() && f.rel == rel.as_str())
        });
        // Remove what is gone, deepest first.
        let mut present = Vec::new();
        collect(&self.staging, "", &mut present)?;
        present.sort_by(|a, b| b.cmp(a));
        for rel in present {
            if !keep.contains(rel.as_str()) {
                self.files.remove(&rel);
                let p = self.staging.join(&rel);
                let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
            }
        }
        for f in files {
            let p = self.staging.join(&f.rel);
            match f.size {
                None => {
                    if p.is_file() {
                        self.files.remove(&f.rel);
                        std::fs::remove_file(&p).map_err(|e| MigrateError::io(&p, e))?;
                    }
                    std::fs::create_dir_all(&p).map_err(|e| MigrateError::io(&p, e))?;
                }
                Some(size) => {
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).map_err(|e| MigrateError::io(&p, e))?;
                    }
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| MigrateError::io(parent, e))?;
                    }
                    let file = self.file(&f.rel)?;
                    let old = file.metadata().map_err(|e| MigrateError::io(&p, e))?.len();
                    if old != size {
                        file.set_len(size).map_err(|e| MigrateError::io(&p, e))?;
                    }
                    // Digests follow the size: the blocks both sizes hold whole keep theirs;
                    // the others are unknown until written (the sender sends them all, as
                    // their digests changed or are new on its side too). They are allocated
                    // as the data arrives, not as the listing claims.
                    let d = self.digests.entry(f.rel.clone()).or_default();
                    if old != size {
                        d.truncate((old.min(size) / BLOCK) as usize);
                    }
                }
            }
            self.owner.set_mode(&p, f.mode)?;
        }
        Ok(())
    }

    fn file(&mut self, rel: &str) -> Result<&File, MigrateError> {
        if !self.files.contains_key(rel) {
            let p = self.staging.join(rel);
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&p)
                .map_err(|e| MigrateError::io(&p, e))?;
            self.files.insert(rel.to_string(), f);
        }
        Ok(&self.files[rel])
    }

    /// This side's hash tree: the node of every listed file from the digests of what was
    /// written here.
    fn tree(&self, listed: &[FileMeta]) -> Vec<(String, String)> {
        tree_of(listed, &self.digests)
    }

    /// Writes the pieces that follow a round's listing where they go, digesting each block, on
    /// a blocking thread while this task reads the next pieces from the stream; then writes the
    /// touched files back. Returns the bytes written.
    async fn write_pieces(
        &mut self,
        ch: &mut Channel,
        listed: &[FileMeta],
    ) -> Result<u64, MigrateError> {
        // Per index of the listing: the file (a duplicate handle), its size and its digests.
        let mut targets: Vec<Option<Target>> = Vec::with_capacity(listed.len());
        for f in listed {
            targets.push(match f.size {
                Some(size) => {
                    let file = self
                        .file(&f.rel)?
                        .try_clone()
                        .map_err(|e| MigrateError::io(&self.staging.join(&f.rel), e))?;
                    let digests = self.digests.remove(&f.rel).unwrap_or_default();
                    Some(Target {
                        rel: f.rel.clone(),
                        file: Arc::new(file),
                        size,
                        digests,
                        unsynced: None,
                        unsynced_bytes: 0,
                    })
                }
                None => None,
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(PIPELINE_PIECES);
        let staging = self.staging.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let result = write_all_pieces(&staging, &mut targets, rx);
            (targets, result)
        });
        let mut reading: Result<(), MigrateError> = Ok(());
        // Buffered: small pieces come in batches, and a read on a QUIC stream has a fixed cost.
        // The sender sends nothing after the end marker until it has the round's answer, so
        // the buffer holds nothing beyond it (checked).
        let mut stream = ch.pieces(BATCH_BYTES);
        loop {
            match stream.next().await {
                Ok(Some(piece)) => {
                    if tx.send(piece).await.is_err() {
                        break; // the writer failed: its error says why
                    }
                }
                Ok(None) => {
                    if stream.has_buffered() {
                        reading = Err(MigrateError::Peer(
                            "data after the end of a round's pieces".into(),
                        ));
                    }
                    break;
                }
                Err(e) => {
                    reading = Err(e.into());
                    break;
                }
            }
        }
        drop(tx);
        let (targets, written) = writer
            .await
            .map_err(|e| MigrateError::BadState(format!("the writing thread: {e}")))?;
        for t in targets.into_iter().flatten() {
            self.digests.insert(t.rel, t.digests);
        }
        reading?;
        written
    }

    /// Replaces `dest` with the staging copy: every file and directory of the copy is made
    /// durable first, then the copy takes `dest`'s name in one rename (an exchange with the
    /// previous state when there is one, which is removed after), and the parent directory is
    /// made durable, all before the caller answers "Committed" (the source deletes its own copy
    /// afterwards).
    /// Returns the path and the seconds spent syncing and exchanging.
    fn commit(&mut self, dest: &Path) -> Result<(PathBuf, f64, f64), MigrateError> {
        let t = Instant::now();
        self.files.clear();
        self.owner.give(&self.staging)?;
        sync_tree(&self.staging)?;
        let synced = t.elapsed().as_secs_f64();
        let t = Instant::now();
        self.previous = swap_into_place(&self.staging, dest)?;
        Ok((dest.to_path_buf(), synced, t.elapsed().as_secs_f64()))
    }
}

/// Who a staged copy belongs to on this node and which mode bits it keeps: the spec's user as
/// this node resolves it by name (uids differ between nodes; the peer's are never used), and
/// its `allow_setuid`. Files stay the agent's while the copy is written (a process of that
/// user cannot plant a link in it meanwhile) and are given to the user at the commit.
struct Owner {
    /// The uid and gid; `None` without a spec or a service runtime (or when the agent is not
    /// root): the files stay the agent's. An error when the spec's user does not exist here.
    ids: Result<Option<(u32, u32)>, String>,
    /// Setuid, setgid and sticky bits are kept.
    allow_special: bool,
}

impl Owner {
    fn of(
        hooks: Option<&TargetHooks>,
        spec: Option<&godwit_runtime::service::ServiceSpec>,
    ) -> Owner {
        let manager = hooks.and_then(|h| h.manager.as_ref());
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let ids = match (manager, spec) {
            (Some(m), Some(spec)) if root => m
                .runtime()
                .identity(spec)
                .map(|id| Some((id.uid, id.gid)))
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        };
        Owner {
            ids,
            allow_special: spec.is_some_and(|s| s.allow_setuid),
        }
    }

    /// Gives the staged `path` the mode the peer listed, masked (and writable by its owner,
    /// so later rounds can write it).
    fn set_mode(&self, path: &Path, mode: u32) -> Result<(), MigrateError> {
        let mode = godwit_runtime::service::mask_mode(mode, self.allow_special) | 0o200;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| MigrateError::io(path, e))
    }

    /// Gives the whole staged copy to the user (links not followed).
    fn give(&self, root: &Path) -> Result<(), MigrateError> {
        if let Ok(Some((uid, gid))) = self.ids {
            godwit_runtime::service::chown_tree(root, uid, gid)
                .map_err(|e| MigrateError::io(root, e))?;
        }
        Ok(())
    }
}

/// `fsync`s every file and directory under `root`, and `root` itself.
pub(crate) fn sync_tree(root: &Path) -> Result<(), MigrateError> {
    let mut rels = Vec::new();
    collect(root, "", &mut rels)?;
    for rel in rels.iter().map(String::as_str).chain(std::iter::once("")) {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        // Directories open read-only too; fsync on either makes its entries durable.
        let f = File::open(&p).map_err(|e| MigrateError::io(&p, e))?;
        f.sync_all().map_err(|e| MigrateError::io(&p, e))?;
    }
    Ok(())
}

/// `fsync`s the directory `dir` (so renames in it are durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), MigrateError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| MigrateError::io(dir, e))
}

/// Puts the directory `staging` at `dest` as atomically as the filesystem allows: with
/// `renameat2(RENAME_EXCHANGE)` when `dest` exists (one step: a crash leaves either the old or
/// the new state at `dest`, never neither), else a plain rename; on filesystems without the
/// exchange, the old state is renamed aside first. The parent is fsynced. Returns where the
/// old state is now (the staging name, or the name aside): the caller removes it once the
/// commit is recorded, so a crash before that can still put it back ([`undo_commit`]).
pub(crate) fn swap_into_place(
    staging: &Path,
    dest: &Path,
) -> Result<Option<PathBuf>, MigrateError> {
    let parent = dest
        .parent()
        .ok_or_else(|| MigrateError::BadState(format!("{} has no parent", dest.display())))?;
    let old = if dest.symlink_metadata().is_ok() {
        match exchange(staging, dest) {
            // The old state now sits at the staging name.
            Ok(()) => staging.to_path_buf(),
            Err(MigrateError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) =>
            {
                // No exchange on this filesystem: rename the old aside, the new in.
                let aside = dest.with_extension(format!("previous-{}", std::process::id()));
                std::fs::rename(dest, &aside).map_err(|e| MigrateError::io(dest, e))?;
                if let Err(e) = std::fs::rename(staging, dest) {
                    let _ = std::fs::rename(&aside, dest);
                    return Err(MigrateError::io(dest, e));
                }
                aside
            }
            Err(e) => return Err(e),
        }
    } else {
        std::fs::rename(staging, dest).map_err(|e| MigrateError::io(dest, e))?;
        sync_dir(parent)?;
        return Ok(None);
    };
    sync_dir(parent)?;
    Ok(Some(old))
}

/// The receiving side starts a file's write-back each time this many bytes were written to it.
const WRITEBACK_BATCH: u64 = 1 << 20;

/// A regular file of a round's listing, on the receiving side.
struct Target {
    rel: String,
    file: Arc<File>,
    size: u64,
    /// Its block digests as written here.
    digests: Vec<BlockDigest>,
    /// Written since its write-back was last started: the span and the bytes in it.
    unsynced: Option<(u64, u64)>,
    unsynced_bytes: u64,
}

impl Target {
    /// Has the write-back of what was written since the last call started, by `flusher`.
    fn kick(&mut self, flusher: &std::sync::mpsc::Sender<(Arc<File>, u64, u64)>) {
        if let Some((from, to)) = self.unsynced.take() {
            let _ = flusher.send((self.file.clone(), from, to - from));
        }
        self.unsynced_bytes = 0;
    }
}

/// A thread that starts the write-backs it is sent until the sending side goes: starting one
/// can block while the disk's queue is full, which must hold up neither the writing of the
/// pieces nor the round's answer (the commit's fsync waits for whatever is left).
fn spawn_flusher() -> std::sync::mpsc::Sender<(Arc<File>, u64, u64)> {
    let (tx, rx) = std::sync::mpsc::channel::<(Arc<File>, u64, u64)>();
    let _ = std::thread::Builder::new()
        .name("godwit-writeback".into())
        .spawn(move || {
            for (file, at, len) in rx {
                start_write_back(&file, at, len);
            }
        });
    tx
}

/// The receiving side's writing thread: each piece is checked against the listing (whole
/// blocks from a block boundary, the last cut at the listed size), decompressed, written at
/// its offset and digested block by block. Its write-back to disk starts soon (every
/// [`WRITEBACK_BATCH`] bytes of a file, and at the end of the round), so the disk
/// works while the network does and the commit's fsync (with the source frozen) finds little
/// left to write; no round waits for the disk (only the commit must be durable).
fn write_all_pieces(
    staging: &Path,
    targets: &mut [Option<Target>],
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<u64, MigrateError> {
    let mut z =
        godwit_transport::Decompressor::new().map_err(|e| MigrateError::BadState(e.to_string()))?;
    let mut buf = Vec::new();
    let mut written = 0u64;
    let flusher = spawn_flusher();
    while let Some(piece) = rx.blocking_recv() {
        let Some(Some(t)) = targets.get_mut(piece.file as usize) else {
            return Err(MigrateError::Peer(format!(
                "a piece for entry {}, not a listed file",
                piece.file
            )));
        };
        let (at, len) = (piece.offset, u64::from(piece.raw_len));
        let end = at.checked_add(len);
        let whole = at % BLOCK == 0
            && end.is_some_and(|end| end <= t.size && (len % BLOCK == 0 || end == t.size));
        if !whole || len == 0 {
            return Err(MigrateError::Peer(format!(
                "a piece of {len} bytes at {at} of {:?} ({} bytes): not whole blocks",
                t.rel, t.size
            )));
        }
        let data = piece.data(&mut z, &mut buf)?;
        t.file
            .write_all_at(data, at)
            .map_err(|e| MigrateError::io(&staging.join(&t.rel), e))?;
        // The write-back starts once a file has a writeback batch's worth written since the
        // last start (one call for a span of scattered pages, not one per page), and for the
        // rest at the end of the round.
        t.unsynced = Some(match t.unsynced {
            Some((from, to)) => (from.min(at), to.max(at + len)),
            None => (at, at + len),
        });
        t.unsynced_bytes += len;
        if t.unsynced_bytes >= WRITEBACK_BATCH {
            t.kick(&flusher);
        }
        let first = (at / BLOCK) as usize;
        let blocks = first + len.div_ceil(BLOCK) as usize;
        if t.digests.len() < blocks {
            t.digests.resize(blocks, UNKNOWN);
        }
        for (i, block) in data.chunks(BLOCK as usize).enumerate() {
            t.digests[first + i] = block_digest(block);
        }
        written += len;
    }
    for t in targets.iter_mut().flatten() {
        t.kick(&flusher);
    }
    Ok(written)
}

/// Every path under `dir`, relative, `/`-separated.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), MigrateError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MigrateError::io(dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| MigrateError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(&e.path(), &rel, out)?;
        }
        out.push(rel);
    }
    Ok(())
}
