//! `cargo xtask fuzz [--seconds N] [--target NAME]... [--minimise]`: builds the fuzz targets
//! (`fuzz/`, one libFuzzer binary over `godwit::fuzzing::TARGETS`) and runs each for N seconds.
//!
//! Stable Rust only: libFuzzer comes from the `libfuzzer-sys` crate (compiled from its C++
//! sources with clang++-19, which `packages::BUILD` installs), and the coverage
//! instrumentation from rustc's stable flags `-C passes=sancov-module` and LLVM's
//! SanitizerCoverage options (8-bit counters, PC table, comparison tracing), as `cargo fuzz
//! build --sanitizer none` passes them. Nothing else is installed.
//!
//! The targets are the directories of `fuzz/corpus/`, each a committed seed corpus. The
//! fuzzer's own corpus grows in `target/fuzz/corpus/<target>/`; a crash input lands in
//! `fuzz/crashes/<target>/`, where the corpus regression test of `cargo xtask test` runs it
//! for ever after. `--minimise` merges what the runs found into a small set of `min-*` files
//! in `fuzz/corpus/<target>/`, to commit.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::packages;

/// `cargo xtask fuzz` arguments.
#[derive(clap::Args)]
pub(crate) struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (the names of `fuzz/corpus/`'s directories); all by default.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// After the runs, replace each target's `min-*` corpus files with a minimised merge of
    /// what the fuzzer found (small files only, to commit).
    #[arg(long)]
    minimise: bool,
}

/// The SanitizerCoverage instrumentation libFuzzer needs, with stable rustc flags.
const COVERAGE_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
];

/// Longest input the fuzzer makes (every bound worth reaching is a header field away).
const MAX_LEN: u32 = 8192;
/// Committed minimised inputs per target, and their largest size.
const MIN_FILES: usize = 40;
const MIN_FILE_BYTES: u64 = 4096;

/// What one target's run did.
struct Outcome {
    target: String,
    execs: u64,
    execs_per_s: u64,
    cov_start: u64,
    cov_end: u64,
    corpus: u64,
    crashes: Vec<PathBuf>,
}

pub(crate) fn fuzz(args: &FuzzArgs) -> Result<()> {
    let root = crate::repo_root();
    let all = targets(root)?;
    let chosen: Vec<String> = if args.targets.is_empty() {
        all.iter().cloned().collect()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!(
                    "no fuzz target {t:?}: the targets are {}",
                    all.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        args.targets.clone()
    };

    crate::step("system packages needed to build (clang++-19 compiles libFuzzer)");
    packages::ensure(packages::BUILD)?;

    crate::step("build the fuzz targets (stable rustc, SanitizerCoverage, libFuzzer)");
    let bin = build(root)?;

    let work = crate::target_dir().join("fuzz");
    let mut outcomes = Vec::new();
    for t in &chosen {
        crate::step(&format!("fuzz {t} for {} s", args.seconds));
        let o = run(root, &bin, &work, t, args.seconds)?;
        println!(
            "{t}: {} execs, {} execs/s, cov {} -> {}, corpus {}, crashes {}",
            o.execs,
            o.execs_per_s,
            o.cov_start,
            o.cov_end,
            o.corpus,
            o.crashes.len()
        );
        outcomes.push(o);
        if args.minimise {
            minimise(root, &bin, &work, t)?;
        }
    }

    println!();
    println!(
        "{:<18} {:>12} {:>10} {:>14} {:>8} {:>8}",
        "target", "execs", "execs/s", "cov", "corpus", "crashes"
    );
    for o in &outcomes {
        println!(
            "{:<18} {:>12} {:>10} {:>14} {:>8} {:>8}",
            o.target,
            o.execs,
            o.execs_per_s,
            format!("{} -> {}", o.cov_start, o.cov_end),
            o.corpus,
            o.crashes.len()
        );
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if !crashed.is_empty() {
        for o in &crashed {
            for c in &o.crashes {
                eprintln!(
                    "crash in {}: {} (reproduce: GODWIT_FUZZ_TARGET={} {} {})",
                    o.target,
                    c.display(),
                    o.target,
                    bin.display(),
                    c.display()
                );
            }
        }
        bail!(
            "{} of {} targets crashed; the inputs are in fuzz/crashes/ (commit them with the fix)",
            crashed.len(),
            outcomes.len()
        );
    }
    Ok(())
}

/// The targets: the directories of `fuzz/corpus/`.
fn targets(root: &Path) -> Result<BTreeSet<String>> {
    let dir = root.join("fuzz/corpus");
    let names: BTreeSet<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// The host's target triple: the fuzz binary is built for it explicitly, so that the coverage
/// flags apply to it and not to build scripts and proc macros.
fn host_triple() -> Result<String> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")
}

fn build(root: &Path) -> Result<PathBuf> {
    let triple = host_triple()?;
    let target_dir = crate::target_dir().join("fuzz");
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--release",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--bin",
        "godwit-fuzz",
        "--target",
        &triple,
    ])
    .env("CARGO_TARGET_DIR", &target_dir)
    .env("RUSTFLAGS", COVERAGE_FLAGS.join(" "))
    .env("CXX", "clang++-19")
    // The fuzz binary loads no BPF: an empty object spares the C build.
    .env("GODWIT_BPF_STUB", "1")
    .current_dir(root);
    crate::run_checked(&mut cmd, "fuzz build")?;
    Ok(target_dir.join(triple).join("release").join("godwit-fuzz"))
}

