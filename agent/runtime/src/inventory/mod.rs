//! The pattern-based inventory: the operator writes patterns for processes, containers, block
//! devices and network interfaces; the agent resolves them to the concrete set, keeps it
//! current, serves it (`/v1/inventory`, `godwit inventory`, metrics) and writes it to a file.
//!
//! # Code map
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | `[inventory]` patterns, the pure [`resolve`], the [`Inventory`] |
//! | `watch.rs` | the task that keeps it current: probe snapshots, inotify on cgroupfs, netlink uevents, service changes |
//!
//! # Invariants
//!
//! - **Resolution is pure**: [`resolve`] maps patterns and observed facts to an inventory
//!   (sorted, so equal inputs give equal output); all I/O is in `watch.rs`.
//! - **Bad patterns are configuration errors** naming the field (globs and regexes compile
//!   while the config is parsed).
//! - **Bounded metrics**: at most [`MAX_ITEMS_PER_PATTERN`] items of a pattern get a series.

pub mod watch;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use godwit_core::config::Glob;
use godwit_probe::model::ProcessSample;

/// Items of one pattern that get their own metric series.
pub const MAX_ITEMS_PER_PATTERN: usize = 50;

/// A regular expression, compiled while the config is parsed.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "String")]
pub struct Regex {
    text: String,
    #[serde(skip)]
    re: regex_lite::Regex,
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let re = regex_lite::Regex::new(&text)
            .map_err(|e| serde::de::Error::custom(format!("bad regex {text:?}: {e}")))?;
        Ok(Regex { text, re })
    }
}

impl From<Regex> for String {
    fn from(r: Regex) -> String {
        r.text
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Processes: every condition given must hold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessPattern {
    /// The pattern's name (a metric label).
    pub name: String,
    /// Glob on the command name.
    #[serde(default)]
    pub comm: Option<Glob>,
    /// Glob on the command line (arguments joined by spaces).
    #[serde(default)]
    pub cmdline: Option<Glob>,
    /// Regular expression searched in the command line.
    #[serde(default)]
    pub regex: Option<Regex>,
    /// User name or numeric uid.
    #[serde(default)]
    pub user: Option<String>,
}

/// Containers: by runtime and name, or by cgroup path.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerPattern {
    /// The pattern's name.
    pub name: String,
    /// `docker`, `containerd`, `crio`, `podman`, `kubepods`, `systemd`, `godwit`, `cgroup`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Glob on the container's name.
    #[serde(default)]
    pub container: Option<Glob>,
    /// Glob on the cgroup path (from the v2 root, starting with `/`).
    #[serde(default)]
    pub cgroup: Option<Glob>,
}

/// Block devices by name (`/sys/block`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DevicePattern {
    /// The pattern's name.
    pub name: String,
    /// Glob on the device name (`sd*`, `nvme*`, `loop*`).
    pub block: Glob,
}

/// Network interfaces by name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterfacePattern {
    /// The pattern's name.
    pub name: String,
    /// Glob on the interface name.
    pub iface: Glob,
}

/// `[inventory]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Where the resolved inventory is written (JSON); `<data_dir>/inventory.json` when absent.
    pub file: Option<std::path::PathBuf>,
    /// Process patterns.
    pub process: Vec<ProcessPattern>,
    /// Container patterns.
    pub container: Vec<ContainerPattern>,
    /// Block device patterns.
    pub device: Vec<DevicePattern>,
    /// Network interface patterns.
    pub interface: Vec<InterfacePattern>,
}

