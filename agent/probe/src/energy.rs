//! Node power and energy: Intel RAPL counters through powercap when the host has them, a
//! linear model from CPU utilisation otherwise, and Kepler-style attribution of node power
//! to processes and containers by CPU share.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::model::Source;

const MICROJOULES_PER_JOULE: f64 = 1_000_000.0;
const RAPL_ZONE_PREFIX: &str = "intel-rapl:";

/// The top-level RAPL package zones under a powercap root (normally `/sys/class/powercap`),
/// read together as one energy counter.
#[derive(Debug)]
pub struct Rapl {
    zones: Vec<RaplZone>,
}

#[derive(Debug)]
struct RaplZone {
    energy_path: PathBuf,
    /// The counter wraps to 0 after this value.
    max_range_uj: u64,
    last_uj: Option<u64>,
    accumulated_uj: u64,
}

impl Rapl {
    /// Finds the zones `intel-rapl:N` whose `energy_uj` and `max_energy_range_uj` can be read.
    /// Sub-zones (`intel-rapl:N:M`: cores, uncore, dram) are skipped because their energy is
    /// part of the package's, and so is a `psys` zone, which covers the packages too.
    /// `None` when no zone qualifies (no RAPL, or `energy_uj` readable by root only).
    pub fn discover(powercap_root: &Path) -> Option<Rapl> {
        let mut zones: Vec<(u32, RaplZone)> = fs::read_dir(powercap_root)
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name();
                let index = name.to_str()?.strip_prefix(RAPL_ZONE_PREFIX)?;
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let index: u32 = index.parse().ok()?;
                let dir = entry.path();
                let zone_name = fs::read_to_string(dir.join("name")).unwrap_or_default();
                if zone_name.trim() == "psys" {
                    return None;
                }
                let energy_path = dir.join("energy_uj");
                read_uj(&energy_path).ok()?;
                let max_range_uj = read_uj(&dir.join("max_energy_range_uj")).ok()?;
                Some((
                    index,
                    RaplZone {
                        energy_path,
                        max_range_uj,
                        last_uj: None,
                        accumulated_uj: 0,
                    },
                ))
            })
            .collect();
        if zones.is_empty() {
            return None;
        }
        zones.sort_by_key(|(index, _)| *index);
        Some(Rapl {
            zones: zones.into_iter().map(|(_, zone)| zone).collect(),
        })
    }

    /// Energy used by all zones since the first call, in microjoules (so the first call
    /// returns 0). A zone counter that went down wrapped around at its
    /// `max_energy_range_uj`. If any zone cannot be read nothing is updated.
    pub fn read_total_uj(&mut self) -> io::Result<u64> {
        let readings = self
            .zones
            .iter()
            .map(|zone| read_uj(&zone.energy_path))
            .collect::<io::Result<Vec<u64>>>()?;
        let mut total = 0u64;
        for (zone, now) in self.zones.iter_mut().zip(readings) {
            if let Some(prev) = zone.last_uj {
                let delta = if now >= prev {
                    now - prev
                } else {
                    zone.max_range_uj.saturating_sub(prev).saturating_add(now)
                };
                zone.accumulated_uj = zone.accumulated_uj.saturating_add(delta);
            }
            zone.last_uj = Some(now);
            total = total.saturating_add(zone.accumulated_uj);
        }
        Ok(total)
    }
}

/// Node power as a straight line from idle to fully busy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearModel {
    pub idle_watts: f64,
    pub max_watts: f64,
}

impl LinearModel {
    /// Power at CPU utilisation `util`, clamped to [0, 1] (NaN counts as 0).
    pub fn watts(&self, util: f64) -> f64 {
        let util = if util.is_nan() {
            0.0
        } else {
            util.clamp(0.0, 1.0)
        };
        self.idle_watts + (self.max_watts - self.idle_watts) * util
    }
}

/// One power sample of the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerReading {
    /// Average power over the last interval.
    pub watts: f64,
    /// Energy since the meter was created; never decreases.
    pub joules_total: f64,
    /// [`Source::Rapl`] or [`Source::Model`].
    pub source: Source,
}