fn crash_files(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect()
}

fn run(root: &Path, bin: &Path, work: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let crashes = root.join("fuzz/crashes").join(target);
    let logs = work.join("logs");
    for d in [&corpus, &crashes, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let before = crash_files(&crashes);
    let log = logs.join(format!("{target}.log"));
    let status = Command::new(bin)
        .env("GODWIT_FUZZ_TARGET", target)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", crashes.display()))
        .arg(&corpus)
        .arg(root.join("fuzz/corpus").join(target))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let crashes: Vec<PathBuf> = crash_files(&crashes).difference(&before).cloned().collect();
    if !status.success() && crashes.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        bail!(
            "fuzzing {target} failed ({status}) without a crash input; log: {}",
            log.display()
        );
    }
    if !crashes.is_empty() {
        for l in text
            .lines()
            .filter(|l| l.contains("panicked") || l.contains("ERROR"))
        {
            eprintln!("{target}: {l}");
        }
    }
    let stat = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let cov: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_once(" cov: "))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .collect();
    Ok(Outcome {
        target: target.to_string(),
        execs: stat("number_of_executed_units"),
        execs_per_s: stat("average_exec_per_sec"),
        cov_start: cov.first().copied().unwrap_or(0),
        cov_end: cov.last().copied().unwrap_or(0),
        corpus: fs::read_dir(&corpus).map(|d| d.count() as u64).unwrap_or(0),
        crashes,
    })
}

/// Merges the work corpus and the committed one into a minimal set that keeps their coverage,
/// and commits its smallest files as `fuzz/corpus/<target>/min-*` (replacing the previous).
fn minimise(root: &Path, bin: &Path, work: &Path, target: &str) -> Result<()> {
    let merged = work.join("merged").join(target);
    let _ = fs::remove_dir_all(&merged);
    fs::create_dir_all(&merged)?;
    let committed = root.join("fuzz/corpus").join(target);
    let status = Command::new(bin)
        .env("GODWIT_FUZZ_TARGET", target)
        .arg("-merge=1")
        .arg(format!("-max_len={MAX_LEN}"))
        .arg(&merged)
        .arg(&committed)
        .arg(work.join("corpus").join(target))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("merging the corpus of {target} failed ({status})");
    }
    let mut files: Vec<(u64, PathBuf)> = fs::read_dir(&merged)?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
        .filter(|(len, _)| *len <= MIN_FILE_BYTES)
        .collect();
    files.sort();
    for old in fs::read_dir(&committed)?.flatten() {
        if old.file_name().to_string_lossy().starts_with("min-") {
            fs::remove_file(old.path())?;
        }
    }
    for (_, f) in files.iter().take(MIN_FILES) {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        fs::copy(
            f,
            committed.join(format!("min-{}", &name[..name.len().min(16)])),
        )?;
    }
    println!(
        "{target}: minimised corpus of {} files, {} committed as min-*",
        files.len(),
        files.len().min(MIN_FILES)
    );
    Ok(())
}