impl InventoryConfig {
    /// Checks what parsing cannot: each pattern has a name and at least one condition, and
    /// names are unique per kind.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        let check = |kind: &str,
                     i: usize,
                     name: &str,
                     any: bool,
                     seen: &mut std::collections::BTreeSet<(String, String)>| {
            if name.is_empty() {
                return Err(format!("inventory.{kind}[{i}].name must not be empty"));
            }
            if !any {
                return Err(format!("inventory.{kind}[{i}] ({name}) has no condition"));
            }
            if !seen.insert((kind.to_string(), name.to_string())) {
                return Err(format!("inventory.{kind}[{i}].name {name:?} is used twice"));
            }
            Ok(())
        };
        for (i, p) in self.process.iter().enumerate() {
            let any =
                p.comm.is_some() || p.cmdline.is_some() || p.regex.is_some() || p.user.is_some();
            check("process", i, &p.name, any, &mut seen)?;
        }
        for (i, p) in self.container.iter().enumerate() {
            let any = p.runtime.is_some() || p.container.is_some() || p.cgroup.is_some();
            check("container", i, &p.name, any, &mut seen)?;
            if let Some(r) = &p.runtime {
                const KNOWN: [&str; 8] = [
                    "docker",
                    "containerd",
                    "crio",
                    "podman",
                    "kubepods",
                    "systemd",
                    "godwit",
                    "cgroup",
                ];
                if !KNOWN.contains(&r.as_str()) {
                    return Err(format!(
                        "inventory.container[{i}].runtime {r:?}: one of {}",
                        KNOWN.join(", ")
                    ));
                }
            }
        }
        for (i, p) in self.device.iter().enumerate() {
            check("device", i, &p.name, true, &mut seen)?;
        }
        for (i, p) in self.interface.iter().enumerate() {
            check("interface", i, &p.name, true, &mut seen)?;
        }
        Ok(())
    }

    /// True when there is nothing to resolve.
    pub fn is_empty(&self) -> bool {
        self.process.is_empty()
            && self.container.is_empty()
            && self.device.is_empty()
            && self.interface.is_empty()
    }
}

/// A process as the inventory needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessItem {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Command line.
    pub cmdline: String,
    /// Real user id.
    pub uid: Option<u32>,
    /// Its cgroup.
    pub cgroup: String,
}

/// A cgroup that is a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerItem {
    /// Runtime.
    pub runtime: String,
    /// Name.
    pub name: String,
    /// Cgroup path from the v2 root.
    pub cgroup: String,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceItem {
    /// Name in `/sys/block`.
    pub name: String,
    /// `major:minor`.
    pub dev: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceItem {
    /// Name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// `up`, `down`, ...
    pub operstate: String,
}

/// What exists now, as observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Live processes.
    pub processes: Vec<ProcessItem>,
    /// Cgroups (paths from the v2 root).
    pub cgroups: Vec<String>,
    /// Block devices.
    pub devices: Vec<DeviceItem>,
    /// Network interfaces.
    pub interfaces: Vec<InterfaceItem>,
    /// Managed services: name and cgroup directory.
    pub services: Vec<(String, String)>,
}

/// One pattern and what it matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matched<T> {
    /// The pattern's name.
    pub pattern: String,
    /// The items, sorted.
    pub items: Vec<T>,
}

/// The resolved inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Inventory {
    /// When it was resolved, milliseconds since the Unix epoch.
    pub resolved_at_unix_ms: u64,
    /// Process patterns.
    pub processes: Vec<Matched<ProcessItem>>,
    /// Container patterns.
    pub containers: Vec<Matched<ContainerItem>>,
    /// Device patterns.
    pub devices: Vec<Matched<DeviceItem>>,
    /// Interface patterns.
    pub interfaces: Vec<Matched<InterfaceItem>>,
    /// Managed services on this node (every one, no pattern needed).
    pub services: Vec<BTreeMap<String, String>>,
}

impl Inventory {
    /// The same inventory ignoring when it was resolved.
    pub fn same_as(&self, other: &Inventory) -> bool {
        self.processes == other.processes
            && self.containers == other.containers
            && self.devices == other.devices
            && self.interfaces == other.interfaces
            && self.services == other.services
    }
}

/// Users by name, for `user` patterns (`/etc/passwd` lines `name:x:uid:...`).
pub fn parse_passwd(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((name.to_string(), uid))
        })
        .collect()
}

