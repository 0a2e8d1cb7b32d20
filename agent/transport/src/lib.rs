//! Agent-to-agent transport: QUIC (quinn) with mutual TLS 1.3 (rustls, ring) under a cluster
//! CA, versioned frames, and bulk blocks with optional zstd. Migration (images and state)
//! runs over it.
//!
//! # Code map
//!
//! | file | what |
//! | --- | --- |
//! | `agent.rs` | the `[transport]` table as a running endpoint; measured paths |
//! | `ca.rs` | the cluster CA, node and operator certificates (`godwit ca init`, `godwit cert issue`) |
//! | `tls.rs` | [`Identity`]: a node's (or operator's) certificate and key; [`Principal`]; rustls configs; peer checks |
//! | `wire.rs` | message frames (bincode 2, versioned, bounded) and bulk blocks (zstd) |
//! | `fuzzing.rs` | the fuzz targets' entry points (feature `fuzzing`): frames, bulk, pieces |
//! | `endpoint.rs` | [`Endpoint`]: connect and accept with the handshake; [`Peer`], [`Channel`] |
//! | `service.rs` | [`Services`]: streams name a service; handlers registered by name |
//! | `path.rs` | the `"path"` service: RTT and throughput of the path to a peer |
//! | `level.rs` | [`choose_level`]: the zstd level from measured compression speed, ratio and path |
//!
//! # Invariants
//!
//! - **Only the cluster CA is trusted**, on both sides, and a peer is who its certificate
//!   says: the client verifies the server's name (`<node>.node.godwit`), the server verifies
//!   the name the client claims against the client's certificate. Failures are counted.
//! - **An operator is a client of the control service only**: its certificate
//!   (`<name>.operator.godwit`, client authentication only) never names a node, and
//!   [`Services`] refuses it every service not registered for operators.
//! - **TLS 1.3 only**, provider ring set explicitly (never the process default).
//! - **Frames are bounded and versioned**: another wire version is refused, not guessed at.
//!   A frame's length is checked against the limit of the exchange (4 KiB for a handshake,
//!   1 KiB for a stream open, [`MAX_FRAME`] otherwise) before anything is allocated, bincode
//!   decodes under a limit, and a bulk transfer stops at the size its receiver expects.
//! - **Keys are written 0600 and never overwritten.**

pub mod agent;
mod ca;
mod endpoint;
mod error;
mod level;
pub(crate) mod path;
mod service;
mod tls;
mod wire;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

pub use agent::TransportSection;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use ca::issue_node_between;
pub use ca::{
    days_since_epoch, fingerprint, init_ca, issue_node, issue_node_for, issue_operator,
    node_dns_name, operator_dns_name, renew_node, validate_node_name, IdentityFiles, Issued,
    CA_CERT, DEFAULT_NODE_DAYS,
};
pub use endpoint::{AcceptLimits, Channel, Endpoint, Peer, PieceReader, TransportStats};
pub use error::TransportError;
pub use level::{choose_level, LevelChoice, LevelTrial, CANDIDATES};
pub use path::{measure, PathMeasurement, MAX_PROBE_BYTES};
pub use service::{open, PeerInfo, Services};
pub use tls::{Identity, Principal, ALPN, DENY_FILE};
pub use wire::{
    drain_bulk, encode_piece, read_bulk, read_bulk_with, read_msg, read_msg_limited, read_piece,
    write_blocks, write_bulk, write_msg, write_piece, write_pieces_end, BulkStats, Compressor,
    Decompressor, Piece, MAX_BLOCK, MAX_FRAME, WIRE_VERSION,
};
