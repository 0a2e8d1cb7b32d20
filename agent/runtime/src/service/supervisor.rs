//! The exec driver: one supervisor task per service, and the [`Manager`] that owns them.
//!
//! A supervisor starts the service's command from its image directory inside the service's
//! cgroup (joined before exec, so nothing escapes it), forwards its stdout and stderr lines to
//! the agent's log, runs the health check, holds the VIP while healthy, restarts it after a
//! crash with exponential back-off, and declares a crash loop failed. Commands (start, stop,
//! freeze, thaw) reach it over a channel and are answered once done.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::cgroup::ServiceCgroup;
use super::error::ServiceError;
use super::health::{check, Health, HealthTracker};
use super::identity::{chown_tree, Limits};
use super::launch::{command, prepare_image, PreparedImage};
use super::park::Parked;
use super::spec::{validate_all, RestartPolicy, ServiceSpec};
use super::status::now_ms;
pub use super::status::{RunState, Runtime, ServiceStatus};
use super::timings::ServiceTimings;
use super::vip;

type Reply = oneshot::Sender<Result<(), ServiceError>>;

/// How long a stop, a kill or an exit waits for the cgroup to empty.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopped service's log tasks may take to read what its pipes still hold.
const PIPES_DEADLINE: Duration = Duration::from_secs(1);

/// Until a started service first passes its check, checks come this soon after the start
/// and then at gaps growing by [`START_PROBE_GROWTH`] up to its interval: its start time is
/// measured within a tenth of itself (and its VIP comes up that soon), not to the interval.
const START_PROBE_FIRST: Duration = Duration::from_millis(5);
const START_PROBE_GROWTH: f64 = 1.1;

#[derive(Debug)]
enum Cmd {
    Start(Reply),
    Stop(Reply),
    /// Stop, keeping the VIP (a migration's stop: see [`Manager::stop_keeping_vip`]).
    StopKeepingVip(Reply),
    Kill(Reply),
    Freeze(Reply),
    Thaw(Reply),
}

struct Handle {
    spec: ServiceSpec,
    /// Its cgroup, for [`Manager::fence_all`], which acts without waiting for the supervisor.
    cgroup: ServiceCgroup,
    status: watch::Receiver<ServiceStatus>,
    tx: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    /// Its stops and starts here, shared with its supervisor, which records them.
    timings: Arc<Mutex<ServiceTimings>>,
}

/// Owns every managed service of this node.
pub struct Manager {
    rt: Arc<Runtime>,
    services: Mutex<BTreeMap<String, Handle>>,
    /// Processes forked ahead of a service's definition and start ([`Manager::park`]).
    parked: Mutex<BTreeMap<String, ParkedService>>,
    /// Who froze each frozen service ([`Manager::freeze_for`]): only that owner thaws it.
    frozen_by: Mutex<BTreeMap<String, String>>,
    /// Set by [`Manager::fence_all`]: nothing starts or restarts until [`Manager::unfence`].
    fenced: Arc<AtomicBool>,
}

/// A child forked ahead for a service not defined yet, with the spec it was forked for.
#[derive(Debug)]
struct ParkedService {
    spec: ServiceSpec,
    cgroup: ServiceCgroup,
    child: Parked,
}

/// What a service needs before its process ([`Manager::prepare`]).
struct Prepared {
    image: Option<PreparedImage>,
    cgroup: ServiceCgroup,
    state_dir: PathBuf,
    limits: Limits,
    /// Its stops and starts here as kept from earlier runs.
    timings: ServiceTimings,
}

/// Creates the service's state directory and gives it, and everything in it, to the
/// service's user (what the agent wrote there: state that arrived, files of an earlier run as
/// another user). Links are not followed; a file with other names elsewhere is left alone.
fn own_state_dir(state_dir: &Path, limits: &Limits) -> Result<(), ServiceError> {
    std::fs::create_dir_all(state_dir).map_err(|e| ServiceError::io(state_dir, e))?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let (uid, gid) = (limits.identity.uid, limits.identity.gid);
    match chown_tree(state_dir, uid, gid) {
        Ok(0) => Ok(()),
        Ok(n) => {
            warn!(dir = %state_dir.display(), files = n, "files with more than one link keep their owner");
            Ok(())
        }
        Err(e) => Err(ServiceError::io(state_dir, e)),
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("services", &self.names())
            .finish()
    }
}