fn process_matches(p: &ProcessPattern, item: &ProcessItem, users: &BTreeMap<String, u32>) -> bool {
    p.comm.as_ref().is_none_or(|g| g.is_match(&item.comm))
        && p.cmdline.as_ref().is_none_or(|g| g.is_match(&item.cmdline))
        && p.regex
            .as_ref()
            .is_none_or(|r| r.re.is_match(&item.cmdline))
        && p.user.as_ref().is_none_or(|u| {
            let want = u.parse::<u32>().ok().or_else(|| users.get(u).copied());
            want.is_some() && item.uid == want
        })
}

/// Resolves the patterns against what was observed. Pure.
pub fn resolve(
    cfg: &InventoryConfig,
    seen: &Observed,
    users: &BTreeMap<String, u32>,
    now_ms: u64,
) -> Inventory {
    let containers: Vec<ContainerItem> = seen
        .cgroups
        .iter()
        .filter_map(|path| {
            let info = godwit_probe::container::classify(path)?;
            // The container's own cgroup, not every cgroup below it.
            (godwit_probe::container::container_root(path) == Some(path.as_str())).then(|| {
                ContainerItem {
                    runtime: serde_json::to_value(info.runtime)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    name: info.name,
                    cgroup: path.clone(),
                }
            })
        })
        .collect();
    let mut inv = Inventory {
        resolved_at_unix_ms: now_ms,
        ..Inventory::default()
    };
    for p in &cfg.process {
        let mut items: Vec<ProcessItem> = seen
            .processes
            .iter()
            .filter(|i| process_matches(p, i, users))
            .cloned()
            .collect();
        items.sort_by_key(|i| i.pid);
        inv.processes.push(Matched {
            pattern: p.name.clone(),
            items,
        });
    }
    for p in &cfg.container {
        let mut items: Vec<ContainerItem> = containers
            .iter()
            .filter(|c| {
                p.runtime.as_ref().is_none_or(|r| *r == c.runtime)
                    && p.container.as_ref().is_none_or(|g| g.is_match(&c.name))
                    && p.cgroup.as_ref().is_none_or(|g| g.is_match(&c.cgroup))
            })
            .cloned()
            .collect();
        // A cgroup pattern also matches plain cgroups that no runtime claims.
        if let (Some(g), None, None) = (&p.cgroup, &p.runtime, &p.container) {
            for path in &seen.cgroups {
                if g.is_match(path) && !items.iter().any(|c| &c.cgroup == path) {
                    items.push(ContainerItem {
                        runtime: "cgroup".into(),
                        name: path.rsplit('/').next().unwrap_or(path).to_string(),
                        cgroup: path.clone(),
                    });
                }
            }
        }
        items.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        inv.containers.push(Matched {
            pattern: p.name.clone(),
            items,
        });
    }
    for p in &cfg.device {
        let mut items: Vec<DeviceItem> = seen
            .devices
            .iter()
            .filter(|d| p.block.is_match(&d.name))
            .cloned()
            .collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        inv.devices.push(Matched {
            pattern: p.name.clone(),
            items,
        });
    }
    for p in &cfg.interface {
        let mut items: Vec<InterfaceItem> = seen
            .interfaces
            .iter()
            .filter(|i| p.iface.is_match(&i.name))
            .cloned()
            .collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        inv.interfaces.push(Matched {
            pattern: p.name.clone(),
            items,
        });
    }
    let mut services: Vec<BTreeMap<String, String>> = seen
        .services
        .iter()
        .map(|(name, cgroup)| {
            BTreeMap::from([
                ("name".to_string(), name.clone()),
                ("cgroup".to_string(), cgroup.clone()),
            ])
        })
        .collect();
    services.sort();
    inv.services = services;
    inv
}

