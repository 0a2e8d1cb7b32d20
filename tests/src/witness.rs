//! Reads the file `godwit-witness` instances append to and checks what a placement promises:
//! no service serves on two nodes at once, and none starts at an epoch older than one it
//! already started at.
//!
//! An instance's serving interval runs from its `start` line to its last line (`stop`, or
//! the last `alive` before a SIGKILL): the instance surely ran then, so two intervals that
//! intersect are two copies running at once, never an artefact of sampling.
//!
//! One overlap is inherent to any lease: a process that was paused (its whole node frozen)
//! runs again for an instant when it resumes, before anything on that node can act; no timer
//! stops a paused process. That is what the epoch is for: a resource that checks the token
//! rejects such a write. The checker counts those apart (`stale_resumptions`): the older
//! instance's lines inside the newer one's interval must all come after a silence of at
//! least [`PAUSE_NS`], carry an older epoch, and end within [`RESUME_BOUND_NS`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A silence in an instance's lines this long means it was paused.
pub const PAUSE_NS: u64 = 1_000_000_000;
/// How long a paused instance may run on after it resumes before it is killed.
pub const RESUME_BOUND_NS: u64 = 1_500_000_000;

/// One instance of a service, as its lines tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub service: String,
    pub node: String,
    pub epoch: Option<u64>,
    pub pid: u32,
    /// Every line's time, `start` first.
    pub times: Vec<u64>,
    /// It wrote `stop` (a SIGTERM), so its end is exact.
    pub stopped: bool,
}

impl Instance {
    pub fn start(&self) -> u64 {
        self.times[0]
    }
    pub fn end(&self) -> u64 {
        *self.times.last().expect("an instance has a start")
    }
}

/// What the file shows.
#[derive(Debug, Default)]
pub struct Verdict {
    pub instances: Vec<Instance>,
    /// Lines that could not be read.
    pub bad_lines: Vec<String>,
    /// Two instances of a service running at once (not explained by a pause).
    pub overlaps: Vec<String>,
    /// Starts at an epoch older than one the service already started at, or at one epoch on
    /// two nodes, or with no epoch.
    pub stale_starts: Vec<String>,
    /// Paused instances that ran again briefly with an older epoch (see the module's doc).
    pub stale_resumptions: Vec<String>,
}

impl Verdict {
    /// Whether the placement kept its promises.
    pub fn ok(&self) -> bool {
        self.bad_lines.is_empty() && self.overlaps.is_empty() && self.stale_starts.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} instances; {} overlaps, {} stale starts, {} stale resumptions after a pause, {} bad lines",
            self.instances.len(),
            self.overlaps.len(),
            self.stale_starts.len(),
            self.stale_resumptions.len(),
            self.bad_lines.len()
        )?;
        for (what, list) in [
            ("overlap", &self.overlaps),
            ("stale start", &self.stale_starts),
            ("stale resumption", &self.stale_resumptions),
            ("bad line", &self.bad_lines),
        ] {
            for l in list.iter().take(20) {
                writeln!(f, "  {what}: {l}")?;
            }
        }
        Ok(())
    }
}

/// Reads and checks `path`.
pub fn check_file(path: &Path) -> std::io::Result<Verdict> {
    Ok(check(&std::fs::read_to_string(path)?))
}

/// Checks the lines of a witness file.
pub fn check(text: &str) -> Verdict {
    let mut v = Verdict::default();
    // (node, pid) -> index of its instance now.
    let mut open: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (f.len() == 6)
            .then(|| Some((f[0].parse::<u64>().ok()?, f[5].parse::<u32>().ok()?)))
            .flatten();
        let Some((t, pid)) = parsed else {
            v.bad_lines.push(line.to_string());
            continue;
        };
        let (kind, service, node) = (f[1], f[2], f[3]);
        let key = (node.to_string(), pid);
        match kind {
            "start" => {
                open.insert(key, v.instances.len());
                v.instances.push(Instance {
                    service: service.to_string(),
                    node: node.to_string(),
                    epoch: f[4].parse().ok(),
                    pid,
                    times: vec![t],
                    stopped: false,
                });
            }
            "alive" | "stop" => match open.get(&key) {
                Some(&i) if v.instances[i].service == service => {
                    v.instances[i].times.push(t);
                    v.instances[i].stopped |= kind == "stop";
                }
                _ => v.bad_lines.push(format!("{line} (no start before it)")),
            },
            _ => v.bad_lines.push(line.to_string()),
        }
    }
    let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in &v.instances {
        by_service.entry(&i.service).or_default().push(i);
    }
    let mut overlaps = Vec::new();
    let mut stale_starts = Vec::new();
    let mut resumptions = Vec::new();
    for (service, mut list) in by_service {
        list.sort_by_key(|i| i.start());
        // Epochs only grow with start time; one epoch never runs on two nodes.
        let mut newest: Option<&Instance> = None;
        for i in &list {
            let Some(e) = i.epoch else {
                stale_starts.push(format!("{service} started on {} with no epoch", i.node));
                continue;
            };
            if let Some(n) = newest {
                let ne = n.epoch.unwrap_or(0);
                if e < ne {
                    stale_starts.push(format!(
                        "{service} started on {} at epoch {e} at {} ms, after epoch {ne} started on {} at {} ms",
                        i.node,
                        i.start() / 1_000_000,
                        n.node,
                        n.start() / 1_000_000
                    ));
                } else if e == ne && i.node != n.node {
                    stale_starts.push(format!(
                        "{service} ran at epoch {e} on {} and on {}",
                        n.node, i.node
                    ));
                }
            }
            if newest.is_none_or(|n| e >= n.epoch.unwrap_or(0)) {
                newest = Some(i);
            }
        }
        for (a_idx, a) in list.iter().enumerate() {
            for b in &list[a_idx + 1..] {
                // b starts after a; they overlap when a still ran after b's start.
                if a.end() < b.start() {
                    continue;
                }
                match paused_run(a, b) {
                    Some(ns) => resumptions.push(format!(
                        "{service}: {} (epoch {:?}) resumed and ran {} ms into {}'s (epoch {:?}) interval",
                        a.node,
                        a.epoch,
                        ns / 1_000_000,
                        b.node,
                        b.epoch
                    )),
                    None => overlaps.push(format!(
                        "{service}: {} (epoch {:?}, pid {}) ran {}..{} ms and {} (epoch {:?}, pid {}) from {} ms",
                        a.node,
                        a.epoch,
                        a.pid,
                        a.start() / 1_000_000,
                        a.end() / 1_000_000,
                        b.node,
                        b.epoch,
                        b.pid,
                        b.start() / 1_000_000
                    )),
                }
            }
        }
    }
    v.overlaps = overlaps;
    v.stale_starts = stale_starts;
    v.stale_resumptions = resumptions;
    v
}

