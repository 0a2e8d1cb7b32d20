//! The agent's lifecycle: validate, bind, load the probe, serve, and on SIGTERM/SIGINT stop
//! the sampler (detaching the BPF programs) and drain the API under a deadline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api;
use crate::cli::exit;
use crate::config::{Config, LogFormat};
use crate::forecast;
use crate::gossip;
use crate::probe::{self, Sampler, SamplerError};

/// How long the API may take to finish in-flight requests at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Installs the tracing subscriber: `GODWIT_LOG` overrides the configured level.
pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GODWIT_LOG")
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the agent until SIGTERM or SIGINT; returns the process exit code. SIGHUP re-reads
/// `config_path` (see [`reload`]).
pub fn run(cfg: Config, config_path: Option<PathBuf>) -> ExitCode {
    init_logging(&cfg);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("godwit-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(run_async(cfg, config_path))
}

/// This node's name: `[node] name`, else the host name (`localhost` when unreadable).
pub fn node_name(cfg: &Config) -> String {
    cfg.node.name.clone().unwrap_or_else(|| {
        crate::probe::node::read_hostname(&cfg.probe.proc_root)
            .unwrap_or_else(|_| "localhost".into())
    })
}

async fn run_async(cfg: Config, config_path: Option<PathBuf>) -> ExitCode {
    // The handlers first: the API answers `/healthz` before the main loop waits, and a
    // SIGTERM or SIGHUP that came in between would take the default action (terminate).
    let signals = Signals::install();
    let node_name = node_name(&cfg);
    let gossip_cfg = match cfg
        .gossip
        .enabled
        .then(|| gossip::agent::config_from(&cfg.gossip, &node_name))
    {
        Some(Err(e)) => {
            tracing::error!(error = %e, "invalid gossip configuration");
            return ExitCode::from(exit::CONFIG);
        }
        Some(Ok(g)) => Some(g),
        None => None,
    };
    let listener = match api::bind(cfg.api.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the API");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let sampler = match Sampler::new(cfg.sampler()) {
        Ok(s) => s,
        Err(e @ SamplerError::BpfRequired(_)) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let source = sampler.source();
    let shared = probe::SharedSnapshot::default();
    let stop = Arc::new(AtomicBool::new(false));
    let forecasts = forecast::SharedForecasts::default();
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let decisions = forecast::SharedDecisions::default();
    let risk = forecast::SharedRisk::new(cfg.site.risk.0);
    // Filled once the migration journal is open: the policy sees the moves in flight as leaving.
    let journal_slot = forecast::SharedJournal::default();
    let forecast_thread = match forecast::spawn(
        &cfg,
        rx,
        forecasts.clone(),
        decisions.clone(),
        risk.clone(),
        journal_slot.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the forecast thread");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let (tracker, track_rx) = probe::DirtyTracker::channel();
    let sampler_thread = match probe::spawn(
        sampler,
        shared.clone(),
        stop.clone(),
        Some(tx),
        Some(track_rx),
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the sampler thread");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let selection = api::metrics::ProcessSelection {
        top: cfg.metrics.top_processes.0 as usize,
        globs: cfg.metrics.select_processes.clone(),
    };
    let mesh = match gossip_cfg {
        None => None,
        Some(g) => match gossip::Cluster::start(g, gossip::Network::Udp).await {
            Ok(c) => {
                tracing::info!(node = %node_name, gossip = %c.gossip_addr(), "joined the mesh");
                Some(Arc::new(c))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start gossip");
                return ExitCode::from(exit::UNAVAILABLE);
            }
        },
    };
    let transport = match crate::transport::agent::start(&cfg.transport, &node_name) {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the transport");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let images = open_images(&cfg);
    if let (Some(t), Some(store)) = (&transport, &images) {
        crate::image::push::register(t.services(), store.clone());
    }
    // The migration journal: migrations a crash cut short are resolved before any service
    // starts (leftover processes killed, decided moves kept from starting here).
    let journal =
        match crate::migrate::journal::Journal::open(&cfg.node.data_dir.join("migrations")) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                tracing::warn!(error = %e, "no migration journal: migrations are not crash-safe");
                None
            }
        };
    if let Some(j) = &journal {
        let _ = journal_slot.set(j.clone());
    }
    let recovery = journal
        .as_ref()
        .map(|j| crate::migrate::agent::recover_sources(j, cfg.services.vip_interface.as_deref()));
    let services = {
        let mut svc_cfg = cfg.clone();
        if let Some(r) = &recovery {
            let not_here = r.not_here();
            svc_cfg.service.retain(|s| !not_here.contains(&s.name));
        }
        start_services(&svc_cfg, &node_name, images.clone()).await
    };
    let migrator = match (&transport, &services, &journal) {
        (Some(t), Some(m), Some(j)) => {
            let target = crate::migrate::agent::Target::new(j.clone(), m.clone());
            let (pending, pending_rx) = tokio::sync::mpsc::unbounded_channel();
            target.recover(&cfg.services.state_root, &pending);
            target.watch(pending_rx);
            crate::migrate::register_with(
                t.services(),
                cfg.services.state_root.clone(),
                Some(crate::migrate::TargetHooks {
                    journal: j.clone(),
                    pending,
                    manager: Some(m.clone()),
                }),
            );
            crate::migrate::agent::register_handoff(t.services(), target);
            let migrator = crate::migrate::agent::Migrator {
                node: node_name.clone(),
                manager: m.clone(),
                transport: t.clone(),
                images: images.clone(),
                tracker: (source == crate::probe::model::Source::Ebpf).then(|| tracker.clone()),
                snapshot: shared.clone(),
                audit: cfg.node.data_dir.join("migrations.log"),
                journal: Some(j.clone()),
                stats: Default::default(),
                me: Default::default(),
            }
            .into_arc();
            // Migrations start only here: a caller with a certificate, over the transport.
            let mesh = mesh.clone();
            crate::migrate::control::register(
                t.services(),
                migrator.clone(),
                Arc::new(move |node: &str| crate::peers::transport_addr(mesh.as_deref(), node)),
            );
            Some(migrator)
        }
        (Some(t), _, _) => {
            crate::migrate::register(t.services(), cfg.services.state_root.clone());
            None
        }
        _ => None,
    };
    if let (Some(r), Some(m), Some(j)) = (recovery, &services, &journal) {
        crate::migrate::agent::finish_recovery(r, m, j, migrator.as_ref()).await;
    }
    let inventory = crate::inventory::watch::SharedInventory::default();
    let inventory_stop = CancellationToken::new();
    let inventory_tasks = tokio_util::task::TaskTracker::new();
    if !cfg.inventory.is_empty() {
        crate::inventory::watch::spawn(
            cfg.inventory.clone(),
            crate::inventory::watch::Sources {
                snapshot: shared.clone(),
                services: services.clone(),
                cgroup_root: crate::probe::cgroup::CgroupLayout::detect(std::path::Path::new(
                    "/proc/self/mounts",
                ))
                .ok()
                .map(|l| l.v2_root),
                sys_root: cfg.probe.sys_root.clone(),
                proc_root: cfg.probe.proc_root.clone(),
                file: cfg
                    .inventory
                    .file
                    .clone()
                    .unwrap_or_else(|| cfg.node.data_dir.join("inventory.json")),
            },
            inventory.clone(),
            inventory_stop.clone(),
            &inventory_tasks,
        );
    }
    let publisher = mesh.clone().map(|mesh| {
        tokio::spawn(publish_summaries(
            cfg.clone(),
            mesh,
            transport.as_ref().map(|t| t.advertise()),
            shared.clone(),
            forecasts.clone(),
            decisions.clone(),
            risk.clone(),
        ))
    });
    let router = api::router(
        api::Shared {
            snapshot: shared.clone(),
            forecasts,
            decisions,
            risk,
            mesh: mesh.clone(),
            transport: transport.clone(),
            images,
            services: services.clone(),
            inventory: (!cfg.inventory.is_empty()).then(|| inventory.clone()),
            migrator: migrator.clone(),
        },
        api::metrics::registry(
            shared,
            selection,
            mesh.clone(),
            transport.clone(),
            services.clone(),
            (!cfg.inventory.is_empty()).then(|| inventory.clone()),
            migrator.clone(),
        ),
    );
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, router, shutdown.clone()));
    tracing::info!(
        listen = %cfg.api.listen,
        source = source.as_str(),
        interval_ms = cfg.probe.interval_ms.0,
        "agent started: metrics at http://{}/metrics",
        cfg.api.listen
    );

    let Signals { term, int, hup } = signals;
    let reloader = tokio::spawn(reload_on_sighup(
        cfg.clone(),
        config_path,
        mesh.clone(),
        hup,
    ));
    let signal = wait_for_signal(term, int).await;
    tracing::info!(signal, "shutting down");
    reloader.abort();
    if let Some(mesh) = &mesh {
        // Peers list this node as left rather than declaring it dead.
        let linger =
            (Duration::from_millis(cfg.gossip.interval_ms.0) * 3).min(Duration::from_secs(2));
        mesh.leave(linger).await;
    }
    shutdown.cancel();
    if let Some(p) = publisher {
        p.abort();
    }
    stop.store(true, Ordering::Relaxed);
    let mut code = ExitCode::SUCCESS;
    match tokio::time::timeout(DRAIN_DEADLINE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "API server failed");
            code = ExitCode::from(exit::FAILURE);
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "API task panicked");
            code = ExitCode::from(exit::FAILURE);
        }
        Err(_) => tracing::warn!("API did not drain within the deadline"),
    }
    // Joining drops the sampler, and with it the BPF programs and links: they detach here.
    let joined = tokio::task::spawn_blocking(move || sampler_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("sampler thread panicked");
        code = ExitCode::from(exit::FAILURE);
    }
    // The sampler's end dropped the channel's sender: the forecast thread ends too.
    let joined = tokio::task::spawn_blocking(move || forecast_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("forecast thread panicked");
        code = ExitCode::from(exit::FAILURE);
    }
    if let Some(t) = &transport {
        t.shutdown().await;
    }
    inventory_stop.cancel();
    inventory_tasks.close();
    inventory_tasks.wait().await;
    if let Some(m) = &services {
        m.shutdown().await;
    }
    tracing::info!("agent stopped");
    code
}

