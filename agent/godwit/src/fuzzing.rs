//! Every fuzz target, by name: the decoders of what peers, API callers and files hand the
//! agent. `fuzz/` builds one libFuzzer binary over this table (`cargo xtask fuzz`), and the
//! corpus regression test of `godwit-tests` feeds every committed input through the same
//! functions, without the fuzzer. Built only with the `fuzzing` feature.
//!
//! Each function takes arbitrary bytes and returns; a panic is a bug (a crash to the fuzzer),
//! and so is an allocation the input's sender could make large.

use crate::config::Config;

/// A fuzz target: arbitrary bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also the directory of its corpus under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("transport_frame", godwit_transport::fuzzing::frame),
    ("transport_piece", godwit_transport::fuzzing::piece),
    ("transport_bulk", godwit_transport::fuzzing::bulk),
    ("image_manifest", godwit_image::fuzzing::manifest),
    ("gossip_open", godwit_gossip::fuzzing::open),
    ("gossip_reassemble", godwit_gossip::fuzzing::reassemble),
    ("migrate_journal", godwit_migrate::fuzzing::journal),
    ("migrate_protocol", godwit_migrate::fuzzing::protocol),
    ("config", config),
    ("service_spec", godwit_runtime::fuzzing::spec),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The agent's configuration file (`godwit.toml`): parsed and validated.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "<fuzz>");
    }
}
