//! `cargo xtask lint`: formatting, the crates' boundaries, clippy and rustdoc with warnings
//! denied, and the systemd unit.
//!
//! The boundaries are those of `docs/ARCHITECTURE.md`: each of the crates that reach the outside
//! world through one library is the only crate that names it ([`OWNERS`]), and the core names
//! nothing that does I/O ([`CORE_MAY_USE`]). A misplaced dependency fails here, before review.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, repo_root, run_checked, step, target_dir};

/// The unit file shipped for edge hosts.
const UNIT: &str = "packaging/godwit.service";
/// The binary path the unit runs.
const UNIT_BIN: &str = "/usr/bin/godwit";

/// Runs every check, stopping at the first that fails.
pub(crate) fn lint() -> Result<()> {
    step("cargo fmt --all --check");
    run_checked(cargo().args(["fmt", "--all", "--check"]), "rustfmt check")?;
    step("crate boundaries (cargo metadata)");
    check_boundaries()?;
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
    step("cargo doc --workspace --no-deps (warnings denied)");
    run_checked(
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--quiet"])
            .env("RUSTDOCFLAGS", "-D warnings"),
        "rustdoc",
    )?;
    step(&format!("systemd-analyze verify {UNIT}"));
    verify_unit()
}

/// Libraries that only one crate may name, and that crate.
pub(crate) const OWNERS: &[(&str, &str)] = &[
    ("aya", "godwit-probe"),
    ("aya-obj", "godwit-probe"),
    ("chitchat", "godwit-gossip"),
    ("quinn", "godwit-transport"),
    ("quinn-proto", "godwit-transport"),
    ("rustls", "godwit-transport"),
    ("rustls-webpki", "godwit-transport"),
    ("rcgen", "godwit-transport"),
    ("zstd", "godwit-transport"),
    ("openraft", "godwit-coord"),
];

/// Everything the pure core may depend on (any kind of dependency): no async runtime, no
/// system calls, no network.
pub(crate) const CORE_MAY_USE: &[&str] = &[
    "globset",
    "nalgebra",
    "proptest",
    "serde",
    "serde_json",
    "thiserror",
];

/// The core crate.
const CORE: &str = "godwit-core";

/// Fails when a workspace crate names a library another crate owns, or the core names one that
/// is not on its list.
fn check_boundaries() -> Result<()> {
    let meta = workspace_metadata()?;
    let problems = boundary_problems(&meta);
    if !problems.is_empty() {
        bail!("crate boundaries broken:\n  {}", problems.join("\n  "));
    }
    println!("crate boundaries: ok");
    Ok(())
}

/// `cargo metadata` of the workspace's own packages (their direct dependencies included).
pub(crate) fn workspace_metadata() -> Result<serde_json::Value> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parse cargo metadata")
}

/// The boundary rules broken by the packages in `cargo metadata` output, one line each.
pub(crate) fn boundary_problems(meta: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let packages = meta["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for package in packages {
        let Some(name) = package["name"].as_str() else {
            continue;
        };
        let deps = package["dependencies"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for dep in deps {
            let Some(dep_name) = dep["name"].as_str() else {
                continue;
            };
            if let Some((_, owner)) = OWNERS.iter().find(|(lib, _)| *lib == dep_name) {
                if name != *owner {
                    problems.push(format!(
                        "{name} depends on {dep_name}, which only {owner} may use"
                    ));
                }
            }
            let is_workspace_crate = dep_name.starts_with("godwit-");
            if name == CORE && (is_workspace_crate || !CORE_MAY_USE.contains(&dep_name)) {
                problems.push(format!(
                    "{CORE} depends on {dep_name}: the core is pure (allowed: {})",
                    CORE_MAY_USE.join(", ")
                ));
            }
        }
    }
    problems
}

/// `systemd-analyze verify` of the unit, when systemd-analyze is installed.
///
/// `/usr/bin/godwit` does not exist on a development machine, and verify rejects a unit whose
/// `ExecStart` is not executable; so a temporary copy of the unit points at a built agent (or at
/// `true` when none is built), which leaves everything else in the file checked as it is.
/// Warnings about the unit fail the check too (see [`unit_problems`]).
fn verify_unit() -> Result<()> {
    if which("systemd-analyze").is_none() {
        println!("skipped: systemd-analyze not found (Debian package `systemd`)");
        return Ok(());
    }
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
        .and_then(|()| verify_unit_file(&copy, UNIT));
    let _ = fs::remove_dir_all(&dir);
    result
}

/// `systemd-analyze verify FILE`, where `FILE` is a `godwit.service` (`what` names it in
/// messages); skipped with a note when systemd-analyze is not installed.
pub(crate) fn verify_unit_file(file: &Path, what: &str) -> Result<()> {
    let Some(analyze) = which("systemd-analyze") else {
        println!("skipped: systemd-analyze not found (Debian package `systemd`)");
        return Ok(());
    };
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(file)
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
            "systemd-analyze verify {what} found problems ({}): {}",
            out.status,
            problems.join("; ")
        );
    }
    println!("{what}: ok");
    Ok(())
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
    use serde_json::json;

    use super::boundary_problems;

    fn package(name: &str, deps: &[&str]) -> serde_json::Value {
        json!({
            "name": name,
            "dependencies": deps.iter().map(|d| json!({"name": d, "kind": null})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn the_workspace_as_it_is_keeps_its_boundaries() {
        let meta = super::workspace_metadata().expect("cargo metadata runs");
        let names: Vec<&str> = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for crate_name in [
            "godwit-core",
            "godwit-probe",
            "godwit-transport",
            "godwit-migrate",
        ] {
            assert!(
                names.contains(&crate_name),
                "{crate_name} missing from {names:?}"
            );
        }
        assert_eq!(boundary_problems(&meta), Vec::<String>::new());
    }

    #[test]
    fn a_misplaced_library_is_caught() {
        let meta = json!({"packages": [
            package("godwit-probe", &["aya", "libc"]),
            package("godwit-migrate", &["godwit-transport", "zstd"]),
            package("godwit", &["chitchat", "godwit-gossip"]),
            package("godwit-gossip", &["chitchat"]),
        ]});
        assert_eq!(
            boundary_problems(&meta),
            vec![
                "godwit-migrate depends on zstd, which only godwit-transport may use".to_string(),
                "godwit depends on chitchat, which only godwit-gossip may use".to_string(),
            ]
        );
    }

    #[test]
    fn the_core_stays_pure() {
        let meta = json!({"packages": [
            package("godwit-core", &["serde", "nalgebra", "tokio", "godwit-probe"]),
        ]});
        let problems = boundary_problems(&meta);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("godwit-core depends on tokio"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("godwit-core depends on godwit-probe"),
            "{problems:?}"
        );
    }

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
            // Services start as their user with their capabilities, and their VIP is announced.
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_CHOWN",
            "CAP_NET_RAW",
        ] {
            for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
                let line = unit.lines().find(|l| l.starts_with(key)).unwrap();
                assert!(line.contains(cap), "{key} lacks {cap}");
            }
        }
    }
}
