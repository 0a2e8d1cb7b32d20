//! The placement log's part in a migration, when a coordinator places services
//! ([`PlacementGate`]). Without one (no coordinator), the source's journal alone decides.
//!
//! With one, **the log's commit is the decision**:
//! 1. the source records the intent in the log before anything moves (its epoch is the
//!    migration's fencing token);
//! 2. at the decision, the source commits the move in the log (a compare-and-set on the
//!    intent's epoch) *before* it journals its decision; a refusal (the intent was closed: the
//!    node was fenced, an operator placed the service) is no decision, and the service resumes
//!    here;
//! 3. a migration that ends without a move closes its intent;
//! 4. a target that gives the service back after the decision has it placed back here before
//!    it runs here again;
//! 5. a restarted source whose journal holds an undecided migration asks the log: committed
//!    means decided (the hand-off is finished), anything else closes the intent and resumes.

use std::future::Future;
use std::pin::Pin;

/// A boxed future of the gate.
pub type GateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the log says of a migration's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDecision {
    /// The log places the service on the target at this epoch.
    Committed(u64),
    /// The log does not move it (the intent was closed or superseded), for this reason.
    Refused(String),
}

/// The coordinator's side of migrations from this node.
pub trait PlacementGate: Send + Sync + std::fmt::Debug {
    /// Records the intent to move `service` from this node to `to`; its epoch.
    fn begin<'a>(&'a self, service: &'a str, to: &'a str) -> GateFuture<'a, Result<u64, String>>;
    /// Commits the move of intent `intent` (retrying until the log gives a definite answer).
    fn commit<'a>(
        &'a self,
        service: &'a str,
        intent: u64,
        to: &'a str,
    ) -> GateFuture<'a, LogDecision>;
    /// What the log says of intent `intent` now (a restarted source's question); an
    /// uncommitted intent is closed by this call. Retries until the answer is definite.
    fn settle<'a>(
        &'a self,
        service: &'a str,
        intent: u64,
        to: &'a str,
    ) -> GateFuture<'a, LogDecision>;
    /// Closes intent `intent` without a move, retrying until the log answers or shows it
    /// closed (a fence closes it too).
    fn abort<'a>(&'a self, service: &'a str, intent: u64) -> GateFuture<'a, ()>;
    /// The target gave the service back after the decision: place it here again. `true` when
    /// the log places it here.
    fn place_back<'a>(&'a self, service: &'a str, to: &'a str) -> GateFuture<'a, bool>;
    /// The target's check before it starts a migrated service here: `epoch` is the one the
    /// hand-off carries (`None` when the target adopts a decided move on its own, and the
    /// log's placement here gives it). Records it (fsynced) and returns it; refuses an epoch
    /// older than one seen here, or a service the log does not place here.
    fn admit<'a>(
        &'a self,
        service: &'a str,
        epoch: Option<u64>,
    ) -> GateFuture<'a, Result<u64, String>>;
    /// This node's name.
    fn node(&self) -> &str;
}

/// The environment variable that gives a service started under a coordinator its placement's
/// epoch: its fencing token, which a resource it writes to can check.
pub const EPOCH_ENV: &str = "GODWIT_EPOCH";
/// The environment variable that names the node a service runs on (under a coordinator).
pub const NODE_ENV: &str = "GODWIT_NODE";

/// Gives `spec`'s process the placement it starts under: node and epoch.
pub fn stamp(spec: &mut godwit_runtime::service::ServiceSpec, node: &str, epoch: u64) {
    spec.env.insert(EPOCH_ENV.to_string(), epoch.to_string());
    spec.env.insert(NODE_ENV.to_string(), node.to_string());
}

/// The epoch a spec was stamped with, if any.
pub fn stamped(spec: &godwit_runtime::service::ServiceSpec) -> Option<u64> {
    spec.env.get(EPOCH_ENV).and_then(|e| e.parse().ok())
}
