//! Pushing an image to a peer over the transport (service `"image"`): only missing chunks move.
//!
//! ```text
//! sender                                   receiver
//!   Offer { id, manifest }  ───────────►   validate; id must be the manifest's hash
//!                           ◄───────────   Stored (has it already) | Want { chunks it lacks }
//!   each wanted chunk as a bulk block ──►  hash-checked; a corrupt one is asked for again
//!                           ◄───────────   Want { the corrupt ones } ... | Stored | Refused
//! ```
//!
//! At most [`MAX_ROUNDS`] rounds; chunks go zstd-compressed where that shrinks them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::ImageError;
use super::store::{Digest, ImageStore, Manifest, MAX_CHUNK};
use godwit_transport::{open, Channel, Peer, PeerInfo, Services};

/// Name of the image service.
pub const SERVICE: &str = "image";
/// Rounds of wanted chunks before a push gives up.
pub const MAX_ROUNDS: u32 = 4;
/// zstd level for chunks (level 1: fast, and most of the gain).
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    /// The manifest travels as its canonical JSON (the form its id hashes), since its
    /// serde shape (tagged, flattened) is not one bincode encodes.
    Offer {
        id: Digest,
        manifest: Vec<u8>,
    },
    Want {
        chunks: Vec<Digest>,
    },
    Stored {
        id: Digest,
        chunks: u64,
        bytes: u64,
    },
    Refused {
        reason: String,
    },
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStats {
    /// The image.
    pub id: String,
    /// Distinct chunks in the image.
    pub chunks_total: u64,
    /// Chunks sent (resends included).
    pub chunks_sent: u64,
    /// Bytes of chunk data sent (resends included).
    pub bytes_sent: u64,
    /// Bytes on the stream for the chunks (after compression, with block headers).
    pub wire_bytes: u64,
    /// Chunks sent again because the receiver found them corrupt.
    pub resent: u64,
    /// Rounds of wanted chunks.
    pub rounds: u32,
}

/// Registers the image service: receives offers into `store`.
pub fn register(services: &Services, store: Arc<ImageStore>) {
    services.register(SERVICE, move |peer, ch| receive(peer, ch, store.clone()));
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Push(format!("store task failed: {e}")))?
}

async fn receive(peer: PeerInfo, mut ch: Channel, store: Arc<ImageStore>) {
    let result = receive_inner(&peer, &mut ch, store).await;
    let reply = match result {
        Ok((id, chunks, bytes)) => {
            info!(peer = %peer.node, image = %id, chunks, bytes, "image received");
            Msg::Stored { id, chunks, bytes }
        }
        Err(e) => {
            warn!(peer = %peer.node, error = %e, "image push refused");
            Msg::Refused {
                reason: e.to_string(),
            }
        }
    };
    let _ = ch.send(&reply).await;
    let _ = ch.finish();
}

async fn receive_inner(
    peer: &PeerInfo,
    ch: &mut Channel,
    store: Arc<ImageStore>,
) -> Result<(Digest, u64, u64), ImageError> {
    let (id, manifest) = match ch.recv::<Msg>().await? {
        Some(Msg::Offer { id, manifest }) => (id, manifest),
        other => {
            return Err(ImageError::Push(format!(
                "expected an offer, got {other:?}"
            )))
        }
    };
    let manifest = Manifest::parse(&manifest)?;
    if manifest.id() != id {
        return Err(ImageError::BadManifest(format!(
            "offered as {id} but hashes to {}",
            manifest.id()
        )));
    }
    let manifest = Arc::new(manifest);
    let mut want = {
        let (store, manifest) = (store.clone(), manifest.clone());
        blocking(move || Ok(store.missing(&manifest))).await?
    };
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let mut rounds = 0;
    while !want.is_empty() {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(ImageError::Push(format!(
                "{} chunks still corrupt after {MAX_ROUNDS} rounds",
                want.len()
            )));
        }
        ch.send(&Msg::Want {
            chunks: want.iter().map(|c| c.digest.clone()).collect(),
        })
        .await?;
        let mut failed = Vec::new();
        for c in want {
            // The manifest (validated) says how long the chunk is: a sender that sends more
            // is refused at the block that goes past it, before it is read.
            let mut data = Vec::with_capacity(c.len as usize);
            ch.read_bulk(&mut data, u64::from(c.len)).await?;
            let put = {
                let (store, d) = (store.clone(), c.digest.clone());
                blocking(move || store.put_chunk(&d, &data).map(|_| data.len())).await
            };
            match put {
                Ok(n) => {
                    chunks += 1;
                    bytes += n as u64;
                }
                Err(e @ ImageError::CorruptChunk { .. }) => {
                    warn!(peer = %peer.node, error = %e, "chunk corrupt on arrival, asking again");
                    failed.push(c);
                }
                Err(e) => return Err(e),
            }
        }
        want = failed;
    }
    let committed = {
        let (store, manifest) = (store.clone(), manifest.clone());
        blocking(move || store.commit(&manifest)).await?
    };
    Ok((committed, chunks, bytes))
}