impl Manager {
    /// A manager with no services yet.
    pub fn new(rt: Runtime) -> Arc<Manager> {
        Arc::new(Manager {
            rt: Arc::new(rt),
            services: Mutex::new(BTreeMap::new()),
            parked: Mutex::new(BTreeMap::new()),
            frozen_by: Mutex::new(BTreeMap::new()),
            fenced: Arc::new(AtomicBool::new(false)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Handle>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names of the services.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The runtime's settings.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Adds a service (validated; its name must be new) and starts it if `autostart`.
    /// Nothing already running is touched when the spec is refused.
    pub async fn add(&self, spec: ServiceSpec) -> Result<ServiceStatus, ServiceError> {
        let Prepared {
            image,
            cgroup,
            state_dir,
            limits,
            timings,
        } = self.prepare(&spec).await?;
        let timings = Arc::new(Mutex::new(timings));
        let status = ServiceStatus {
            name: spec.name.clone(),
            node: self.rt.node.clone(),
            state: RunState::Stopped,
            health: Health::Stopped,
            pid: None,
            cgroup: cgroup.path().display().to_string(),
            restarts: 0,
            last_exit: None,
            since_unix_ms: now_ms(),
            image_id: image.as_ref().and_then(|i| i.id.clone()),
            state_dir: state_dir.display().to_string(),
            vip: spec.vip,
            vip_active: false,
            demand: spec.demand.clone(),
        };
        // A child forked ahead for this very spec starts it; one forked for another is ended.
        let parked = match self.take_parked(&spec.name) {
            Some(p) if p.spec == spec => Some(p.child),
            Some(p) => {
                p.child.cancel().await;
                None
            }
            None => None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let (tx, rx) = mpsc::channel(8);
        let sup = Supervisor {
            parked,
            rt: self.rt.clone(),
            spec: spec.clone(),
            cgroup: cgroup.clone(),
            fenced: self.fenced.clone(),
            limits,
            image_dir: image.map(|i| i.dir),
            state_dir,
            status: status_tx,
            child: None,
            stopping: false,
            crashes: VecDeque::new(),
            backoff_until: None,
            tracker: None,
            frozen_at: None,
            check: None,
            pipes: TaskTracker::new(),
            timings: timings.clone(),
            timings_path: ServiceTimings::path(&self.rt.section.state_root, &spec.name),
            starting_since: None,
            starting_on_state: true,
            probe_at: None,
            probe_gap: START_PROBE_FIRST,
        };
        let task = tokio::spawn(sup.run(rx));
        let autostart = spec.autostart;
        let name = spec.name.clone();
        {
            let mut services = self.lock();
            if services.contains_key(&name) {
                task.abort();
                return Err(ServiceError::Duplicate(name));
            }
            services.insert(
                name.clone(),
                Handle {
                    spec,
                    cgroup,
                    status: status_rx,
                    tx,
                    task,
                    timings,
                },
            );
        }
        info!(service = %name, "service added");
        if autostart {
            self.start(&name).await
        } else {
            self.status(&name)
        }
    }

    /// What a service needs before its process: the spec validated, its name new here, its
    /// image ready, its cgroup and its state directory. The image first: one that cannot be
    /// prepared leaves no cgroup behind; a state directory that cannot be made removes the
    /// cgroup again.
    ///
    /// The image (unpacking a tarball, writing it out of the store) and the directories are
    /// file work: done on a blocking thread.
    async fn prepare(&self, spec: &ServiceSpec) -> Result<Prepared, ServiceError> {
        validate_all(std::slice::from_ref(spec), &self.rt.section)?;
        if self.lock().contains_key(&spec.name) {
            return Err(ServiceError::Duplicate(spec.name.clone()));
        }
        let limits = self.rt.limits(spec)?;
        let (rt, spec) = (self.rt.clone(), spec.clone());
        tokio::task::spawn_blocking(move || {
            let image = prepare_image(&rt, &spec)?;
            let mut cgroup = ServiceCgroup::create(
                &rt.v2_root,
                rt.memory_v1_root.as_deref(),
                &rt.section.cgroup_parent,
                &spec.name,
            )?;
            if let (Some(cpu_v1), true) = (&rt.cpu_v1_root, rt.section.cpu_cores > 0.0) {
                cgroup = cgroup.join_cpu_v1(cpu_v1, &rt.section.cgroup_parent, &spec.name)?;
            }
            let state_dir = spec.state_dir(&rt.section);
            if let Err(e) = own_state_dir(&state_dir, &limits) {
                let _ = cgroup.remove();
                return Err(e);
            }
            let timings =
                ServiceTimings::load(&ServiceTimings::path(&rt.section.state_root, &spec.name));
            Ok(Prepared {
                image,
                cgroup,
                state_dir,
                limits,
                timings,
            })
        })
        .await
        .map_err(|e| ServiceError::Image(format!("preparing the service failed: {e}")))?
    }

    fn take_parked(&self, name: &str) -> Option<ParkedService> {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Forks the process of a service that is not defined here yet, ahead of its [`add`]:
    /// the child joins the service's cgroups now and waits before `exec` until an `add` of the
    /// same spec starts it, so that start skips the cgroup join (an RCU grace period in the
    /// kernel, most of a start's time; see `park.rs`). A migration's target calls this when
    /// the transfer begins. Replaces an earlier child forked for the same name.
    ///
    /// [`add`]: Manager::add
    pub async fn park(&self, spec: ServiceSpec) -> Result<(), ServiceError> {
        self.unpark(&spec.name).await;
        let Prepared {
            image,
            cgroup,
            state_dir,
            limits,
            ..
        } = self.prepare(&spec).await?;
        let forked = {
            let image_dir = image.as_ref().map(|i| i.dir.as_path());
            let (mut cmd, program, cwd) = command(&spec, image_dir, &state_dir);
            cgroup.place(&mut cmd).and_then(|()| {
                Parked::fork(cmd, &cwd, |c| limits.apply(c)).map_err(|e| ServiceError::Spec {
                    service: spec.name.clone(),
                    field: "command".into(),
                    reason: format!("{}: {e}", program.display()),
                })
            })
        };
        let child = match forked {
            Ok(child) => child,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        };
        let name = spec.name.clone();
        let earlier = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.clone(),
                ParkedService {
                    spec,
                    cgroup,
                    child,
                },
            );
        if let Some(p) = earlier {
            p.child.cancel().await;
        }
        if self.lock().contains_key(&name) {
            // Defined (and started without it) meanwhile.
            self.unpark(&name).await;
            return Err(ServiceError::Duplicate(name));
        }
        info!(service = %name, "process forked ahead of the start");
        Ok(())
    }

    /// Ends the child forked ahead for `name`, if any, and removes its cgroup unless the
    /// service is defined here meanwhile.
    pub async fn unpark(&self, name: &str) {
        if let Some(p) = self.take_parked(name) {
            p.child.cancel().await;
            if !self.lock().contains_key(name) {
                let _ = p.cgroup.remove();
            }
        }
    }

    /// Whether a child is forked ahead for `name` ([`Manager::park`]).
    pub fn is_parked(&self, name: &str) -> bool {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// The service's status.
    pub fn status(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        self.lock()
            .get(name)
            .map(|h| h.status.borrow().clone())
            .ok_or_else(|| ServiceError::Unknown(name.to_string()))
    }

    /// The service's spec.
    pub fn spec(&self, name: &str) -> Option<ServiceSpec> {
        self.lock().get(name).map(|h| h.spec.clone())
    }

    /// Takes in the figures of service `name` measured on another node (a migration's source,
    /// see [`ServiceTimings::merge_carried`]) and keeps them.
    pub fn learn_timings(&self, name: &str, carried: ServiceTimings) {
        let Some(timings) = self.lock().get(name).map(|h| h.timings.clone()) else {
            return;
        };
        timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge_carried(carried);
        let path = ServiceTimings::path(&self.rt.section.state_root, name);
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let t = timings.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = t.store(&path) {
                warn!(service = %name, file = %path.display(), error = %e, "cannot keep the stop and start times");
            }
        });
    }

    /// How long the service's last stops and starts here took (see [`ServiceTimings`]).
    pub fn timings(&self, name: &str) -> Option<ServiceTimings> {
        self.lock()
            .get(name)
            .map(|h| h.timings.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Every service's status, by name.
    pub fn list(&self) -> Vec<ServiceStatus> {
        self.lock()
            .values()
            .map(|h| h.status.borrow().clone())
            .collect()
    }

    /// Waits until `name`'s status satisfies `cond` or `timeout` passes; returns the last one.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        cond: impl Fn(&ServiceStatus) -> bool,
    ) -> Result<ServiceStatus, ServiceError> {
        let mut rx = self
            .lock()
            .get(name)
            .map(|h| h.status.clone())
            .ok_or_else(|| ServiceError::Unknown(name.to_string()))?;
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| cond(s))).await;
        let last = rx.borrow().clone();
        Ok(last)
    }

    async fn command(
        &self,
        name: &str,
        make: impl FnOnce(Reply) -> Cmd,
    ) -> Result<ServiceStatus, ServiceError> {
        let tx = self
            .lock()
            .get(name)
            .map(|h| h.tx.clone())
            .ok_or_else(|| ServiceError::Unknown(name.to_string()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| ServiceError::Shutdown)?;
        rx.await.map_err(|_| ServiceError::Shutdown)??;
        self.status(name)
    }

    /// Starts the service (resets the crash count).
    pub async fn start(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        self.command(name, Cmd::Start).await
    }

    /// Stops it: SIGTERM, then SIGKILL after the grace period.
    pub async fn stop(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        self.command(name, Cmd::Stop).await
    }

    /// Stops it as [`Manager::stop`] does, but its VIP stays on the interface (`vip_active`
    /// stays set): a migration's stop, until the target holds the address. With the
    /// service's sockets closed, a new connection to the VIP is refused at once (a TCP reset)
    /// rather than lost (a SYN to an address nobody holds waits for TCP's retry, a second
    /// later). The [`Manager::kill`] after the hand-off, or a stop, withdraws it; a start
    /// keeps it.
    pub async fn stop_keeping_vip(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        self.command(name, Cmd::StopKeepingVip).await
    }

    /// Kills it at once, frozen or not, without thawing it first (the end of a migration
    /// whose state was committed elsewhere: the old instance must not run another instruction).
    pub async fn kill(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        let killed = self.command(name, Cmd::Kill).await;
        if killed.is_ok() {
            // Nothing is left to thaw.
            self.holders().remove(name);
        }
        killed
    }

    /// Freezes every task of it; returns once the kernel reports it frozen. Refused while
    /// a migration holds it frozen ([`Manager::freeze_for`]).
    pub async fn freeze(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        self.not_held(name, "freeze")?;
        self.command(name, Cmd::Freeze).await
    }

    /// Thaws it. Refused while a migration holds it frozen: only that migration thaws it
    /// ([`Manager::thaw_for`]), or kills it.
    pub async fn thaw(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        self.not_held(name, "thaw")?;
        self.command(name, Cmd::Thaw).await
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.frozen_by.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who holds `name` frozen, if anyone.
    pub fn frozen_by(&self, name: &str) -> Option<String> {
        self.holders().get(name).cloned()
    }

    fn not_held(&self, name: &str, action: &str) -> Result<(), ServiceError> {
        match self.frozen_by(name) {
            Some(owner) => Err(ServiceError::Held {
                service: name.to_string(),
                owner,
                action: action.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Freezes `name` on behalf of `owner` (a migration): refused while another owner holds
    /// it frozen, so two migrations never share one frozen instance, and nobody but `owner`
    /// thaws it ([`Manager::thaw_for`]) until it is killed or removed.
    pub async fn freeze_for(&self, name: &str, owner: &str) -> Result<ServiceStatus, ServiceError> {
        {
            let mut held = self.holders();
            match held.get(name) {
                Some(other) if other != owner => {
                    return Err(ServiceError::Held {
                        service: name.to_string(),
                        owner: other.clone(),
                        action: "freeze".into(),
                    })
                }
                _ => {
                    held.insert(name.to_string(), owner.to_string());
                }
            }
        }
        let frozen = self.command(name, Cmd::Freeze).await;
        if frozen.is_err() {
            self.release(name, owner);
        }
        frozen
    }

    /// Thaws `name` frozen by `owner`; refused when another owner holds it.
    pub async fn thaw_for(&self, name: &str, owner: &str) -> Result<ServiceStatus, ServiceError> {
        if let Some(other) = self.frozen_by(name).filter(|o| o != owner) {
            return Err(ServiceError::Held {
                service: name.to_string(),
                owner: other,
                action: "thaw".into(),
            });
        }
        let thawed = self.command(name, Cmd::Thaw).await;
        if thawed.is_ok() {
            self.release(name, owner);
        }
        thawed
    }

    /// Forgets that `owner` holds `name` frozen (it was killed, or the owner ended).
    pub fn release(&self, name: &str, owner: &str) {
        let mut held = self.holders();
        if held.get(name).is_some_and(|o| o == owner) {
            held.remove(name);
        }
    }

    /// Stops the service and forgets it (its cgroup is removed; its state directory stays).
    pub async fn remove(&self, name: &str) -> Result<(), ServiceError> {
        self.stop(name).await?;
        let handle = self
            .lock()
            .remove(name)
            .ok_or_else(|| ServiceError::Unknown(name.to_string()))?;
        drop(handle.tx);
        let _ = handle.task.await;
        self.holders().remove(name);
        info!(service = %name, "service removed");
        Ok(())
    }

    /// The node's self-fence (its lease ran out): every managed service is frozen, then killed
    /// (`cgroup.kill`, or `SIGKILL` to each process), its VIP withdrawn, and its supervisor
    /// told, so its state reads `stopped` with `last_exit = "killed"`. Processes forked ahead
    /// of a start ([`Manager::park`]) are ended too. From here until [`Manager::unfence`]
    /// nothing starts: a `start` (or an `add` with `autostart`) is refused as `fenced`, and a
    /// restart after a crash's back-off does not happen.
    ///
    /// The cgroups are frozen and killed here, not through the supervisors, so a supervisor
    /// busy with a slow stop does not delay the fence. Returns the names of the services that
    /// had processes or a VIP, sorted.
    pub async fn fence_all(&self) -> Vec<String> {
        self.fenced.store(true, Ordering::SeqCst);
        let targets: Vec<(String, ServiceCgroup, Option<std::net::IpAddr>, bool)> = self
            .lock()
            .iter()
            .map(|(name, h)| {
                let st = h.status.borrow();
                let vip = st.vip.filter(|_| st.vip_active);
                let live = h.cgroup.is_populated() || vip.is_some();
                (name.clone(), h.cgroup.clone(), vip, live)
            })
            .collect();
        // Everything stops running at once, then dies.
        for (name, cg, ..) in &targets {
            if let Err(e) = cg.begin_freeze() {
                warn!(service = %name, error = %e, "fence: freeze");
            }
        }
        for (_, cg, ..) in &targets {
            cg.kill_all();
        }
        let parked: Vec<String> = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in parked {
            self.unpark(&name).await;
        }
        let iface = self
            .rt
            .section
            .vip_interface
            .clone()
            .or_else(vip::default_interface);
        for (name, _, addr, _) in &targets {
            if let (Some(addr), Some(iface)) = (addr, &iface) {
                match vip::remove(*addr, iface) {
                    Ok(()) => info!(service = %name, vip = %addr, "fence: VIP withdrawn"),
                    Err(e) => error!(service = %name, error = %e, "fence: VIP not withdrawn"),
                }
            }
        }
        // The supervisors record it (and thaw the empty cgroups); bounded, as one may be stuck.
        for (name, ..) in &targets {
            match tokio::time::timeout(EMPTY_TIMEOUT * 2, self.kill(name)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(service = %name, error = %e, "fence: kill"),
                Err(_) => warn!(service = %name, "fence: the supervisor did not answer the kill"),
            }
        }
        let fenced: Vec<String> = targets.into_iter().filter(|t| t.3).map(|t| t.0).collect();
        warn!(services = ?fenced, "fenced: every service killed; nothing starts until unfenced");
        fenced
    }

    /// Whether the node is fenced ([`Manager::fence_all`]).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Lets services start again after a fence (the node holds a fresh lease). Starts nothing
    /// by itself.
    pub fn unfence(&self) {
        if self.fenced.swap(false, Ordering::SeqCst) {
            info!("unfenced: services may start again");
        }
    }

    /// Stops every service and ends the supervisors (the agent is stopping). Services are
    /// stopped rather than left behind: an agent that starts again starts them again.
    pub async fn shutdown(&self) {
        let parked: Vec<String> = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in parked {
            self.unpark(&name).await;
        }
        for name in self.names() {
            if let Err(e) = self.stop(&name).await {
                warn!(service = %name, error = %e, "stopping at shutdown");
            }
        }
        let handles: Vec<Handle> = std::mem::take(&mut *self.lock()).into_values().collect();
        for h in handles {
            drop(h.tx);
            let _ = h.task.await;
        }
    }
}

struct Supervisor {
    rt: Arc<Runtime>,
    spec: ServiceSpec,
    cgroup: ServiceCgroup,
    /// The manager's fence ([`Manager::fence_all`]): no start or restart while set.
    fenced: Arc<AtomicBool>,
    /// Who its processes and its health command run as, and what they may do.
    limits: Limits,
    /// The child forked ahead of the first start, if any.
    parked: Option<Parked>,
    image_dir: Option<PathBuf>,
    state_dir: PathBuf,
    status: watch::Sender<ServiceStatus>,
    child: Option<tokio::process::Child>,
    stopping: bool,
    crashes: VecDeque<Instant>,
    backoff_until: Option<tokio::time::Instant>,
    tracker: Option<HealthTracker>,
    /// When the service was frozen, while it is.
    frozen_at: Option<Instant>,
    /// The health check in flight, if any.
    check: Option<tokio::task::JoinHandle<bool>>,
    /// The tasks logging the process's stdout and stderr; they end with the pipes.
    pipes: TaskTracker,
    /// Its stops and starts here (shared with the manager), and where they are kept.
    timings: Arc<Mutex<ServiceTimings>>,
    timings_path: PathBuf,
    /// When the running process was started, until its first passing check.
    starting_since: Option<Instant>,
    /// Whether it started on state already there: a first start that creates its state is
    /// no figure for the next start (a migration's, on state received), so it is not kept.
    starting_on_state: bool,
    /// The next check before the first pass, and the gap after it.
    probe_at: Option<tokio::time::Instant>,
    probe_gap: Duration,
}

impl Supervisor {
    fn set(&self, f: impl FnOnce(&mut ServiceStatus)) {
        self.status.send_modify(|s| {
            let before = (s.state, s.health);
            f(s);
            if (s.state, s.health) != before {
                s.since_unix_ms = now_ms();
            }
        });
    }

    fn state(&self) -> RunState {
        self.status.borrow().state
    }

    /// Drops the health check in flight: its answer would be about a process or a state
    /// that is gone.
    fn cancel_check(&mut self) {
        if let Some(c) = self.check.take() {
            c.abort();
        }
    }

    fn vip_iface(&self) -> Option<String> {
        self.rt
            .section
            .vip_interface
            .clone()
            .or_else(vip::default_interface)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let interval = self
            .spec
            .health
            .as_ref()
            .map(|h| Duration::from_millis(h.interval_ms))
            .unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let running = self.child.is_some();
            let checking =
                running && self.spec.health.is_some() && self.state() == RunState::Running;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => {
                        self.stop(false).await;
                        if let Some(p) = self.parked.take() {
                            p.cancel().await;
                        }
                        let _ = self.cgroup.remove();
                        self.cancel_check();
                        // The process is gone; a pipe a leftover descendant holds open is not
                        // waited for long.
                        self.pipes.close();
                        let _ = tokio::time::timeout(PIPES_DEADLINE, self.pipes.wait()).await;
                        return;
                    }
                },
                status = async { self.child.as_mut().expect("checked").wait().await }, if running => {
                    self.child = None;
                    self.exited(status).await;
                }
                _ = async {
                    match self.backoff_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.backoff_until = None;
                    if self.fenced.load(Ordering::SeqCst) {
                        info!(service = %self.spec.name, "fenced: not restarted");
                        self.set(|s| {
                            s.state = RunState::Stopped;
                            s.health = Health::Stopped;
                            s.last_exit = Some("fenced: not restarted".into());
                        });
                    } else if let Err(e) = self.spawn().await {
                        error!(service = %self.spec.name, error = %e, "restart failed");
                        self.set(|s| {
                            s.state = RunState::Failed;
                            s.health = Health::Failed;
                            s.last_exit = Some(format!("cannot start: {e}"));
                        });
                    }
                }
                // A check runs in its own task: commands (freeze, stop) never wait behind it.
                _ = tick.tick(), if checking && self.check.is_none() => self.launch_check(),
                // Until the first pass, checks come sooner (see `START_PROBE_FIRST`).
                _ = async {
                    match self.probe_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                }, if checking && self.check.is_none() => self.launch_check(),
                done = async { self.check.as_mut().expect("checked").await }, if self.check.is_some() => {
                    self.check = None;
                    // A result that arrives after a freeze, stop or exit is stale.
                    if let Ok(passed) = done {
                        if self.child.is_some() && self.state() == RunState::Running {
                            self.health_result(passed).await;
                            if !passed && self.starting_since.is_some() {
                                self.probe_at = Some(tokio::time::Instant::now() + self.probe_gap);
                                self.probe_gap = self.probe_gap.mul_f64(START_PROBE_GROWTH).min(interval);
                            }
                        }
                    }
                }
            }
        }
    }

    fn launch_check(&mut self) {
        self.probe_at = None;
        let spec = self.spec.health.clone().expect("checked");
        let limits = self.limits.clone();
        self.check = Some(tokio::spawn(
            async move { check(&spec, Some(&limits)).await },
        ));
    }

    /// Records a stop or start in the service's figures and keeps them on disk (off the
    /// supervisor's task; a write that fails is logged, the figures stay in memory).
    fn keep(&self, record: impl FnOnce(&mut ServiceTimings)) {
        record(&mut self.timings.lock().unwrap_or_else(|e| e.into_inner()));
        let (timings, path, name) = (
            self.timings.clone(),
            self.timings_path.clone(),
            self.spec.name.clone(),
        );
        tokio::task::spawn_blocking(move || {
            // Under the lock: the last write has the newest figures.
            let t = timings.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = t.store(&path) {
                warn!(service = %name, file = %path.display(), error = %e, "cannot keep the stop and start times");
            }
        });
    }

    async fn health_result(&mut self, passed: bool) {
        if passed {
            if let Some(since) = self.starting_since.take() {
                let s = since.elapsed().as_secs_f64();
                info!(service = %self.spec.name, start_ms = (s * 1e3).round(), "first passing check since the start");
                if self.starting_on_state {
                    self.keep(|t| t.record_start(s));
                }
            }
        }
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        let now = Instant::now();
        let before = tracker.health();
        let health = tracker.record(passed, now);
        let due = tracker.restart_due(now);
        if health != before {
            info!(service = %self.spec.name, ?health, "health changed");
        }
        self.set(|s| s.health = health);
        if health == Health::Healthy && !self.status.borrow().vip_active {
            self.vip_up();
        }
        if let Some(unhealthy_for) = due {
            if self.spec.restart.policy != RestartPolicy::Never {
                self.restart_unhealthy(unhealthy_for).await;
            }
        }
    }

    /// Stops a service that stayed unhealthy past `unhealthy_restart_ms` and restarts it as
    /// after a crash: the same back-off and crash-loop limit.
    async fn restart_unhealthy(&mut self, unhealthy_for: Duration) {
        let Some(child) = self.child.take() else {
            return;
        };
        warn!(
            service = %self.spec.name,
            ?unhealthy_for,
            "unhealthy past the limit: restarting"
        );
        self.cancel_check();
        self.vip_down();
        self.stopping = true;
        self.set(|s| s.state = RunState::Stopping);
        let status = self.terminate(child).await;
        self.stopping = false;
        let how = format!(
            "restarted: unhealthy for {} ms (then {})",
            unhealthy_for.as_millis(),
            status.map_or_else(|| "lost".to_string(), |s| s.to_string())
        );
        self.after_exit(how, false).await;
    }

    fn vip_up(&self) {
        let Some(addr) = self.spec.vip else { return };
        let Some(iface) = self.vip_iface() else {
            warn!(service = %self.spec.name, %addr, "no interface for the VIP");
            return;
        };
        match vip::add(addr, &iface) {
            Ok(()) => {
                info!(service = %self.spec.name, vip = %addr, iface, "VIP added");
                self.set(|s| s.vip_active = true);
            }
            Err(e) => warn!(service = %self.spec.name, error = %e, "VIP not added"),
        }
    }

    fn vip_down(&self) {
        let Some(addr) = self.spec.vip else { return };
        if !self.status.borrow().vip_active {
            return;
        }
        if let Some(iface) = self.vip_iface() {
            match vip::remove(addr, &iface) {
                Ok(()) => info!(service = %self.spec.name, vip = %addr, "VIP removed"),
                Err(e) => warn!(service = %self.spec.name, error = %e, "VIP not removed"),
            }
        }
        self.set(|s| s.vip_active = false);
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start(reply) => {
                if self.fenced.load(Ordering::SeqCst) {
                    // The node lost its lease: another node may run this service now.
                    let _ = reply.send(Err(ServiceError::State {
                        service: self.spec.name.clone(),
                        state: "fenced".into(),
                        action: "start".into(),
                    }));
                    return;
                }
                let r = match self.state() {
                    RunState::Running | RunState::Frozen => Ok(()),
                    _ => {
                        self.crashes.clear();
                        self.backoff_until = None;
                        self.set(|s| s.restarts = 0);
                        self.spawn().await
                    }
                };
                if let Err(e) = &r {
                    // An address a migration's stop kept goes with a start that failed.
                    self.vip_down();
                    self.set(|s| {
                        s.state = RunState::Failed;
                        s.health = Health::Failed;
                        s.last_exit = Some(format!("cannot start: {e}"));
                    });
                }
                let _ = reply.send(r);
            }
            Cmd::Stop(reply) => {
                self.stop(false).await;
                let _ = reply.send(Ok(()));
            }
            Cmd::StopKeepingVip(reply) => {
                self.stop(true).await;
                let _ = reply.send(Ok(()));
            }
            Cmd::Kill(reply) => {
                self.cancel_check();
                self.backoff_until = None;
                self.starting_since = None;
                self.probe_at = None;
                self.stopping = true;
                // Its clients learn at once: the sockets are shut before the processes die
                // (an exit closes them only after tearing the memory down).
                let shut = self.cgroup.shut_sockets();
                self.cgroup.kill_all();
                if shut > 0 {
                    info!(service = %self.spec.name, sockets = shut, "sockets shut down before the kill");
                }
                if let Some(mut child) = self.child.take() {
                    let _ = child.wait().await;
                }
                self.cgroup.wait_empty(EMPTY_TIMEOUT).await;
                // The VIP goes after the processes: their connections are reset from the
                // VIP (clients learn at once), and new ones are refused until it moves.
                self.vip_down();
                let _ = self.cgroup.thaw().await;
                info!(service = %self.spec.name, "killed");
                self.set(|s| {
                    s.state = RunState::Stopped;
                    s.health = Health::Stopped;
                    s.pid = None;
                    s.last_exit = Some("killed".into());
                });
                self.stopping = false;
                let _ = reply.send(Ok(()));
            }
            Cmd::Freeze(reply) => {
                self.cancel_check();
                let r = match self.state() {
                    RunState::Running => match self.cgroup.freeze().await {
                        Ok(()) => {
                            // A start interrupted by a freeze measures nothing.
                            self.starting_since = None;
                            self.probe_at = None;
                            self.frozen_at = Some(Instant::now());
                            self.set(|s| s.state = RunState::Frozen);
                            info!(service = %self.spec.name, "frozen");
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    RunState::Frozen => Ok(()),
                    other => Err(self.refuse(other, "freeze")),
                };
                let _ = reply.send(r);
            }
            Cmd::Thaw(reply) => {
                let r = match self.state() {
                    RunState::Frozen => match self.cgroup.thaw().await {
                        Ok(()) => {
                            // The frozen time counts neither towards the start timeout
                            // nor towards the unhealthy restart limit.
                            if let (Some(t), Some(tracker)) =
                                (self.frozen_at.take(), self.tracker.as_mut())
                            {
                                tracker.pause(t.elapsed());
                            }
                            self.set(|s| s.state = RunState::Running);
                            info!(service = %self.spec.name, "thawed");
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    RunState::Running => Ok(()),
                    other => Err(self.refuse(other, "thaw")),
                };
                let _ = reply.send(r);
            }
        }
    }

    fn refuse(&self, state: RunState, action: &str) -> ServiceError {
        ServiceError::State {
            service: self.spec.name.clone(),
            state: state.to_string(),
            action: action.to_string(),
        }
    }

    /// Starts the process in the cgroup: the child forked ahead of the start when there is
    /// one ([`Manager::park`]), else a new one.
    async fn spawn(&mut self) -> Result<(), ServiceError> {
        self.starting_on_state = holds_state(&self.spec.state_dir(&self.rt.section));
        let began = Instant::now();
        let image = self.image_dir.clone();
        let parked = match self.parked.take() {
            Some(p) => match p.release().await {
                Ok(child) => Some(child),
                Err(e) => {
                    warn!(service = %self.spec.name, error = %e, "the child forked ahead did not start: starting a new one");
                    None
                }
            },
            None => None,
        };
        let mut child = match parked {
            Some(child) => child,
            None => {
                let (mut cmd, program, cwd) =
                    command(&self.spec, image.as_deref(), &self.state_dir);
                cmd.current_dir(cwd);
                self.cgroup.place(&mut cmd)?;
                self.limits.apply(&mut cmd);
                cmd.spawn().map_err(|e| ServiceError::Spec {
                    service: self.spec.name.clone(),
                    field: "command".into(),
                    reason: format!("{}: {e}", program.display()),
                })?
            }
        };
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            if let Some(pipe) = pipe {
                let name = self.spec.name.clone();
                self.pipes.spawn(async move {
                    let mut lines = BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        info!(service = %name, stream, "{line}");
                    }
                });
            }
        }
        let pid = child.id();
        self.cancel_check();
        self.child = Some(child);
        self.stopping = false;
        self.frozen_at = None;
        self.tracker = self
            .spec
            .health
            .as_ref()
            .map(|h| HealthTracker::new(h, Instant::now()));
        let healthy_now = self.spec.health.is_none();
        self.set(|s| {
            s.state = RunState::Running;
            s.pid = pid;
            s.health = if healthy_now {
                Health::Healthy
            } else {
                Health::Starting
            };
        });
        info!(service = %self.spec.name, pid, "started");
        if healthy_now {
            // No check: started once the process is up.
            self.starting_since = None;
            self.probe_at = None;
            if self.starting_on_state {
                self.keep(|t| t.record_start(began.elapsed().as_secs_f64()));
            }
            self.vip_up();
        } else {
            self.starting_since = Some(began);
            self.probe_gap = START_PROBE_FIRST;
            self.probe_at = Some(tokio::time::Instant::now() + START_PROBE_FIRST);
        }
        Ok(())
    }

    /// Stops the process: thaw if frozen, SIGTERM to everything in the cgroup, SIGKILL after
    /// the grace period. The VIP goes first unless `keep_vip` (a migration's stop: see
    /// [`Manager::stop_keeping_vip`]).
    async fn stop(&mut self, keep_vip: bool) {
        self.cancel_check();
        self.backoff_until = None;
        self.starting_since = None;
        self.probe_at = None;
        if !keep_vip {
            self.vip_down();
        }
        let Some(child) = self.child.take() else {
            if matches!(self.state(), RunState::Backoff | RunState::Failed) {
                self.set(|s| {
                    s.state = RunState::Stopped;
                    s.health = Health::Stopped;
                });
            }
            return;
        };
        self.stopping = true;
        self.set(|s| s.state = RunState::Stopping);
        let status = self.terminate(child).await;
        info!(service = %self.spec.name, ?status, "stopped");
        self.set(|s| {
            s.state = RunState::Stopped;
            s.health = Health::Stopped;
            s.pid = None;
            s.last_exit = status.map(|st| st.to_string());
        });
        self.stopping = false;
    }

    /// Ends the process and everything else in the cgroup: thaw if frozen, SIGTERM to all,
    /// SIGKILL after the grace period; returns once the cgroup is empty (or 5 s passed).
    async fn terminate(
        &mut self,
        mut child: tokio::process::Child,
    ) -> Option<std::process::ExitStatus> {
        if self.cgroup.is_frozen() {
            let _ = self.cgroup.thaw().await;
        }
        self.frozen_at = None;
        self.starting_since = None;
        self.probe_at = None;
        let began = Instant::now();
        self.cgroup.signal_all(libc::SIGTERM);
        let grace = Duration::from_millis(self.rt.section.stop_grace_ms);
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                warn!(service = %self.spec.name, ?grace, "did not stop in time: killed");
                self.cgroup.kill_all();
                child.wait().await.ok()
            }
        };
        // Whatever it left behind goes too.
        self.cgroup.kill_all();
        if self.cgroup.wait_empty(EMPTY_TIMEOUT).await {
            let s = began.elapsed().as_secs_f64();
            info!(service = %self.spec.name, stop_ms = (s * 1e3).round(), "stop took");
            self.keep(|t| t.record_stop(s));
        }
        status
    }

    /// The process ended without being asked to: restart with back-off, or give up.
    async fn exited(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        self.cancel_check();
        self.starting_since = None;
        self.probe_at = None;
        self.vip_down();
        self.cgroup.kill_all();
        // Whatever the process left behind must be gone before another instance starts
        // (it may hold the port, the state files or the memory). Bounded: a cgroup that does
        // not empty is reported, and the restart goes ahead.
        if !self.cgroup.wait_empty(EMPTY_TIMEOUT).await {
            warn!(
                service = %self.spec.name,
                pids = ?self.cgroup.pids(),
                timeout = ?EMPTY_TIMEOUT,
                "the cgroup is still populated after the exit"
            );
        }
        let how = match &status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let success = status.as_ref().is_ok_and(|s| s.success());
        self.after_exit(how, success).await;
    }

    /// After an exit (`how`) that was not asked for: restart after the back-off, or give up
    /// (restart policy, crash loop).
    async fn after_exit(&mut self, how: String, success: bool) {
        let r = &self.spec.restart;
        let restart = match r.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if !restart {
            info!(service = %self.spec.name, exit = %how, "exited; not restarted (restart policy)");
            self.set(|s| {
                s.state = if success {
                    RunState::Stopped
                } else {
                    RunState::Failed
                };
                s.health = if success {
                    Health::Stopped
                } else {
                    Health::Failed
                };
                s.pid = None;
                s.last_exit = Some(how);
            });
            return;
        }
        let now = Instant::now();
        let window = Duration::from_secs(r.window_s);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let n = self.crashes.len() as u32;
        if n > r.max_restarts {
            error!(
                service = %self.spec.name,
                exit = %how,
                restarts = n - 1,
                window_s = r.window_s,
                "crash loop: the service is failed"
            );
            self.set(|s| {
                s.state = RunState::Failed;
                s.health = Health::Failed;
                s.pid = None;
                s.last_exit = Some(how);
            });
            return;
        }
        let delay = Duration::from_millis(r.delay_ms(n - 1));
        warn!(service = %self.spec.name, exit = %how, ?delay, "exited; restarting after back-off");
        self.backoff_until = Some(tokio::time::Instant::now() + delay);
        self.set(|s| {
            s.state = RunState::Backoff;
            s.health = Health::Starting;
            s.pid = None;
            s.restarts += 1;
            s.last_exit = Some(how);
        });
    }
}

/// Whether `dir` holds any non-empty file (looked for three levels deep): the service starts
/// on state it had, or was given, rather than creating it.
fn holds_state(dir: &std::path::Path) -> bool {
    fn walk(dir: &std::path::Path, depth: u32) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| match e.file_type() {
            Ok(t) if t.is_file() => e.metadata().is_ok_and(|m| m.len() > 0),
            Ok(t) if t.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
            _ => false,
        })
    }
    walk(dir, 3)
}
