//! The VIP's takeover at a migration's cut-over, on the target: the address goes on the
//! interface while the service starts, unannounced (clients keep going to the frozen source),
//! and is announced (gratuitous ARP, or IPv6's unsolicited neighbour advertisement) at the
//! first passing check. The service's supervisor takes the address over at its own first
//! pass; if the service stops or is given back first, the address is released.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use godwit_runtime::service::{Manager, RunState};

/// How long a VIP added at the cut-over waits for the service's supervisor to take it over.
const VIP_ADOPT_WITHIN: Duration = Duration::from_secs(60);

/// A VIP being taken over at a cut-over.
pub(super) struct Takeover {
    addr: IpAddr,
    iface: String,
    assigning: tokio::task::JoinHandle<Result<(), String>>,
    released: Option<Arc<AtomicBool>>,
}

impl Takeover {
    /// Starts adding `vip` (the service's) to the VIP interface, unannounced; `None` without a
    /// VIP or an interface to put it on.
    pub(super) fn begin(manager: &Manager, vip: Option<IpAddr>) -> Option<Takeover> {
        let addr = vip?;
        let iface = manager
            .runtime()
            .section
            .vip_interface
            .clone()
            .or_else(godwit_runtime::service::vip::default_interface)?;
        let assigning = {
            let iface = iface.clone();
            tokio::task::spawn_blocking(move || {
                godwit_runtime::service::vip::assign(addr, &iface).map_err(|e| e.to_string())
            })
        };
        Some(Takeover {
            addr,
            iface,
            assigning,
            released: None,
        })
    }

    /// The service did not start: the address goes again.
    pub(super) async fn undo(self) {
        if matches!(self.assigning.await, Ok(Ok(()))) {
            let (addr, iface) = (self.addr, self.iface);
            let removed = tokio::task::spawn_blocking(move || {
                godwit_runtime::service::vip::remove(addr, &iface)
            })
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                warn!(vip = %self.addr, "removing the cut-over's VIP after a failed start");
            }
        }
    }

    /// The service was added: its supervisor must take the address over, or it is released.
    pub(super) fn watch(&mut self, tasks: &crate::Tasks, manager: Arc<Manager>, name: String) {
        self.released = Some(release_unless_adopted(
            tasks,
            manager,
            name,
            self.addr,
            self.iface.clone(),
        ));
    }

    /// At the first passing check: announces the address (adding it again if it was released
    /// meanwhile). Returns when it was up, by `began`'s clock, or `None` when it could not be
    /// (the supervisor's own first pass brings it).
    pub(super) async fn announce(self, name: &str, began: Instant) -> Option<f64> {
        let (addr, iface) = (self.addr, self.iface.clone());
        let assigned = match self.assigning.await {
            // Released meanwhile (the first instance stopped): added again below.
            Ok(Ok(()))
                if self
                    .released
                    .as_ref()
                    .is_some_and(|r| r.load(Ordering::SeqCst)) =>
            {
                Err("released".to_string())
            }
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        let announced = tokio::task::block_in_place(|| match assigned {
            Ok(()) => {
                godwit_runtime::service::vip::announce(addr, &iface).map_err(|e| e.to_string())
            }
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
}

/// The VIP a cut-over added for service `name` stays only if its supervisor takes it over
/// (its own first passing check): if the service stops, is removed or given back first, the
/// address is released here, and the flag returned is set.
fn release_unless_adopted(
    tasks: &crate::Tasks,
    manager: Arc<Manager>,
    name: String,
    addr: IpAddr,
    iface: String,
) -> Arc<AtomicBool> {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    tasks.spawn(async move {
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
