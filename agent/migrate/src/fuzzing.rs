//! Entry points of the migration fuzz targets (`fuzz/`, `cargo xtask fuzz`) and of their corpus
//! regression test: the journal parser, and the protocol messages as a peer sends them. Built
//! only with the `fuzzing` feature.

use godwit_transport::fuzzing::frames_of;
use godwit_transport::MAX_FRAME;

use super::control::{Reply, Request};
use super::journal::{SourceEntry, TargetEntry};
use super::protocol::{Handoff, Msg};

/// A journal entry as read back at start (after a crash, or from a damaged disk): parsed as
/// either side's entry; one that parses reads back the same from what the journal writes.
pub fn journal(data: &[u8]) {
    if let Ok(e) = serde_json::from_slice::<SourceEntry>(data) {
        let written = serde_json::to_vec_pretty(&e).expect("an entry serialises");
        assert_eq!(
            serde_json::from_slice::<SourceEntry>(&written).ok(),
            Some(e)
        );
    }
    if let Ok(e) = serde_json::from_slice::<TargetEntry>(data) {
        let written = serde_json::to_vec_pretty(&e).expect("an entry serialises");
        assert_eq!(
            serde_json::from_slice::<TargetEntry>(&written).ok(),
            Some(e)
        );
    }
}

/// The migration's messages from a peer: the first byte picks the service whose frames the
/// rest is read as (`"state"`, `"handoff"`, or `"control"`'s requests and replies).
pub fn protocol(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => frames_of::<Msg>(rest, MAX_FRAME),
        1 => frames_of::<Handoff>(rest, MAX_FRAME),
        2 => frames_of::<Request>(rest, MAX_FRAME),
        _ => frames_of::<Reply>(rest, MAX_FRAME),
    };
}
