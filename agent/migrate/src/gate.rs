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
    /// Closes intent `intent` without a move (best effort: a fence closes it too).
    fn abort<'a>(&'a self, service: &'a str, intent: u64) -> GateFuture<'a, ()>;
    /// The target gave the service back after the decision: place it here again. `true` when
    /// the log places it here.
    fn place_back<'a>(&'a self, service: &'a str, to: &'a str) -> GateFuture<'a, bool>;
}
