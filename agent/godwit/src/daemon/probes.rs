//! The probe and forecast threads: the sampler (eBPF or procfs) publishes a snapshot each
//! interval and hands it to the forecast thread, which keeps the forecasts and the local
//! policy's decisions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

use super::{Context, StartError, StopError};
use crate::forecast;
use crate::probe::{self, Sampler};

/// The sampler and forecast threads and what they publish.
pub(super) struct Probes {
    /// The latest snapshot.
    pub shared: probe::SharedSnapshot,
    pub forecasts: forecast::SharedForecasts,
    pub decisions: forecast::SharedDecisions,
    pub risk: forecast::SharedRisk,
    /// Filled once the migration journal is open: the policy sees the moves in flight as
    /// leaving.
    pub journal_slot: forecast::SharedJournal,
    /// This node's past transitional switch latencies as a migration target: the migration
    /// target records them, the summary announces them, the local policy's view holds them.
    pub switches: Arc<crate::migrate::agent::SwitchHistory>,
    /// Where CPU and memory figures come from (eBPF or procfs).
    pub source: probe::model::Source,
    /// Asks the sampler to track a cgroup's dirty pages (eBPF only).
    pub tracker: probe::DirtyTracker,
    cancel: CancellationToken,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<()>,
    forecast: JoinHandle<()>,
}

impl Probes {
    /// Loads the probe (BPF when configured) and starts both threads. The sampler is made
    /// here, after the API's address is bound, as before: a BPF load failure is reported only
    /// once the configuration and the address were found good.
    pub(super) fn start(ctx: &Context) -> Result<Probes, StartError> {
        let sampler = Sampler::new(ctx.cfg.sampler())?;
        let source = sampler.source();
        let shared = probe::SharedSnapshot::default();
        let stop = Arc::new(AtomicBool::new(false));
        let forecasts = forecast::SharedForecasts::default();
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let decisions = forecast::SharedDecisions::default();
        let risk = forecast::SharedRisk::new(ctx.cfg.site.risk.0);
        let journal_slot = forecast::SharedJournal::default();
        let switches = Arc::new(crate::migrate::agent::SwitchHistory::open(
            crate::migrate::agent::SwitchHistory::path(&ctx.cfg.node.data_dir),
        ));
        let forecast_thread = forecast::spawn(
            &ctx.cfg,
            rx,
            forecasts.clone(),
            decisions.clone(),
            risk.clone(),
            journal_slot.clone(),
            switches.clone(),
        )
        .map_err(|source| StartError::Thread {
            what: "forecast",
            source,
        })?;
        let (tracker, track_rx) = probe::DirtyTracker::channel();
        let sampler_thread = probe::spawn(
            sampler,
            shared.clone(),
            stop.clone(),
            Some(tx),
            Some(track_rx),
        )
        .map_err(|source| StartError::Thread {
            what: "sampler",
            source,
        })?;
        Ok(Probes {
            shared,
            forecasts,
            decisions,
            risk,
            journal_slot,
            switches,
            source,
            tracker,
            cancel: ctx.child_token(),
            stop,
            sampler: sampler_thread,
            forecast: forecast_thread,
        })
    }

    /// Tells the sampler to stop (it ends within an interval).
    pub(super) fn stop(&self) {
        self.cancel.cancel();
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops and joins both threads. Joining drops the sampler, and with it the BPF programs
    /// and links: they detach here. The sampler's end drops the channel's sender, so the
    /// forecast thread ends too.
    pub(super) async fn shutdown(self) -> Result<(), StopError> {
        self.stop();
        let sampler = join(self.sampler, "sampler thread").await;
        let forecast = join(self.forecast, "forecast thread").await;
        sampler.and(forecast)
    }
}

/// Joins `thread` off the async runtime; a panic is logged and returned.
async fn join(thread: std::thread::JoinHandle<()>, name: &'static str) -> Result<(), StopError> {
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(())) => Ok(()),
        _ => {
            tracing::error!(thread = name, "thread panicked");
            Err(StopError::Panicked(name))
        }
    }
}
