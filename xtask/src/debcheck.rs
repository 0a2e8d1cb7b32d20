//! The Debian package on a real system (`cargo xtask package --check`, and a step of `cargo
//! xtask test` as root): `dpkg -i`, everything it installed checked where the package says it
//! goes, then `dpkg -r` and `dpkg -P`, and nothing dpkg installed left behind.
//!
//! Checked after `dpkg -i`: the maintainer scripts succeed, silently, with or without systemd as
//! PID 1 (CI runs without; the step says which path they took); `dpkg --verify` finds every file as
//! packaged; the unit, the default configuration (a conffile, 0640), the man pages and the bash,
//! zsh and fish completions are where `[package.metadata.deb]` puts them; `godwit --version`
//! prints the package's version; `man godwit` renders its NAME section; the bash completion
//! loads; `godwit validate` accepts the shipped configuration (the unit's `ExecStartPre`);
//! `systemd-analyze verify` passes on the installed unit with the real `/usr/bin/godwit`; the
//! `godwit` group is a system group; `/var/lib/godwit` is there, 0750.
//!
//! After `dpkg -r` only the conffile remains of what dpkg installed; after `dpkg -P` nothing
//! does, and every directory the package brought that did not exist before is gone.
//!
//! Kept by the package on purpose, even on purge (Debian practice), and removed here by the
//! check itself when it created them: the `godwit` system group (a system account is not
//! deleted on purge: files, the API socket and an administrator's additions may still name its
//! gid, and a later group taking the same gid would inherit them), and `/var/lib/godwit`, the
//! node's placement log, epochs and service state (`packaging/debian/postrm` says why).
//!
//! Never on an operator's machine: the check refuses to run when dpkg knows a `godwit` package
//! in any state, or when a file the package ships already exists (an install by hand). Once it
//! has installed the package, a failure purges it again before the error is returned.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::{is_root, repo_root, step};

/// The package's name.
const PKG: &str = "godwit";
/// The group the postinst creates for the API socket.
const GROUP: &str = "godwit";
/// The agent's state, created by the postinst.
const STATE_DIR: &str = "/var/lib/godwit";
/// The conffile.
const CONFIG: &str = "/etc/godwit/godwit.toml";
/// The unit as installed.
const UNIT: &str = "/lib/systemd/system/godwit.service";
/// `PATH` for the commands run as an operator would run them.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where `[package.metadata.deb]` (agent/godwit/Cargo.toml) puts each kind of file.
const LAYOUT: &[&str] = &[
    "/usr/bin/godwit",
    UNIT,
    CONFIG,
    "/usr/share/man/man1/godwit.1.gz",
    "/usr/share/bash-completion/completions/godwit",
    "/usr/share/zsh/vendor-completions/_godwit",
    "/usr/share/fish/vendor_completions.d/godwit.fish",
    "/usr/share/godwit/prometheus/godwit-alerts.yml",
    "/usr/share/godwit/grafana/godwit-dashboard.json",
];

/// Fails unless this process is root (dpkg needs it).
pub(crate) fn refuse_when_not_root() -> Result<()> {
    if !is_root() {
        bail!("installing the package with dpkg needs root (sudo -E cargo xtask package --check)");
    }
    Ok(())
}