/// Node power from RAPL when the host has it, from a [`LinearModel`] otherwise.
#[derive(Debug)]
pub struct PowerMeter {
    model: LinearModel,
    rapl: Option<RaplMeter>,
    joules_total: f64,
}

#[derive(Debug)]
struct RaplMeter {
    rapl: Rapl,
    last_total_uj: Option<u64>,
}

impl PowerMeter {
    /// Uses RAPL if [`Rapl::discover`] finds zones under `powercap_root`, else `model`.
    pub fn new(powercap_root: &Path, model: LinearModel) -> PowerMeter {
        PowerMeter {
            model,
            rapl: Rapl::discover(powercap_root).map(|rapl| RaplMeter {
                rapl,
                last_total_uj: None,
            }),
            joules_total: 0.0,
        }
    }

    /// Where the next reading will come from.
    pub fn source(&self) -> Source {
        if self.rapl.is_some() {
            Source::Rapl
        } else {
            Source::Model
        }
    }

    /// Power over the last `dt_seconds`. The model uses `cpu_utilization` (0 to 1); RAPL
    /// ignores it and reports 0 W on its first sample, which has no earlier reading to
    /// difference against. If RAPL cannot be read, the meter warns once and uses the model
    /// from then on.
    pub fn sample(&mut self, dt_seconds: f64, cpu_utilization: f64) -> PowerReading {
        let dt = if dt_seconds.is_finite() && dt_seconds > 0.0 {
            dt_seconds
        } else {
            0.0
        };
        if let Some(meter) = &mut self.rapl {
            match meter.rapl.read_total_uj() {
                Ok(total_uj) => {
                    let joules = meter.last_total_uj.map_or(0.0, |prev| {
                        total_uj.saturating_sub(prev) as f64 / MICROJOULES_PER_JOULE
                    });
                    meter.last_total_uj = Some(total_uj);
                    self.joules_total += joules;
                    return PowerReading {
                        watts: if dt > 0.0 { joules / dt } else { 0.0 },
                        joules_total: self.joules_total,
                        source: Source::Rapl,
                    };
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read rapl, using the power model from now on");
                    self.rapl = None;
                }
            }
        }
        let watts = self.model.watts(cpu_utilization);
        self.joules_total += watts.max(0.0) * dt;
        PowerReading {
            watts,
            joules_total: self.joules_total,
            source: Source::Model,
        }
    }
}

/// Splits node power among entities by CPU share, as Kepler does.
///
/// `cpu_shares[i]` is entity i's CPU seconds in the interval divided by the node's busy CPU
/// seconds in the same interval. The dynamic power (`node_watts - idle_watts`, floored at 0)
/// is split by share, and so is the idle power: an entity that used a quarter of the busy CPU
/// time also carries a quarter of the idle power, so the attributed figures of entities that
/// cover all CPU activity add up to the node power. (The other common choice, splitting idle
/// power evenly or not at all, either charges entities that did nothing or leaves node power
/// unaccounted for.) The idle part is capped at `node_watts`, so a node measured below its
/// configured idle power is never over-attributed.
///
/// Negative and NaN shares count as 0. Shares summing to more than 1 (sampling skew between
/// per-entity and node counters) are scaled down to sum to 1. All shares 0: everyone gets 0.
pub fn attribute(node_watts: f64, idle_watts: f64, cpu_shares: &[f64]) -> Vec<f64> {
    let node = non_negative(node_watts);
    let idle = non_negative(idle_watts).min(node);
    let dynamic = node - idle;
    let sum: f64 = cpu_shares.iter().copied().map(non_negative).sum();
    let scale = if sum > 1.0 { 1.0 / sum } else { 1.0 };
    cpu_shares
        .iter()
        .map(|&share| {
            let share = non_negative(share) * scale;
            share * dynamic + share * idle
        })
        .collect()
}