/// The agent's signal handlers, installed before anything answers.
struct Signals {
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
    hup: std::io::Result<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()),
            int: signal(SignalKind::interrupt()),
            hup: signal(SignalKind::hangup()),
        }
    }
}

async fn wait_for_signal(
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
) -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (term, int) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Publishes this node's summary to the mesh after every sample.
async fn publish_summaries(
    cfg: Config,
    mesh: Arc<gossip::Cluster>,
    quic: Option<std::net::SocketAddr>,
    snapshot: probe::SharedSnapshot,
    forecasts: forecast::SharedForecasts,
    decisions: forecast::SharedDecisions,
    risk: forecast::SharedRisk,
) {
    let mut tick = tokio::time::interval(cfg.probe.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    let mut warned = false;
    loop {
        tick.tick().await;
        let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(snap) = snap.filter(|s| s.taken_at_unix_ms != last) else {
            continue;
        };
        last = snap.taken_at_unix_ms;
        let f = forecasts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let d = decisions.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut summary =
            crate::node_summary::summary(&cfg, &snap, f.as_deref(), d.as_deref(), risk.get());
        summary.addresses.quic = quic;
        match mesh.publish(&summary).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot publish the node summary");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// Re-reads the configuration file on every SIGHUP (`systemctl reload godwit`) and applies
/// what can change while running: the gossip keys, one rotation step per reload. A file that
/// does not parse or validate changes nothing.
async fn reload_on_sighup(
    mut current: Config,
    path: Option<PathBuf>,
    mesh: Option<Arc<gossip::Cluster>>,
    hup: std::io::Result<tokio::signal::unix::Signal>,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot install the SIGHUP handler: configuration reload is disabled");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = path.as_deref() else {
            tracing::info!(
                "reload requested: the agent runs the embedded default, nothing to read"
            );
            continue;
        };
        match Config::load(Some(path)) {
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running configuration stays");
            }
            Ok(new) => {
                reload(&current, &new, mesh.as_deref());
                current = new;
            }
        }
    }
}

