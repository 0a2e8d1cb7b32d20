//! The agent-to-agent transport (QUIC, mutual TLS) and the image store it serves pushes into.

use std::sync::Arc;

use super::{Context, StartError};
use crate::image::ImageStore;
use crate::transport::agent::Transport;

/// The transport (when this node has a certificate) and the image store (when the data
/// directory holds one).
pub(super) struct Network {
    pub transport: Option<Arc<Transport>>,
    pub images: Option<Arc<ImageStore>>,
}

impl Network {
    /// Starts the endpoint and opens the image store; pushes are received once both are
    /// there.
    pub(super) fn start(ctx: &Context) -> Result<Network, StartError> {
        let transport = crate::transport::agent::start(&ctx.cfg.transport, &ctx.node)
            .map_err(StartError::Transport)?
            .map(Arc::new);
        let images = open_images(ctx);
        if let (Some(t), Some(store)) = (&transport, &images) {
            crate::image::push::register(t.services(), store.clone());
        }
        Ok(Network { transport, images })
    }

    /// The address peers use, for the node summary.
    pub(super) fn advertise(&self) -> Option<std::net::SocketAddr> {
        self.transport.as_ref().map(|t| t.advertise())
    }

    /// Closes every connection and waits for the endpoint's tasks (accept loop and the
    /// connections it serves).
    pub(super) async fn shutdown(self) {
        if let Some(t) = &self.transport {
            t.shutdown().await;
        }
    }
}

/// Opens the image store in the data directory; without one (not writable, say) images are
/// off, which the log says once.
fn open_images(ctx: &Context) -> Option<Arc<ImageStore>> {
    let dir = ctx.cfg.node.data_dir.join("images");
    match ImageStore::open(&dir) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            tracing::warn!(error = %e, "no image store: images cannot be received or pushed");
            None
        }
    }
}
