//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in `agent/godwit/Cargo.toml`: the release binary, the systemd unit,
//! the default configuration, man pages and shell completions generated from the CLI
//! (`godwit generate-docs`), and the maintainer scripts in `packaging/debian/` (the `godwit`
//! group, `/var/lib/godwit`).
//!
//! `--check` then installs it for real and removes it again ([`crate::debcheck`]). `cargo xtask
//! test` does the same with the debug build it already has (`--profile dev`): the same package
//! around the same `godwit` binary, built without the release build's optimisation.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::{cargo, repo_root, run_checked, step, target_dir};

/// The cargo-deb release that builds the package (installed with `cargo install` when missing).
const CARGO_DEB: &str = "3.8.0";

#[derive(Args)]
pub(crate) struct PackageArgs {
    /// Then install it with `dpkg -i`, check what it installed, and remove and purge it again
    /// (root; refuses when godwit is already installed on this machine).
    #[arg(long)]
    check: bool,
    /// The build of the agent that goes in: `release` (what ships), or `dev`, the debug build
    /// `cargo xtask test` already has, written to target/debian/dev/.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    profile: Profile,
}

/// The cargo profile of the packaged binary.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Profile {
    Release,
    Dev,
}

/// `cargo xtask package [--check] [--profile dev]`.
pub(crate) fn package(args: &PackageArgs) -> Result<()> {
    if args.check {
        crate::debcheck::refuse_when_not_root()?;
    }
    let deb = build(args.profile)?;
    step(&format!("dpkg-deb --info --contents {}", shown(&deb)));
    run_checked(
        Command::new("dpkg-deb").arg("--info").arg(&deb),
        "dpkg-deb --info",
    )?;
    run_checked(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
        "dpkg-deb --contents",
    )?;
    println!("package: {}", shown(&deb));
    if args.check {
        crate::debcheck::check(&deb)?;
    }
    Ok(())
}

/// Builds the agent with `profile`, its man pages and completions, and the package around them;
/// returns the package's path.
pub(crate) fn build(profile: Profile) -> Result<PathBuf> {
    let bin = match profile {
        Profile::Release => crate::build_release_agent()?,
        Profile::Dev => {
            // Exactly `-p godwit`: a workspace build unifies the features of the test crates
            // (`fuzzing`, `sim`) into the binary; this is the binary as it ships (and the one the
            // integration tests start, so their build of it is then a no-op).
            step("cargo build -p godwit --bin godwit");
            run_checked(
                cargo().args(["build", "-p", "godwit", "--bin", "godwit"]),
                "debug build",
            )?;
            target_dir().join("debug").join("godwit")
        }
    };
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
    let has_deb = cargo().args(["deb", "--version"]).output().is_ok_and(|o| {
        o.stdout
            .starts_with(format!("cargo-deb {CARGO_DEB}").as_bytes())
    });
    if !has_deb {
        step(&format!("cargo install cargo-deb@{CARGO_DEB} --locked"));
        run_checked(
            cargo().args(["install", "--locked", "--version", CARGO_DEB, "cargo-deb"]),
            "installing cargo-deb",
        )?;
    }
    let mut deb = cargo();
    deb.args(["deb", "-p", "godwit", "--no-build", "--strip"]);
    match profile {
        Profile::Release => step("cargo deb -p godwit --no-build --strip"),
        Profile::Dev => {
            // The asset `target/release/godwit` names "the profile's binary" to cargo-deb. It
            // warns that the dev profile is meant for releases only; the package is the same.
            // `--fast` compresses less: this one is installed once and deleted.
            let dir = target_dir().join("debian").join("dev");
            step(
                "cargo deb -p godwit --no-build --strip --profile dev --fast -o target/debian/dev/",
            );
            deb.args(["--profile", "dev", "--fast", "--output"])
                .arg(&dir);
            std::fs::create_dir_all(&dir).context("create target/debian/dev")?;
        }
    }
    let o = deb.output().context("cannot start cargo deb")?;
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
    Ok(PathBuf::from(deb))
}

/// `path` relative to the workspace root when it is inside it.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}
