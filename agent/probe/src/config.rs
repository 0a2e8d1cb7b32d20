//! The `[probe]` and `[energy]` sections.

use std::path::PathBuf;

use godwit_core::config::{Bounded, Watts};
use serde::{Deserialize, Serialize};

/// Which source the probe uses.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// BPF when it loads, procfs/cgroupfs otherwise.
    #[default]
    Auto,
    /// BPF or nothing: the agent exits if the programs cannot load.
    Ebpf,
    /// procfs/cgroupfs only.
    Procfs,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub mode: ProbeMode,
    /// Sampling interval.
    pub interval_ms: Bounded<100, 60_000>,
    /// How long ended entities are remembered.
    pub grace_ms: Bounded<0, 3_600_000>,
    /// Collect per-program BPF run time.
    pub bpf_stats: bool,
    /// Root of procfs (tests point it elsewhere).
    pub proc_root: PathBuf,
    /// Root of sysfs.
    pub sys_root: PathBuf,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            mode: ProbeMode::Auto,
            interval_ms: Bounded(1000),
            grace_ms: Bounded(10_000),
            bpf_stats: true,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

impl ProbeConfig {
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interval_ms.0)
    }
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.grace_ms.0)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// Modelled power at 0% CPU.
    pub idle_watts: Watts,
    /// Modelled power at 100% CPU.
    pub max_watts: Watts,
    /// Where RAPL counters are looked for.
    pub powercap_root: PathBuf,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            idle_watts: Watts(40.0),
            max_watts: Watts(120.0),
            powercap_root: PathBuf::from("/sys/class/powercap"),
        }
    }
}

impl EnergyConfig {
    /// Checks across fields (single fields are checked while parsing).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_watts.0 < self.idle_watts.0 {
            return Err(format!(
                "energy.max_watts ({}) is below energy.idle_watts ({})",
                self.max_watts.0, self.idle_watts.0
            ));
        }
        Ok(())
    }
}