/// Pushes image `id` from `store` to `peer`; returns what moved.
pub async fn push(peer: &Peer, store: &ImageStore, id: &Digest) -> Result<PushStats, ImageError> {
    push_with(peer, store, id, |_, _| {}).await
}

/// As [`push`], passing every chunk through `tamper` before it is sent (tests corrupt chunks
/// on the wire with it).
pub async fn push_with(
    peer: &Peer,
    store: &ImageStore,
    id: &Digest,
    mut tamper: impl FnMut(&Digest, &mut Vec<u8>),
) -> Result<PushStats, ImageError> {
    let manifest = {
        let (store, id) = (store.clone(), id.clone());
        blocking(move || store.manifest(&id)).await?
    };
    let mut stats = PushStats {
        id: id.to_string(),
        chunks_total: {
            let mut d: Vec<&Digest> = manifest.chunks().map(|c| &c.digest).collect();
            d.sort();
            d.dedup();
            d.len() as u64
        },
        ..PushStats::default()
    };
    let mut ch = open(peer, SERVICE).await?;
    ch.send(&Msg::Offer {
        id: id.clone(),
        manifest: serde_json::to_vec(&manifest).unwrap_or_default(),
    })
    .await?;
    let mut sent_before = std::collections::BTreeSet::new();
    loop {
        match ch.recv::<Msg>().await? {
            Some(Msg::Want { chunks }) => {
                stats.rounds += 1;
                for d in chunks {
                    let mut data = {
                        let (store, d) = (store.clone(), d.clone());
                        blocking(move || store.read_chunk(&d)).await?
                    };
                    tamper(&d, &mut data);
                    let s = match ch
                        .write_bulk(&data, MAX_CHUNK as usize, Some(ZSTD_LEVEL))
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => return Err(refusal_or(&mut ch, peer, e.into()).await),
                    };
                    stats.chunks_sent += 1;
                    stats.bytes_sent += s.raw_bytes;
                    stats.wire_bytes += s.wire_bytes;
                    if !sent_before.insert(d) {
                        stats.resent += 1;
                    }
                }
            }
            Some(Msg::Stored { id: got, .. }) if &got == id => return Ok(stats),
            Some(Msg::Stored { id: got, .. }) => {
                return Err(ImageError::Push(format!(
                    "{} stored {got}, not {id}",
                    peer.node()
                )))
            }
            Some(Msg::Refused { reason }) => {
                return Err(ImageError::Push(format!(
                    "{} refused: {reason}",
                    peer.node()
                )))
            }
            Some(other) => return Err(ImageError::Push(format!("unexpected {other:?}"))),
            None => {
                return Err(ImageError::Push(format!(
                    "{} closed the stream",
                    peer.node()
                )))
            }
        }
    }
}

/// The receiver's refusal when one came (it stops reading when it refuses, so the sender's
/// write fails first), else `error`.
async fn refusal_or(ch: &mut Channel, peer: &Peer, error: ImageError) -> ImageError {
    let reply = tokio::time::timeout(std::time::Duration::from_secs(2), ch.recv::<Msg>()).await;
    match reply {
        Ok(Ok(Some(Msg::Refused { reason }))) => {
            ImageError::Push(format!("{} refused: {reason}", peer.node()))
        }
        _ => error,
    }
}