/// `x` if it is a finite positive number, else 0.
fn non_negative(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

fn read_uj(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "malformed {}: not a number: {:?}",
                path.display(),
                text.trim()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A powercap tree: package zones 0 and 1, a sub-zone, a psys zone, an mmio zone and a
    /// zone without `max_energy_range_uj`.
    fn powercap(zone0_uj: u64, zone1_uj: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [
            ("intel-rapl:0/name", "package-0".to_owned()),
            ("intel-rapl:0/energy_uj", format!("{zone0_uj}\n")),
            (
                "intel-rapl:0/max_energy_range_uj",
                "262143328850\n".to_owned(),
            ),
            ("intel-rapl:0:0/name", "core".to_owned()),
            ("intel-rapl:0:0/energy_uj", "5000000\n".to_owned()),
            (
                "intel-rapl:0:0/max_energy_range_uj",
                "262143328850\n".to_owned(),
            ),
            ("intel-rapl:1/name", "package-1".to_owned()),
            ("intel-rapl:1/energy_uj", format!("{zone1_uj}\n")),
            (
                "intel-rapl:1/max_energy_range_uj",
                "65532610987\n".to_owned(),
            ),
            ("intel-rapl:2/name", "psys".to_owned()),
            ("intel-rapl:2/energy_uj", "1\n".to_owned()),
            ("intel-rapl:2/max_energy_range_uj", "100\n".to_owned()),
            ("intel-rapl-mmio:0/energy_uj", "1\n".to_owned()),
            ("intel-rapl-mmio:0/max_energy_range_uj", "100\n".to_owned()),
            ("intel-rapl:3/energy_uj", "1\n".to_owned()),
        ];
        for (rel, contents) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        }
        dir
    }

    fn set_energy(root: &Path, zone: &str, uj: u64) {
        fs::write(root.join(zone).join("energy_uj"), format!("{uj}\n")).expect("write");
    }

    #[test]
    fn rapl_discovers_package_zones_only() {
        let root = powercap(100, 200);
        let rapl = Rapl::discover(root.path()).expect("rapl");
        let paths: Vec<PathBuf> = rapl.zones.iter().map(|z| z.energy_path.clone()).collect();
        assert_eq!(
            paths,
            vec![
                root.path().join("intel-rapl:0/energy_uj"),
                root.path().join("intel-rapl:1/energy_uj"),
            ]
        );
        assert!(Rapl::discover(Path::new("/nonexistent/powercap")).is_none());
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(Rapl::discover(empty.path()).is_none());
    }

    #[test]
    fn rapl_total_handles_wrap_around() {
        let max0 = 262_143_328_850;
        let root = powercap(max0 - 1_000_000, 40_000_000);
        let mut rapl = Rapl::discover(root.path()).expect("rapl");
        // (zone 0, zone 1, expected total since the first read)
        let steps = [
            (max0 - 1_000_000, 40_000_000, 0),
            // zone 0 wraps: 1 J up to the top, then 2 J from 0; zone 1 adds 7 J.
            (2_000_000, 47_000_000, 10_000_000),
            // no change
            (2_000_000, 47_000_000, 10_000_000),
            (2_500_000, 47_500_000, 11_000_000),
        ];
        for (zone0, zone1, want) in steps {
            set_energy(root.path(), "intel-rapl:0", zone0);
            set_energy(root.path(), "intel-rapl:1", zone1);
            assert_eq!(rapl.read_total_uj().expect("read"), want, "{zone0} {zone1}");
        }

        fs::write(root.path().join("intel-rapl:1/energy_uj"), "garbage\n").expect("write");
        let err = rapl.read_total_uj().expect_err("garbage");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("intel-rapl:1/energy_uj"), "{err}");
    }

    #[test]
    fn linear_model() {
        let model = LinearModel {
            idle_watts: 10.0,
            max_watts: 30.0,
        };
        let cases = [
            (0.0, 10.0),
            (0.25, 15.0),
            (1.0, 30.0),
            (1.5, 30.0),
            (-0.5, 10.0),
            (f64::NAN, 10.0),
        ];
        for (util, want) in cases {
            assert_eq!(model.watts(util), want, "{util}");
        }
    }

    #[test]
    fn meter_uses_rapl_then_falls_back_to_the_model() {
        let max0 = 262_143_328_850;
        let root = powercap(max0 - 1_000_000, 40_000_000);
        let model = LinearModel {
            idle_watts: 10.0,
            max_watts: 30.0,
        };
        let mut meter = PowerMeter::new(root.path(), model);
        assert_eq!(meter.source(), Source::Rapl);

        let reading = |watts, joules_total, source| PowerReading {
            watts,
            joules_total,
            source,
        };
        // First sample: no delta yet.
        assert_eq!(meter.sample(1.0, 0.5), reading(0.0, 0.0, Source::Rapl));
        // 10 J over 2 s, across a wrap of zone 0.
        set_energy(root.path(), "intel-rapl:0", 2_000_000);
        set_energy(root.path(), "intel-rapl:1", 47_000_000);
        assert_eq!(meter.sample(2.0, 0.5), reading(5.0, 10.0, Source::Rapl));
        // RAPL disappears: the model takes over for good.
        fs::remove_file(root.path().join("intel-rapl:1/energy_uj")).expect("rm");
        assert_eq!(meter.sample(1.0, 0.5), reading(20.0, 30.0, Source::Model));
        assert_eq!(meter.source(), Source::Model);
        set_energy(root.path(), "intel-rapl:1", 48_000_000);
        assert_eq!(meter.sample(0.5, 1.0), reading(30.0, 45.0, Source::Model));
    }

    #[test]
    fn meter_without_rapl_uses_the_model() {
        let model = LinearModel {
            idle_watts: 20.0,
            max_watts: 100.0,
        };
        let mut meter = PowerMeter::new(Path::new("/nonexistent/powercap"), model);
        assert_eq!(meter.source(), Source::Model);
        let steps = [
            (1.0, 0.0, 20.0, 20.0),
            (2.0, 0.5, 60.0, 140.0),
            (0.0, 1.0, 100.0, 140.0),
            (-1.0, 1.0, 100.0, 140.0),
            (f64::NAN, 1.0, 100.0, 140.0),
            (0.5, 1.0, 100.0, 190.0),
        ];
        for (dt, util, watts, joules_total) in steps {
            let got = meter.sample(dt, util);
            assert_eq!(
                got,
                PowerReading {
                    watts,
                    joules_total,
                    source: Source::Model,
                },
                "dt={dt} util={util}"
            );
        }
    }

    #[test]
    fn attribution() {
        // (label, node watts, idle watts, shares, expected watts)
        type Case<'a> = (&'a str, f64, f64, &'a [f64], &'a [f64]);
        let cases: [Case<'_>; 8] = [
            (
                "shares sum to 1",
                100.0,
                40.0,
                &[0.5, 0.25, 0.25],
                &[50.0, 25.0, 25.0],
            ),
            ("partial coverage", 100.0, 40.0, &[0.5], &[50.0]),
            ("all zero", 100.0, 40.0, &[0.0, 0.0], &[0.0, 0.0]),
            ("empty", 100.0, 40.0, &[], &[]),
            ("node below idle", 30.0, 40.0, &[0.5, 0.5], &[15.0, 15.0]),
            (
                "bad shares",
                100.0,
                40.0,
                &[-0.5, f64::NAN, 0.5],
                &[0.0, 0.0, 50.0],
            ),
            (
                "shares over 1 are scaled",
                100.0,
                20.0,
                &[1.5, 0.5],
                &[75.0, 25.0],
            ),
            ("negative node power", -5.0, 40.0, &[1.0], &[0.0]),
        ];
        for (label, node, idle, shares, want) in cases {
            assert_eq!(attribute(node, idle, shares), want, "{label}");
        }
    }

    #[test]
    fn attribution_adds_up_to_node_power() {
        let shares = [0.1, 0.2, 0.3, 0.4];
        let total: f64 = attribute(87.5, 31.25, &shares).iter().sum();
        assert!((total - 87.5).abs() < 1e-9, "{total}");
    }
}