/// Installs `deb`, checks it, removes and purges it; see the module documentation.
pub(crate) fn check(deb: &Path) -> Result<()> {
    refuse_when_not_root()?;
    let started = Instant::now();
    let entries = contents(deb)?;
    let version = run(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg("Version"),
        "dpkg-deb --field Version",
    )?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let before = Before::look(&entries)?;
    let result = install_check_remove(deb, &entries, &version, &before);
    if result.is_err() && status().ok().flatten().is_some() {
        eprintln!("the check failed: purging the package it installed (dpkg -P {PKG})");
        if let Err(e) = run(Command::new("dpkg").args(["--purge", PKG]), "dpkg -P") {
            eprintln!("warning: {e:#}; remove it by hand: dpkg -P {PKG}");
        }
    }
    let restored = before.restore();
    result.and(restored)?;
    println!(
        "package installed, checked, removed and purged in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One path of the package's data archive.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// Absolute, without a trailing slash.
    path: String,
    dir: bool,
}

/// The paths in `deb` (`dpkg-deb --contents`), the root excluded.
fn contents(deb: &Path) -> Result<Vec<Entry>> {
    let o = run(
        Command::new("dpkg-deb").arg("--contents").arg(deb),
        "dpkg-deb --contents",
    )?;
    let entries = parse_contents(&String::from_utf8_lossy(&o.stdout));
    ensure!(!entries.is_empty(), "dpkg-deb --contents listed nothing");
    Ok(entries)
}

/// Parses `tar -tv`-style lines: `drwxr-xr-x root/root 0 2024-01-01 00:00 ./usr/bin/`.
fn parse_contents(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mode = fields.next()?;
            let name = fields.nth(4)?;
            let path = name.strip_prefix('.')?.trim_end_matches('/');
            (!path.is_empty()).then(|| Entry {
                path: path.to_owned(),
                dir: mode.starts_with('d'),
            })
        })
        .collect()
}

/// What was on the machine before the install, to leave it as it was.
struct Before {
    /// The `godwit` group existed.
    group: bool,
    /// Everything under `/var/lib/godwit`, when it existed.
    state: Option<Vec<PathBuf>>,
    /// The package's directories that existed (`/usr/bin`, ...).
    dirs: BTreeSet<String>,
}

impl Before {
    /// Looks, and refuses when godwit is installed (by dpkg or by hand).
    fn look(entries: &[Entry]) -> Result<Self> {
        if let Some(s) = status()? {
            bail!(
                "dpkg knows a {PKG} package on this machine ({s}): this check installs and \
                 purges the package, so it will not run over an install. If that install is \
                 only a leftover of a test, remove it (dpkg -P {PKG}) and run the check again"
            );
        }
        let present: Vec<&str> = entries
            .iter()
            .filter(|e| !e.dir && Path::new(&e.path).symlink_metadata().is_ok())
            .map(|e| e.path.as_str())
            .collect();
        if !present.is_empty() {
            bail!(
                "files of the package exist already, outside dpkg (installed by hand?): {}. The \
                 check would overwrite and then delete them; it does not run here",
                present.join(" ")
            );
        }
        let state = Path::new(STATE_DIR).is_dir().then(|| tree(STATE_DIR));
        if state.is_some() {
            println!("{STATE_DIR} exists already: the package must leave it as it is");
        }
        Ok(Self {
            group: group_gid()?.is_some(),
            state,
            dirs: entries
                .iter()
                .filter(|e| e.dir && Path::new(&e.path).is_dir())
                .map(|e| e.path.clone())
                .collect(),
        })
    }

    /// Removes what the package keeps on purge, when the check brought it.
    fn restore(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !self.group && group_gid()?.is_some() {
            if let Err(e) = run(Command::new("groupdel").arg(GROUP), "groupdel") {
                problems.push(format!("{e:#}"));
            }
        }
        if self.state.is_none() && Path::new(STATE_DIR).exists() {
            // Empty: nothing ran. Anything in it is not the check's to delete.
            if let Err(e) = fs::remove_dir(STATE_DIR) {
                problems.push(format!(
                    "cannot remove {STATE_DIR}, which the check made: {e}"
                ));
            }
        }
        ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }
}

