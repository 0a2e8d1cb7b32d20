//! `cargo xtask sim [--write] [ARGS]`: runs the cluster simulator,
//! `cargo run --release -q -p godwit-tests --bin godwit-sim -- ARGS` (default ARGS:
//! `compare --traces tests/traces`). With `--write`, its output also replaces the section between
//! `<!-- bench:sim:start -->` and `<!-- bench:sim:end -->` in docs/BENCHMARKS.md.
//!
//! xtask itself does not depend on godwit: building godwit needs clang, which this command
//! installs first, as `cargo xtask run` does.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::bench::{machine, today_utc, write_section};
use crate::{packages, step};

const SECTION_START: &str = "<!-- bench:sim:start -->";
const SECTION_END: &str = "<!-- bench:sim:end -->";

/// Arguments of `cargo xtask sim`: everything is passed to `godwit-sim`, except `--write`.
#[derive(clap::Args)]
pub(crate) struct SimArgs {
    /// `godwit-sim` arguments (see `cargo xtask sim help`), plus `--write` to update
    /// docs/BENCHMARKS.md.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// `cargo xtask sim`.
pub(crate) fn sim(a: &SimArgs) -> Result<()> {
    let write = a.args.iter().any(|x| x == "--write");
    let mut args: Vec<OsString> = a.args.iter().filter(|x| *x != "--write").cloned().collect();
    if args.is_empty() {
        args = ["compare", "--traces", "tests/traces"]
            .map(OsString::from)
            .to_vec();
    }
    step("system packages needed to build");
    packages::ensure(packages::BUILD)?;
    step("cargo run --release -p godwit-tests --bin godwit-sim");
    let out = crate::cargo_run_test_bin("godwit-sim")
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("godwit-sim failed ({})", out.status);
    }
    if write {
        let cmdline = format!(
            "cargo xtask sim {}",
            args.iter()
                .map(|x| x.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let m = machine()?;
        let mut body = String::new();
        let _ = writeln!(body, "### Policy comparison in the cluster simulator\n");
        let _ = writeln!(body, "- command: `{cmdline}`");
        let _ = writeln!(body, "- date: {} (UTC)", today_utc());
        let _ = writeln!(
            body,
            "- machine: Linux {}, {} CPUs, {} (the simulation is deterministic: the figures do \
             not depend on it)\n",
            m.kernel, m.cpus, m.model
        );
        body.push_str(&stdout);
        let path = write_section(SECTION_START, SECTION_END, &body)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