/// Applies a reloaded configuration: rotates the gossip keys and reports what else changed,
/// which takes effect at the next start.
pub fn reload(current: &Config, new: &Config, mesh: Option<&gossip::Cluster>) {
    if let Some(mesh) = mesh {
        match gossip::agent::reload_keys(mesh, &new.gossip) {
            Ok(change) if change.is_empty() => tracing::info!("reload: gossip keys unchanged"),
            Ok(change) => tracing::info!(
                installed = ?change.installed,
                primary = ?change.primary.map(|(_, new)| new),
                removed = ?change.removed,
                "reload: gossip keyring rotated"
            ),
            Err(e) => tracing::error!(error = %e, "reload: gossip keys not applied"),
        }
    }
    let mut rest = new.clone();
    rest.gossip.keys.clone_from(&current.gossip.keys);
    if &rest != current {
        tracing::warn!("reload: changes other than gossip.keys take effect at the next start");
    }
}

/// Opens the image store in the data directory; without one (not writable, say) images are
/// off, which the log says once.
fn open_images(cfg: &Config) -> Option<Arc<crate::image::ImageStore>> {
    let dir = cfg.node.data_dir.join("images");
    match crate::image::ImageStore::open(&dir) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            tracing::warn!(error = %e, "no image store: images cannot be received or pushed");
            None
        }
    }
}

/// Starts the service runtime and the configured services. Without a cgroup v2 hierarchy
/// there is no runtime: said once, and the configured services are not started.
async fn start_services(
    cfg: &Config,
    node: &str,
    images: Option<Arc<crate::image::ImageStore>>,
) -> Option<Arc<crate::service::Manager>> {
    let layout =
        match crate::probe::cgroup::CgroupLayout::detect(std::path::Path::new("/proc/self/mounts"))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    services = cfg.service.len(),
                    "no cgroup v2 hierarchy: managed services are off"
                );
                return None;
            }
        };
    let manager = crate::service::Manager::new(crate::service::Runtime {
        node: node.to_string(),
        memory_v1_root: layout.memory_v1_root.filter(|_| layout.hybrid),
        v2_root: layout.v2_root,
        section: cfg.services.clone(),
        images,
        run_root: cfg.node.data_dir.join("images/run"),
    });
    for spec in &cfg.service {
        if let Err(e) = manager.add(spec.clone()).await {
            tracing::error!(service = %spec.name, error = %e, "service not started");
        }
    }
    Some(manager)
}