fn install_check_remove(
    deb: &Path,
    entries: &[Entry],
    version: &str,
    before: &Before,
) -> Result<()> {
    let systemd = Path::new("/run/systemd/system").is_dir();
    let pid1 = fs::read_to_string("/proc/1/comm").unwrap_or_default();
    step(&format!(
        "dpkg -i {} (PID 1 is {}: the maintainer scripts take their {} path)",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        pid1.trim(),
        if systemd { "systemd" } else { "no-systemd" }
    ));
    dpkg(Command::new("dpkg").arg("--install").arg(deb), "dpkg -i")?;
    let installed = status()?.unwrap_or_default();
    ensure!(
        installed == format!("install ok installed {version}"),
        "after dpkg -i, dpkg says {PKG} is {installed:?}, not installed at {version}"
    );

    step("files where the package says, as packaged (dpkg --verify, dpkg -L)");
    let o = run(
        Command::new("dpkg").args(["--verify", PKG]),
        "dpkg --verify",
    )?;
    ensure!(
        o.stdout.is_empty(),
        "dpkg --verify {PKG} found files that differ from the package:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let listed: BTreeSet<String> = text(&run(Command::new("dpkg").args(["-L", PKG]), "dpkg -L")?)
        .lines()
        .filter(|l| *l != "/.")
        .map(str::to_owned)
        .collect();
    let packaged: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
    ensure!(
        listed == packaged,
        "dpkg -L {PKG} and the package's contents differ: {:?}",
        listed.symmetric_difference(&packaged).collect::<Vec<_>>()
    );
    for path in LAYOUT {
        ensure!(packaged.contains(*path), "the package has no {path}");
        ensure!(Path::new(path).is_file(), "{path} is not installed");
    }
    let conffiles = query("${Conffiles}")?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l.trim().starts_with(&format!("{CONFIG} "))),
        "{CONFIG} is not a conffile of the package: {conffiles:?}"
    );
    same_as(UNIT, "packaging/godwit.service")?;
    same_as(CONFIG, "packaging/godwit.toml")?;
    let meta = fs::metadata(CONFIG)?;
    ensure!(
        meta.permissions().mode() & 0o7777 == 0o640 && meta.uid() == 0,
        "{CONFIG} is {:o} owned by uid {}, not 0640 root",
        meta.permissions().mode() & 0o7777,
        meta.uid()
    );

    step("godwit --version, man godwit, the completions, godwit validate");
    let out = text(&run(
        Command::new("sh")
            .args(["-c", "godwit --version"])
            .env("PATH", PATH),
        "godwit --version",
    )?);
    let upstream = version.rsplit_once('-').map_or(version, |(v, _)| v);
    ensure!(
        out.trim() == format!("godwit {upstream}"),
        "godwit --version printed {out:?}; the package is {version}"
    );
    println!("godwit --version: {}", out.trim());
    let pages: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("/usr/share/man/man1/"))
        .filter_map(|f| f.strip_suffix(".1.gz"))
        .collect();
    ensure!(pages.contains(&"godwit"), "no godwit(1) in the package");
    for page in &pages {
        let shown = text(&run(
            Command::new("man")
                .args(["-P", "cat", page])
                .env("PATH", PATH)
                .env("MANWIDTH", "80")
                .env("LC_ALL", "C.UTF-8"),
            &format!("man {page}"),
        )?);
        ensure!(
            has_name_section(&shown, page),
            "man {page} has no NAME section naming {page}:\n{shown}"
        );
    }
    println!("man: {} pages render with their NAME section", pages.len());
    let bash = text(&run(
        Command::new("bash").args([
            "-c",
            ". /usr/share/bash-completion/completions/godwit && complete -p godwit",
        ]),
        "loading the bash completion",
    )?);
    ensure!(
        bash.contains("godwit"),
        "the bash completion registers nothing: {bash:?}"
    );
    let zsh = fs::read_to_string("/usr/share/zsh/vendor-completions/_godwit")?;
    ensure!(
        zsh.starts_with("#compdef godwit"),
        "the zsh completion is not one"
    );
    let fish = fs::read_to_string("/usr/share/fish/vendor_completions.d/godwit.fish")?;
    ensure!(
        fish.contains("complete -c godwit"),
        "the fish completion is not one"
    );
    println!(
        "completions: bash loads ({}), zsh and fish in place",
        bash.trim()
    );
    run(
        Command::new("godwit")
            .args(["validate", "--config", CONFIG])
            .env("PATH", PATH),
        "godwit validate --config /etc/godwit/godwit.toml (the unit's ExecStartPre)",
    )?;
    println!("godwit validate --config {CONFIG}: ok");

    step(&format!("systemd-analyze verify {UNIT} (as installed)"));
    crate::lint::verify_unit_file(Path::new(UNIT), UNIT)?;

    step("what the maintainer scripts made: the godwit group, /var/lib/godwit");
    let gid = group_gid()?.with_context(|| format!("no {GROUP} group after dpkg -i"))?;
    ensure!(
        gid < 1000,
        "the {GROUP} group has gid {gid}, not a system gid"
    );
    let meta = fs::metadata(STATE_DIR).with_context(|| format!("{STATE_DIR} after dpkg -i"))?;
    ensure!(
        meta.is_dir() && meta.uid() == 0 && meta.permissions().mode() & 0o7777 == 0o750,
        "{STATE_DIR} is not a 0750 directory of root's"
    );
    println!("group {GROUP} (gid {gid}), {STATE_DIR} (0750 root)");

    step(&format!("dpkg -r {PKG}: only the conffile stays"));
    dpkg(Command::new("dpkg").args(["--remove", PKG]), "dpkg -r")?;
    let removed = status()?.unwrap_or_default();
    ensure!(
        removed.starts_with("deinstall ok config-files"),
        "after dpkg -r, dpkg says {PKG} is {removed:?}"
    );
    let left: Vec<&str> = entries
        .iter()
        .filter(|e| !e.dir && e.path != CONFIG && Path::new(&e.path).symlink_metadata().is_ok())
        .map(|e| e.path.as_str())
        .collect();
    ensure!(left.is_empty(), "left after dpkg -r: {}", left.join(" "));
    ensure!(
        Path::new(CONFIG).is_file(),
        "dpkg -r removed the conffile {CONFIG}"
    );
    kept(before)?;

    step(&format!("dpkg -P {PKG}: nothing dpkg installed stays"));
    dpkg(Command::new("dpkg").args(["--purge", PKG]), "dpkg -P")?;
    if let Some(s) = status()? {
        bail!("after dpkg -P, dpkg still knows {PKG}: {s}");
    }
    let left: Vec<&str> = entries
        .iter()
        .filter(|e| !(e.dir && before.dirs.contains(&e.path)))
        .filter(|e| Path::new(&e.path).symlink_metadata().is_ok())
        .map(|e| e.path.as_str())
        .collect();
    ensure!(left.is_empty(), "left after dpkg -P: {}", left.join(" "));
    ensure!(
        !Path::new("/usr/bin/godwit").exists(),
        "/usr/bin/godwit is still there"
    );
    kept(before)?;
    println!(
        "purged; kept as the package promises: group {GROUP}, {STATE_DIR} (removed next if this \
         check made them)"
    );
    Ok(())
}

