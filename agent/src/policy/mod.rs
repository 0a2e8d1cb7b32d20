//! Decisions: site index, thresholds, trigger, selection, placement, mode, failover, pre-staging. Pure: no I/O, no async.
