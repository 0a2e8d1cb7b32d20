//! The errors of the gossip module.

use std::net::SocketAddr;

use super::seal::KeyId;

/// What can go wrong when starting, publishing to or managing a gossip cluster.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Seeds are configured but neither a cluster key nor `insecure = true` is.
    #[error(
        "gossip with seeds needs a cluster key: set gossip.keys (32 bytes each, 64 hex digits), \
         or set gossip.insecure = true to gossip in clear text"
    )]
    KeyRequired,
    /// The configuration is inconsistent.
    #[error("invalid gossip config: {0}")]
    InvalidConfig(String),
    /// A cluster key could not be parsed.
    #[error("invalid cluster key: {0}")]
    InvalidKey(String),
    /// The keyring does not hold this key.
    #[error("key {0} is not installed in the keyring")]
    UnknownKey(KeyId),
    /// The primary key cannot be removed; make another key primary first.
    #[error("key {0} is the primary key: make another key primary before removing it")]
    RemovePrimary(KeyId),
    /// The gossip socket could not be opened.
    #[error("cannot open the gossip socket on {addr}/udp: {reason}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The cause, as reported by the transport.
        reason: String,
    },
    /// The summary does not fit the byte budget even with every list emptied.
    #[error("node summary needs {bytes} bytes without its lists, over the budget of {budget}")]
    SummaryTooLarge {
        /// Bytes the summary takes with no services and no images.
        bytes: usize,
        /// The configured budget.
        budget: usize,
    },
    /// A summary section could not be encoded.
    #[error("cannot encode the node summary: {0}")]
    Encode(#[from] serde_json::Error),
    /// The gossip server stopped with an error.
    #[error("gossip server failed: {0}")]
    Server(String),
}
