//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in `agent/godwit/Cargo.toml`: the release binary, the systemd unit,
//! the default configuration, man pages and shell completions generated from the CLI
//! (`godwit generate-docs`), and the maintainer scripts in `packaging/debian/` (the `godwit`
//! group, `/var/lib/godwit`).

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, repo_root, run_checked, step, target_dir};

/// The cargo-deb release that builds the package (installed with `cargo install` when missing).
const CARGO_DEB: &str = "3.8.0";

pub(crate) fn package() -> Result<()> {
    let bin = crate::build_release_agent()?;
    let out = target_dir().join("package");
    let _ = std::fs::remove_dir_all(&out);
    step("godwit generate-docs: man pages and shell completions");
    run_checked(
        Command::new(&bin)
            .arg("generate-docs")
            .arg("--out")
            .arg(&out),
        "generate-docs",
    )?;
    let man = out.join("man");
    for page in std::fs::read_dir(&man).context("reading the man pages")? {
        let page = page?.path();
        run_checked(Command::new("gzip").args(["-9n"]).arg(&page), "gzip")?;
    }
    let has_deb = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        step(&format!("cargo install cargo-deb@{CARGO_DEB} --locked"));
        run_checked(
            cargo().args(["install", "--locked", "--version", CARGO_DEB, "cargo-deb"]),
            "installing cargo-deb",
        )?;
    }
    step("cargo deb -p godwit --no-build");
    let o = cargo()
        .args(["deb", "-p", "godwit", "--no-build", "--strip"])
        .output()
        .context("cannot start cargo deb")?;
    if !o.status.success() {
        bail!(
            "cargo deb failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if deb.is_empty() {
        bail!("cargo deb printed no package path");
    }
    step(&format!("dpkg-deb --info --contents {deb}"));
    run_checked(
        Command::new("dpkg-deb").args(["--info", &deb]),
        "dpkg-deb --info",
    )?;
    run_checked(
        Command::new("dpkg-deb").args(["--contents", &deb]),
        "dpkg-deb --contents",
    )?;
    println!(
        "package: {}",
        std::path::Path::new(&deb)
            .strip_prefix(repo_root())
            .map_or(deb.clone(), |p| p.display().to_string())
    );
    Ok(())
}