/// The group and the state directory are still there, and the state as it was.
fn kept(before: &Before) -> Result<()> {
    ensure!(group_gid()?.is_some(), "the {GROUP} group was deleted");
    ensure!(Path::new(STATE_DIR).is_dir(), "{STATE_DIR} was deleted");
    if let Some(state) = &before.state {
        ensure!(
            &tree(STATE_DIR) == state,
            "the package changed what was in {STATE_DIR}"
        );
    }
    Ok(())
}

/// Whether `man` output has a NAME section whose first line names `page`.
fn has_name_section(shown: &str, page: &str) -> bool {
    let mut lines = shown.lines().map(str::trim);
    lines.any(|l| l == "NAME")
        && lines
            .find(|l| !l.is_empty())
            .is_some_and(|l| l.starts_with(page))
}

/// Fails unless the installed `path` has the same bytes as `source` in the repository.
fn same_as(path: &str, source: &str) -> Result<()> {
    let installed = fs::read(path).with_context(|| format!("read {path}"))?;
    let ours = fs::read(repo_root().join(source)).with_context(|| format!("read {source}"))?;
    ensure!(installed == ours, "{path} differs from {source}");
    Ok(())
}

/// dpkg's `${Status} ${Version}` of the package, `None` when dpkg does not know it (or only as
/// not installed and without configuration files).
fn status() -> Result<Option<String>> {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", PKG])
        .stdin(Stdio::null())
        .output()
        .context("run dpkg-query")?;
    let s = text(&o).trim().to_owned();
    Ok((!s.is_empty() && !s.contains("not-installed")).then_some(s))
}

