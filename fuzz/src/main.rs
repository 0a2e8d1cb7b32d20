//! One libFuzzer binary for every target of `godwit::fuzzing::TARGETS`; the environment
//! variable `GODWIT_FUZZ_TARGET` names the one it runs. Built and run by `cargo xtask fuzz`.
//!
//! Besides panics, an input that makes the target hold more than [`alloc::LIMIT`] bytes at
//! once is a crash: a decoder must not let its sender decide what it allocates.

#![no_main]

mod alloc;

use std::sync::OnceLock;

use godwit::fuzzing::{target, Target, TARGETS};
use libfuzzer_sys::fuzz_target;

static TARGET: OnceLock<Target> = OnceLock::new();

fn select() {
    let name = std::env::var("GODWIT_FUZZ_TARGET").unwrap_or_default();
    let Some(t) = target(&name) else {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "godwit-fuzz: set GODWIT_FUZZ_TARGET to one of {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let _ = TARGET.set(t);
}

fuzz_target!(init: select(), |data: &[u8]| {
    let run = TARGET.get().expect("selected at init");
    alloc::start();
    run(data);
    alloc::finish(data.len());
});
