//! Where services run on this node: drivers that exec them in their cgroups, freeze and thaw
//! them, check their health, hold their virtual IPs and park a forked process ahead of a
//! cut-over (`service`), and the inventory that turns the operator's patterns into the concrete
//! set of processes and containers this node manages (`inventory`).

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod inventory;
pub mod service;
