//! `cargo xtask lint`: formatting, clippy with warnings denied, and the systemd unit.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, repo_root, run_checked, step, target_dir};

/// The unit file shipped for edge hosts.
const UNIT: &str = "packaging/godwit.service";
/// The binary path the unit runs.
const UNIT_BIN: &str = "/usr/bin/godwit";

/// Runs every check, stopping at the first that fails.
pub fn lint() -> Result<()> {
    step("cargo fmt --all --check");
    run_checked(cargo().args(["fmt", "--all", "--check"]), "rustfmt check")?;
    step("cargo clippy --workspace --all-targets -- -D warnings");
    run_checked(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy",
    )?;
    step(&format!("systemd-analyze verify {UNIT}"));
    verify_unit()
}

/// `systemd-analyze verify` of the unit, when systemd-analyze is installed.
///
/// `/usr/bin/godwit` does not exist on a development machine, and verify rejects a unit whose
/// `ExecStart` is not executable; so a temporary copy of the unit points at a built agent (or at
/// `true` when none is built), which leaves everything else in the file checked as it is.
/// Warnings about the unit fail the check too (see [`unit_problems`]).
fn verify_unit() -> Result<()> {
    let Some(analyze) = which("systemd-analyze") else {
        println!("skipped: systemd-analyze not found (Debian package `systemd`)");
        return Ok(());
    };
    let unit =
        fs::read_to_string(repo_root().join(UNIT)).with_context(|| format!("read {UNIT}"))?;
    let stand_in = ["debug", "release"]
        .iter()
        .map(|p| target_dir().join(p).join("godwit"))
        .find(|p| p.is_file())
        .or_else(|| which("true"))
        .context("no executable to stand in for /usr/bin/godwit")?;
    let dir = std::env::temp_dir().join(format!("godwit-unit-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let copy = dir.join("godwit.service");
    let result = fs::write(&copy, unit.replace(UNIT_BIN, &stand_in.to_string_lossy()))
        .context("write the temporary unit")
        .and_then(|()| {
            let out = Command::new(&analyze)
                .arg("verify")
                .arg(&copy)
                .output()
                .context("run systemd-analyze")?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let problems = unit_problems(&text);
            print!("{text}");
            if !out.status.success() || !problems.is_empty() {
                bail!(
                    "systemd-analyze verify {UNIT} found problems ({}): {}",
                    out.status,
                    problems.join("; ")
                );
            }
            println!("{UNIT}: ok");
            Ok(())
        });
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The lines of `systemd-analyze verify` output about our unit. verify exits 0 on unknown keys
/// and unparsable values ("..., ignoring"), so any message naming the unit counts as a problem;
/// messages about other units (dependencies on this host) do not.
fn unit_problems(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.contains("godwit.service"))
        .collect()
}

/// The first executable named `name` on `PATH` (also searching the sbin directories).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_output_about_our_unit_is_a_problem() {
        let out =
            "/tmp/x/godwit.service:24: Unknown key 'BogusKey' in section [Service], ignoring.\n\
                   network-online.target: some note about another unit\n\
                   godwit.service: Command /usr/bin/godwit is not executable: No such file\n";
        assert_eq!(unit_problems(out).len(), 2);
        assert!(unit_problems("").is_empty());
        assert!(unit_problems("other.service: note\n").is_empty());
    }

    #[test]
    fn shipped_unit_verifies_when_systemd_analyze_exists() {
        // Skips itself (verify_unit prints why) where systemd-analyze is absent.
        verify_unit().unwrap();
    }

    #[test]
    fn shipped_unit_runs_validate_then_agent() {
        let unit = fs::read_to_string(repo_root().join(UNIT)).unwrap();
        let want = [
            "ExecStartPre=/usr/bin/godwit validate --config /etc/godwit/godwit.toml",
            "ExecStart=/usr/bin/godwit agent --config /etc/godwit/godwit.toml",
            "Restart=on-failure",
            "LimitMEMLOCK=infinity",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=30",
        ];
        for line in want {
            assert!(unit.lines().any(|l| l == line), "missing {line:?}");
        }
        for cap in [
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_KILL",
        ] {
            for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
                let line = unit.lines().find(|l| l.starts_with(key)).unwrap();
                assert!(line.contains(cap), "{key} lacks {cap}");
            }
        }
    }
}