/// When `a` (older) ran inside `b`'s interval only as a paused instance resuming with an older
/// epoch, for at most [`RESUME_BOUND_NS`]: how long it ran on.
fn paused_run(a: &Instance, b: &Instance) -> Option<u64> {
    if a.epoch? >= b.epoch? {
        return None;
    }
    // The first of a's lines inside b's interval must follow a silence, and every line in
    // it must come after that silence.
    let first_inside = a.times.iter().position(|t| *t >= b.start())?;
    let before = *a.times.get(first_inside.checked_sub(1)?)?;
    let silence = a.times[first_inside] - before;
    let ran = a.end() - a.times[first_inside];
    (silence >= PAUSE_NS && b.start() >= before && ran <= RESUME_BOUND_NS).then_some(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn lines(rows: &[(u64, &str, &str, &str, u32)]) -> String {
        rows.iter()
            .map(|(t, kind, node, epoch, pid)| {
                format!("{} {kind} kv {node} {epoch} {pid}\n", t * MS)
            })
            .collect()
    }

    #[test]
    fn a_service_handed_from_node_to_node_keeps_its_promises() {
        let v = check(&lines(&[
            (0, "start", "n1", "3", 10),
            (20, "alive", "n1", "3", 10),
            (40, "alive", "n1", "3", 10),
            (50, "start", "n2", "7", 20),
            (70, "alive", "n2", "7", 20),
            (71, "stop", "n2", "7", 20),
            (900, "start", "n2", "7", 21), // a restart on the same node, same placement
            (920, "alive", "n2", "7", 21),
        ]));
        assert!(v.ok(), "{v}");
        assert_eq!(v.instances.len(), 3);
        assert!(v.instances[1].stopped);
    }

    #[test]
    fn two_copies_at_once_are_an_overlap() {
        let v = check(&lines(&[
            (0, "start", "n1", "3", 10),
            (20, "alive", "n1", "3", 10),
            (30, "start", "n2", "7", 20),
            (40, "alive", "n1", "3", 10),
        ]));
        assert!(!v.ok());
        assert_eq!(v.overlaps.len(), 1, "{v}");
    }

    #[test]
    fn an_older_epoch_after_a_newer_one_is_a_stale_start() {
        let v = check(&lines(&[
            (0, "start", "n1", "7", 10),
            (10, "stop", "n1", "7", 10),
            (20, "start", "n2", "5", 20),
        ]));
        assert_eq!(v.stale_starts.len(), 1, "{v}");
        let v = check(&lines(&[
            (0, "start", "n1", "7", 10),
            (10, "stop", "n1", "7", 10),
            (20, "start", "n2", "7", 20),
        ]));
        assert_eq!(v.stale_starts.len(), 1, "one epoch on two nodes: {v}");
        let v = check(&lines(&[(0, "start", "n1", "-", 10)]));
        assert_eq!(v.stale_starts.len(), 1, "no epoch: {v}");
    }

    #[test]
    fn a_paused_instance_that_runs_on_briefly_is_told_apart_but_not_a_long_one() {
        let mut rows = vec![
            (0, "start", "n1", "3", 10),
            (20, "alive", "n1", "3", 10),
            (5000, "start", "n2", "9", 20),
            (5020, "alive", "n2", "9", 20),
            // n1 frozen from 20 ms to 9000 ms; it writes once on resuming, then is killed.
            (9000, "alive", "n1", "3", 10),
            (9010, "alive", "n2", "9", 20),
        ];
        let v = check(&lines(&rows));
        assert!(v.ok(), "{v}");
        assert_eq!(v.stale_resumptions.len(), 1, "{v}");
        // Running on for 3 s after resuming is no pause: an overlap.
        rows.push((12_000, "alive", "n1", "3", 10));
        let v = check(&lines(&rows));
        assert_eq!(v.overlaps.len(), 1, "{v}");
    }

    #[test]
    fn garbage_is_reported_not_skipped() {
        let v = check("12 alive kv n1 3 10\nnonsense\n");
        assert_eq!(v.bad_lines.len(), 2, "{v}");
        assert!(!v.ok());
    }
}
