//! Masterless mesh: chitchat membership with a typed node summary and sealed transport.
//!
//! Only this module touches chitchat, and no chitchat type leaves it. Callers:
//!
//! 1. build a [`GossipConfig`] (node id, listen address, seeds, [`Security`],
//!    [`FailureDetection`]) and [`Cluster::start`] it;
//! 2. [`Cluster::publish`] a [`NodeSummary`] every sampling interval (encoded into a few
//!    chitchat keys, within a byte budget);
//! 3. read [`Cluster::view`] (a [`ClusterView`]: each member's liveness, heartbeat age,
//!    generation and summary) or follow [`Cluster::changes`] ([`ClusterChange`]);
//! 4. rotate keys through [`Cluster::keyring`]; export [`Cluster::seal_stats`] as metrics;
//! 5. [`Cluster::shutdown`].
//!
//! # Code map
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | [`GossipConfig`], [`FailureDetection`] defaults and bound, generations |
//! | `summary.rs` | [`NodeSummary`], its keys, the byte budget, lenient decoding |
//! | `seal.rs` | wire format, AEAD (ChaCha20-Poly1305, ring), replay window, [`Keyring`] |
//! | `fuzzing.rs` | the opener fuzz target's entry point (feature `fuzzing`) |
//! | `transport.rs` | chitchat's `Transport` over UDP, sealed or clear |
//! | `cluster.rs` | [`Cluster`], the view, the change stream |
//! | `sim.rs` | a simulated network on tokio's clock for the real code (feature `sim`) |
//!
//! # Invariants
//!
//! - **Generations.** Every start draws a new, larger generation (clock microseconds, strictly
//!   increasing in a process). chitchat keys state by (node id, generation, address), so an old
//!   incarnation lingers as a separate node until its dead-node grace expires (chitchat #94,
//!   #161). The view lists each node id once, its newest presentable incarnation; our own older
//!   incarnations, gossiped back by peers, are never listed. A restart shows as
//!   `Left { Restarted }` then `Joined`.
//! - **Newcomers are not dead.** chitchat calls a node dead until two heartbeats arrived; the
//!   view hides such a node until it has been seen alive, or known for the detection bound.
//! - **Nothing unauthenticated reaches chitchat** when sealed: see `seal.rs` and
//!   `transport.rs`. Seeds without a key are refused unless insecure; a lone node without a
//!   key seals with an ephemeral key, so it accepts no peer.
//! - **Summaries fit the budget**; readers ignore keys and fields they do not know.

pub mod agent;
mod cluster;
mod config;
mod error;
mod fragment;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod seal;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod summary;
mod transport;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

pub use cluster::{
    Cluster, ClusterChange, ClusterView, LeftReason, Liveness, Member, MemberId, Network,
};
pub use config::{
    next_generation, warn_if_inline_keys_exposed, FailureDetection, GossipConfig, GossipSection,
    Security, DEFAULT_DEAD_NODE_GRACE, DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_PHI_THRESHOLD, DEFAULT_SUMMARY_BUDGET,
};
pub use error::GossipError;
pub use seal::{ClusterKey, KeyId, Keyring, KeyringChange, SealStats};
pub use summary::{
    Addresses, Capacity, CoordinatorSeen, EncodedSummary, Energy, Forecast, HostedService, Load,
    NodeSummary, TriggerState, MAX_SWITCH_LATENCIES, SCHEMA_VERSION,
};
