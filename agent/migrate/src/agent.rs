//! The migration agent's public face, as the daemon, the API and the tests name it: the
//! source's migrator (`source.rs`), the target's side (`target.rs`), crash recovery
//! (`recovery.rs`), the report and counters (`audit.rs`), the learned figures (`model.rs`)
//! and the switch latencies this node took as a target (`switches.rs`).

pub use super::audit::{MigrationReport, MigrationStats};
pub use super::protocol::HANDOFF;
pub use super::recovery::{finish_recovery, recover_sources, SourceRecovery};
pub use super::source::{MigrateRequest, Migrator, Moving, HANDOFF_DELAY_ENV, INTENT_DELAY_ENV};
pub use super::switches::SwitchHistory;
pub use super::target::{register_handoff, Target};
pub use super::target_machine::{ADOPT_AFTER, PREPARED_WAIT};
pub use godwit_core::policy::learned::Observed;