/// A `dpkg-query -W` field of the installed package.
fn query(format: &str) -> Result<String> {
    let o = run(
        Command::new("dpkg-query").args(["-W", &format!("-f={format}"), PKG]),
        "dpkg-query",
    )?;
    Ok(text(&o))
}

/// The gid of the `godwit` group, if it exists.
fn group_gid() -> Result<Option<u32>> {
    let o = Command::new("getent")
        .args(["group", GROUP])
        .stdin(Stdio::null())
        .output()
        .context("run getent")?;
    if !o.status.success() {
        return Ok(None);
    }
    let line = text(&o);
    let gid = line
        .trim()
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .with_context(|| format!("getent group {GROUP}: {line:?}"))?;
    Ok(Some(gid))
}

/// Every path under `dir`, sorted.
fn tree(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::from(dir)];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Runs a dpkg action, which must succeed and print nothing on stderr: a maintainer script's
/// complaint, or dpkg's warning about a directory it could not remove, fails the check.
fn dpkg(cmd: &mut Command, what: &str) -> Result<()> {
    let o = run(cmd, what)?;
    ensure!(
        o.stderr.is_empty(),
        "{what} succeeded but printed on stderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// Runs `cmd` with its output captured; fails showing that output when it does not exit 0.
fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(o)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_lines_parse() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-12-07 22:00 ./
drwxr-xr-x 0/0               0 2026-12-07 22:00 ./etc/godwit/
-rw-r----- 0/0           11260 2026-12-07 22:00 ./etc/godwit/godwit.toml
-rwxr-xr-x 0/0         9000000 2026-12-07 22:00 ./usr/bin/godwit
lrwxrwxrwx 0/0               0 2026-12-07 22:00 ./usr/bin/gw -> godwit
";
        let e = |path: &str, dir| Entry {
            path: path.into(),
            dir,
        };
        assert_eq!(
            parse_contents(listing),
            vec![
                e("/etc/godwit", true),
                e("/etc/godwit/godwit.toml", false),
                e("/usr/bin/godwit", false),
                e("/usr/bin/gw", false),
            ]
        );
        assert!(parse_contents("").is_empty());
    }

    #[test]
    fn a_man_page_needs_its_name_section() {
        let page = "GODWIT(1)   General Commands Manual   GODWIT(1)\n\nNAME\n       godwit - \
                    Node-local edge agent\n\nSYNOPSIS\n";
        assert!(has_name_section(page, "godwit"));
        assert!(!has_name_section(page, "godwit-migrate"));
        assert!(!has_name_section("No manual entry for godwit\n", "godwit"));
    }

    #[test]
    fn the_layout_is_the_package_metadata() {
        let manifest = fs::read_to_string(repo_root().join("agent/godwit/Cargo.toml")).unwrap();
        for path in LAYOUT {
            let (dir, file) = path.rsplit_once('/').unwrap();
            let dir = dir.trim_start_matches('/');
            assert!(
                manifest.contains(&format!("\"{dir}/{file}\""))
                    || manifest.contains(&format!("\"{dir}/\"")),
                "{path} is not where agent/godwit/Cargo.toml puts it"
            );
        }
    }
}
