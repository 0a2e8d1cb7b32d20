//! Entry point of the image-manifest fuzz target (`fuzz/`, `cargo xtask fuzz`) and of its
//! corpus regression test. Built only with the `fuzzing` feature.

use super::store::Manifest;

/// A manifest as a peer offers it: parsed and validated; one that passes reads back the same
/// from its canonical JSON, under the same id.
pub fn manifest(data: &[u8]) {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    let canonical = serde_json::to_vec(&m).expect("a parsed manifest serialises");
    let again = Manifest::parse(&canonical).expect("a valid manifest's canonical form is valid");
    assert_eq!(again, m);
    assert_eq!(again.id(), m.id());
    let _ = (m.size(), m.chunks().count());
}
