//! Shared pieces of the benchmark binaries: the machine line and writing a section of
//! `docs/BENCHMARKS.md`.

use std::path::PathBuf;

/// `Linux <release>, <n> CPUs, <model>` of this machine.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("Linux {}, {cpus} CPUs, {cpu}", kernel.trim())
}

/// Replaces the `<!-- bench:NAME:start -->` … `<!-- bench:NAME:end -->` section of
/// `docs/BENCHMARKS.md` with `md`, or appends it under `heading` when the markers are absent.
pub fn write_section(name: &str, heading: &str, md: &str) -> std::io::Result<PathBuf> {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path)?;
    let block = format!("{start}\n{md}{end}");
    let new = match (doc.find(&start), doc.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{block}{}", &doc[..s], &doc[e + end.len()..]),
        _ => format!("{}\n\n## {heading}\n\n{block}\n", doc.trim_end()),
    };
    std::fs::write(&path, new)?;
    Ok(path)
}

/// Median of durations (sorts them).
pub fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A binary beside the running benchmark's own (`cargo build --release -p godwit -p
/// godwit-kvstore` puts the agent and the example service there); `bench` names the
/// `cargo xtask bench` command that builds them, for the message when one is missing.
pub fn release_bin(name: &str, bench: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().expect("target dir").join(name);
    assert!(
        bin.exists(),
        "{} missing: `cargo build --release -p godwit -p godwit-kvstore` (cargo xtask bench \
         {bench} does it)",
        bin.display()
    );
    bin
}