/// A process from a probe sample.
pub fn process_item(p: &ProcessSample, uid: Option<u32>) -> ProcessItem {
    ProcessItem {
        pid: p.pid,
        comm: p.comm.clone(),
        cmdline: p.cmdline.clone(),
        uid,
        cgroup: p.cgroup_path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> InventoryConfig {
        toml::from_str(text).unwrap()
    }

    fn proc_item(pid: u32, comm: &str, cmdline: &str, uid: u32) -> ProcessItem {
        ProcessItem {
            pid,
            comm: comm.into(),
            cmdline: cmdline.into(),
            uid: Some(uid),
            cgroup: "/".into(),
        }
    }

    #[test]
    fn patterns_resolve_to_the_matching_items() {
        let c = cfg(r#"
            [[process]]
            name = "web"
            comm = "nginx*"
            [[process]]
            name = "workers"
            regex = "--worker(s)?=\\d+"
            user = "www-data"
            [[container]]
            name = "dbs"
            runtime = "docker"
            [[container]]
            name = "units"
            cgroup = "/system.slice/*.service"
            [[device]]
            name = "loops"
            block = "loop*"
            [[interface]]
            name = "uplinks"
            iface = "eth*"
        "#);
        c.validate().unwrap();
        let id = "a".repeat(64);
        let seen = Observed {
            processes: vec![
                proc_item(10, "nginx", "nginx -g daemon off;", 0),
                proc_item(11, "nginx-worker", "nginx: worker", 33),
                proc_item(12, "app", "app --workers=4", 33),
                proc_item(13, "app", "app --workers=4", 0),
                proc_item(14, "sshd", "sshd", 0),
            ],
            cgroups: vec![
                "/".into(),
                format!("/system.slice/docker-{id}.scope"),
                format!("/system.slice/docker-{id}.scope/sub"),
                "/system.slice/ssh.service".into(),
                "/user.slice".into(),
            ],
            devices: vec![
                DeviceItem {
                    name: "loop0".into(),
                    dev: "7:0".into(),
                    size_bytes: 1 << 20,
                },
                DeviceItem {
                    name: "vda".into(),
                    dev: "254:0".into(),
                    size_bytes: 1 << 30,
                },
            ],
            interfaces: vec![
                InterfaceItem {
                    name: "eth0".into(),
                    index: 2,
                    operstate: "up".into(),
                },
                InterfaceItem {
                    name: "lo".into(),
                    index: 1,
                    operstate: "unknown".into(),
                },
            ],
            services: vec![("kv".into(), "/sys/fs/cgroup/godwit.slice/kv.service".into())],
        };
        let users = parse_passwd("root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n");
        let inv = resolve(&c, &seen, &users, 1);
        let pids = |i: usize| {
            inv.processes[i]
                .items
                .iter()
                .map(|p| p.pid)
                .collect::<Vec<_>>()
        };
        assert_eq!(pids(0), vec![10, 11]);
        assert_eq!(pids(1), vec![12], "regex and user both hold");
        assert_eq!(
            inv.containers[0].items.len(),
            1,
            "the container, not its sub-cgroup"
        );
        assert_eq!(inv.containers[0].items[0].name, "a".repeat(12));
        assert_eq!(inv.containers[1].items.len(), 1);
        assert_eq!(
            inv.containers[1].items[0].cgroup,
            "/system.slice/ssh.service"
        );
        assert_eq!(inv.devices[0].items.len(), 1);
        assert_eq!(inv.interfaces[0].items[0].name, "eth0");
        assert_eq!(inv.services.len(), 1);
        // Same input, same output.
        assert!(resolve(&c, &seen, &users, 2).same_as(&inv));
    }

    #[test]
    fn malformed_patterns_are_refused_naming_the_field() {
        for (text, want) in [
            ("[[process]]\nname = \"x\"\ncomm = \"[\"", "comm"),
            ("[[process]]\nname = \"x\"\nregex = \"(\"", "regex"),
            ("[[process]]\nname = \"x\"\ncmd = \"y\"", "cmd"),
        ] {
            let e = toml::from_str::<InventoryConfig>(text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let no_condition = cfg("[[process]]\nname = \"x\"");
        assert!(no_condition
            .validate()
            .unwrap_err()
            .contains("inventory.process[0]"));
        let bad_runtime = cfg("[[container]]\nname = \"x\"\nruntime = \"lxc\"");
        assert!(bad_runtime.validate().unwrap_err().contains("runtime"));
    }
}
