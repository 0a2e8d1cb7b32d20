//! How long a service's own stops and starts take, learned per service from the runtime's
//! own stops and starts: a stop is SIGTERM until the cgroup is empty (a redis writing its
//! dump on SIGTERM takes its time), a start is the exec until the health check first
//! passes (a redis loading its append-only file answers `-LOADING` until done), or until
//! the process is up when it has no check. A migration's downtime counts them: an
//! intermittent move stops the service, and every move starts it on the target.
//!
//! The last [`KEPT`] of each are kept in `<state_root>/<name>.timings.json` (a service's
//! name has no dot, so the file is never a state directory or a staging copy), written at
//! each new figure, read when the service is added.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Figures kept of each kind.
const KEPT: usize = 8;

/// A stop or start longer than this is not a figure (a clock step, a stop that waited on
/// a stuck cgroup): seconds.
const LONGEST: f64 = 3600.0;

/// A service's last stops and starts here, seconds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceTimings {
    /// Stops: SIGTERM until the cgroup was empty (SIGKILL after the grace included).
    pub stops_s: VecDeque<f64>,
    /// Starts: exec until the first passing health check (or the process up, without one).
    pub starts_s: VecDeque<f64>,
}

fn push(v: &mut VecDeque<f64>, s: f64) {
    if s.is_finite() && (0.0..=LONGEST).contains(&s) {
        v.push_back(s);
        while v.len() > KEPT {
            v.pop_front();
        }
    }
}

/// The median of `v`, `None` when empty.
fn median(v: &VecDeque<f64>) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

impl ServiceTimings {
    /// Records a stop that took `s` seconds.
    pub fn record_stop(&mut self, s: f64) {
        push(&mut self.stops_s, s);
    }

    /// Records a start that took `s` seconds.
    pub fn record_start(&mut self, s: f64) {
        push(&mut self.starts_s, s);
    }

    /// What the next stop is expected to take: the median of the last ones; `None` before
    /// the first was measured.
    pub fn expected_stop_s(&self) -> Option<f64> {
        median(&self.stops_s)
    }

    /// What the next start is expected to take, likewise.
    pub fn expected_start_s(&self) -> Option<f64> {
        median(&self.starts_s)
    }

    /// Takes in `carried`, the figures of the service measured on the node it came from, just
    /// after its first start here: its stops there came after any here, its starts there
    /// before the one here.
    pub fn merge_carried(&mut self, carried: ServiceTimings) {
        let carried = carried.sanitized();
        let mut starts = carried.starts_s;
        starts.extend(self.starts_s.drain(..));
        let mut stops = std::mem::take(&mut self.stops_s);
        stops.extend(carried.stops_s);
        for s in starts {
            self.record_start(s);
        }
        for s in stops {
            self.record_stop(s);
        }
    }

    /// Only what a figure may be: finite, in range, at most `KEPT` of each (the newest).
    pub fn sanitized(self) -> ServiceTimings {
        let mut t = ServiceTimings::default();
        for s in self.stops_s {
            t.record_stop(s);
        }
        for s in self.starts_s {
            t.record_start(s);
        }
        t
    }

    /// Where service `name`'s figures are kept under `state_root`.
    pub fn path(state_root: &Path, name: &str) -> PathBuf {
        state_root.join(format!("{name}.timings.json"))
    }

    /// The figures kept at `path`; none (empty) when there is no file or it does not parse.
    pub fn load(path: &Path) -> ServiceTimings {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ServiceTimings>(&b).ok())
            .map(ServiceTimings::sanitized)
            .unwrap_or_default()
    }

    /// Writes the figures to `path` (a temporary file renamed over it).
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_few_are_kept_and_the_median_is_expected() {
        let mut t = ServiceTimings::default();
        assert_eq!(
            t.expected_stop_s(),
            None,
            "nothing measured: nothing assumed"
        );
        assert_eq!(t.expected_start_s(), None);
        for s in [0.9, 0.1, 0.8, f64::NAN, -1.0, 1e9] {
            t.record_stop(s);
        }
        assert_eq!(t.stops_s, [0.9, 0.1, 0.8], "nonsense is no figure");
        assert_eq!(t.expected_stop_s(), Some(0.8));
        for i in 0..20 {
            t.record_start(i as f64);
        }
        assert_eq!(t.starts_s.len(), KEPT);
        assert_eq!(t.starts_s.front(), Some(&12.0), "the newest are kept");
        assert_eq!(t.expected_start_s(), Some(15.5));
    }

    #[test]
    fn figures_from_the_source_join_the_targets() {
        let mut here = ServiceTimings::default();
        here.record_start(0.9);
        let mut there = ServiceTimings::default();
        there.record_stop(0.8);
        there.record_start(0.7);
        there.record_start(f64::NAN);
        here.merge_carried(there);
        assert_eq!(here.stops_s, [0.8]);
        assert_eq!(here.starts_s, [0.7, 0.9], "the start here is the newest");
    }

    #[test]
    fn figures_survive_a_restart_and_a_damaged_file_is_none() {
        let dir = std::env::temp_dir().join(format!("godwit-timings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = ServiceTimings::path(&dir, "redis");
        assert_eq!(ServiceTimings::load(&path), ServiceTimings::default());
        let mut t = ServiceTimings::default();
        t.record_stop(0.85);
        t.record_start(0.9);
        t.store(&path).unwrap();
        assert_eq!(ServiceTimings::load(&path), t);
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(ServiceTimings::load(&path), ServiceTimings::default());
        std::fs::write(&path, br#"{"stops_s":[1,2,3,4,5,6,7,8,9,10,-4]}"#).unwrap();
        assert_eq!(ServiceTimings::load(&path).stops_s.len(), KEPT);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
