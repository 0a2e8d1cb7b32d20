//! The agent's lifecycle: validate, bind, load the probe, serve, and on SIGTERM/SIGINT stop
//! the sampler (detaching the BPF programs) and drain the API under a deadline.

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
use crate::probe::{self, Sampler, SamplerConfig, SamplerError};

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

/// Runs the agent until a signal; returns the process exit code.
pub fn run(cfg: Config) -> ExitCode {
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
    runtime.block_on(run_async(cfg))
}

async fn run_async(cfg: Config) -> ExitCode {
    let node_name = cfg.node.name.clone().unwrap_or_else(|| {
        crate::probe::node::read_hostname(&cfg.probe.proc_root)
            .unwrap_or_else(|_| "localhost".into())
    });
    let gossip_cfg = match cfg
        .gossip
        .enabled
        .then(|| gossip::agent::config_from(&cfg, &node_name))
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
    let sampler = match Sampler::new(SamplerConfig::from_config(&cfg)) {
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
    let forecast_thread =
        match forecast::spawn(&cfg, rx, forecasts.clone(), decisions.clone(), risk.clone()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the forecast thread");
                return ExitCode::from(exit::FAILURE);
            }
        };
    let sampler_thread = match probe::spawn(sampler, shared.clone(), stop.clone(), Some(tx)) {
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
    let publisher = mesh.clone().map(|mesh| {
        tokio::spawn(publish_summaries(
            cfg.clone(),
            mesh,
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
        },
        api::metrics::registry(shared, selection),
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

    let signal = wait_for_signal().await;
    tracing::info!(signal, "shutting down");
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
    tracing::info!("agent stopped");
    code
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
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
        let summary = gossip::agent::summary(&cfg, &snap, f.as_deref(), d.as_deref(), risk.get());
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
