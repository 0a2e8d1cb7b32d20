//! Entry point of the service-spec fuzz target (`fuzz/`, `cargo xtask fuzz`) and of its corpus
//! regression test. Built only with the `fuzzing` feature.

use super::service::{ServiceSpec, ServicesSection};

/// A service spec as an API caller (JSON) or a config file (TOML) gives it: parsed, then
/// validated against the default `[services]`; a valid one reads back the same from its JSON.
pub fn spec(data: &[u8]) {
    let section = ServicesSection::default();
    let mut specs = Vec::new();
    if let Ok(s) = serde_json::from_slice::<ServiceSpec>(data) {
        specs.push(s);
    }
    if let Ok(Ok(s)) = std::str::from_utf8(data).map(toml::from_str::<ServiceSpec>) {
        specs.push(s);
    }
    for s in specs {
        if s.validate(&section).is_ok() {
            let json = serde_json::to_vec(&s).expect("a spec serialises");
            let again: ServiceSpec = serde_json::from_slice(&json).expect("its JSON parses");
            assert_eq!(again, s);
            let _ = (s.state_dir(&section), s.state_relative(&section));
        }
    }
}
