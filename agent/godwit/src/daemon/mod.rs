//! The agent's lifecycle, and the one place that composes the crates: validate, bind, start
//! each component from a shared `Context`, serve, and on SIGTERM/SIGINT shut the components
//! down in the reverse order, each under its own deadline.
//!
//! Every component owns a child of the root [`CancellationToken`] and the tasks it spawned
//! (a `TaskTracker`, or the threads or handles it joins): its `shutdown` cancels them and
//! waits for them. Blocking work (the journal's recovery, joining threads) goes through
//! `spawn_blocking`.

mod act;
mod coord;
mod error;
mod inventory;
mod mesh;
mod migration;
mod network;
mod notify;
mod probes;
mod reload;
mod server;
mod services;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub(crate) use coord::define_cmd;
pub use error::{exit, StartError, StopError};
pub use reload::reload;

use crate::config::{Config, LogFormat};

/// How long the transport may take to close its connections and end its tasks.
const TRANSPORT_DEADLINE: Duration = Duration::from_secs(5);

/// What every component starts from.
pub(crate) struct Context {
    /// The configuration, validated.
    pub cfg: Config,
    /// The file it came from (SIGHUP reads it again); `None`: the embedded default.
    pub config_path: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    /// The root of every component's token.
    root: CancellationToken,
}

impl Context {
    fn new(cfg: Config, config_path: Option<PathBuf>) -> Context {
        Context {
            node: cfg.node_name(),
            cfg,
            config_path,
            root: CancellationToken::new(),
        }
    }

    /// A token for a component: cancelled by its own shutdown, or with the root.
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.root.child_token()
    }
}

/// Installs the tracing subscriber: `GODWIT_LOG` overrides the configured level.
pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    // openraft narrates every vote and append at info: its warnings are what an operator
    // needs, unless the level names it.
    let level = if cfg.log.level.contains("openraft") {
        cfg.log.level.clone()
    } else {
        format!("{},openraft=warn", cfg.log.level)
    };
    let filter = EnvFilter::try_from_env("GODWIT_LOG")
        .or_else(|_| EnvFilter::try_new(&level))
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
    // Before any thread: it takes systemd's variables out of the environment services inherit.
    let notifier = notify::Notifier::from_env();
    init_logging(&cfg);
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("godwit-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_async(cfg, config_path, notifier)),
        Err(e) => failed(StartError::Runtime(e)),
    }
}

/// Logs why the start failed; the exit code is the error's.
fn failed(e: StartError) -> ExitCode {
    tracing::error!(error = %e, "cannot start");
    ExitCode::from(e.exit_code())
}

/// Starts the components in order, serves until a signal, then stops them in reverse order.
/// A start that fails stops what already started.
async fn run_async(
    cfg: Config,
    config_path: Option<PathBuf>,
    notifier: notify::Notifier,
) -> ExitCode {
    // The handlers first: the API answers `/healthz` before the main loop waits, and a
    // SIGTERM or SIGHUP that came in between would take the default action (terminate).
    let Signals { term, int, hup } = Signals::install();
    let ctx = Context::new(cfg, config_path);
    // What the configuration and the host must allow, checked before any thread starts.
    let (gossip, api) = match mesh::config(&ctx) {
        Ok(g) => match server::bind(&ctx).await {
            Ok(api) => (g, api),
            Err(e) => return failed(e),
        },
        Err(e) => return failed(e),
    };
    if let Err(e) = services::check_runtime(&ctx.cfg) {
        return failed(e);
    }
    let probes = match probes::Probes::start(&ctx) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let mesh = match mesh::Mesh::start(&ctx, gossip).await {
        Ok(m) => m,
        Err(e) => {
            let _ = probes.shutdown().await;
            return failed(e);
        }
    };
    let net = match network::Network::start(&ctx) {
        Ok(n) => n,
        Err(e) => {
            mesh.shutdown().await;
            let _ = probes.shutdown().await;
            return failed(e);
        }
    };
    // The journal's recovery runs before any service starts.
    let mut services = services::Services::start(&ctx, &probes, &net).await;
    let coordination = coord::Coordination::start(
        &ctx,
        &net,
        &mesh,
        &probes,
        services.manager.clone(),
        services.journal.clone(),
    )
    .await;
    let migration = migration::Migration::start(
        &ctx,
        &probes,
        &net,
        mesh.cluster.clone(),
        &mut services,
        &coordination,
    )
    .await;
    let acting = act::Act::start(&ctx, &net, &mesh, &coordination);
    let inventory = inventory::Inventory::start(&ctx, &probes, services.manager.clone());
    mesh.publish(
        &ctx,
        net.advertise(),
        &probes,
        coordination.coord.clone(),
        services.manager.clone(),
        net.images.clone(),
    );
    let api = api.serve(
        &ctx,
        server::Parts {
            probes: &probes,
            mesh: &mesh,
            net: &net,
            services: &services,
            migration: &migration,
            inventory: &inventory,
            coordination: &coordination,
            acting: &acting,
        },
    );
    let reloader = reload::Reloader::start(&ctx, &mesh, hup);
    // READY=1 after the first sample; the watchdog petted while samples keep coming (five
    // intervals, at least 10 s, without one is a stalled sampler).
    let notifier = Arc::new(notifier);
    let stale_after =
        (Duration::from_millis(ctx.cfg.probe.interval_ms.0) * 5).max(Duration::from_secs(10));
    let notifying = tokio::spawn(notifier.clone().run(
        probes.shared.clone(),
        stale_after,
        ctx.child_token(),
    ));

    let signal = wait_for_signal(term, int).await;
    tracing::info!(signal, "shutting down");
    notifying.abort();
    notifier.stopping();
    // Peers list this node as left rather than declaring it dead; it gossips on meanwhile.
    mesh.leave().await;
    reloader.shutdown().await;
    let api_stopped = api.shutdown().await;
    inventory.shutdown().await;
    acting.shutdown().await;
    // Migrations in flight reach their decision while services and transport still run.
    migration.shutdown().await;
    coordination.shutdown().await;
    services.shutdown().await;
    if tokio::time::timeout(TRANSPORT_DEADLINE, net.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("transport did not stop within the deadline");
    }
    mesh.shutdown().await;
    // Last, so that the figures stay current meanwhile; the BPF programs detach here.
    let probes_stopped = probes.shutdown().await;
    ctx.root.cancel();
    tracing::info!("agent stopped");
    match api_stopped.and(probes_stopped) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(exit::FAILURE),
    }
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
