//! What a run owns, recorded on disk before it is created, so that a run whose process died can
//! still be torn down (`godwit-cluster down --all`).
//!
//! Layout under [`STATE_ROOT`]:
//! - `runs/<run>/state`: one `key value` line per fact (see [`RunState::render`]);
//! - `subnets/<index>`: the claim of one /24 of 198.18.0.0/15, holding the run id. Claims are
//!   taken with `O_EXCL`, so two runs never share a subnet.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{cgroup, net};

/// Root of the harness's state; `/run` is a tmpfs, so nothing survives a reboot, and neither do
/// namespaces.
pub const STATE_ROOT: &str = "/run/godwit-cluster";
/// Every namespace of the harness is named `gw-<run>-<node or hub>`.
pub const NS_PREFIX: &str = "gw-";
/// The root-namespace end of a run's uplink veth is `gwh<subnet index>`.
pub const UPLINK_PREFIX: &str = "gwh";
/// Number of /24 subnets in 198.18.0.0/15.
pub(super) const SUBNETS: u16 = 512;

/// The /24 of subnet `index` (0 to 511) inside 198.18.0.0/15: `198.(18 + index / 256).(index %
/// 256).host`.
pub fn subnet_addr(index: u16, host: u8) -> Ipv4Addr {
    assert!(
        index < SUBNETS,
        "subnet index {index} outside 198.18.0.0/15"
    );
    Ipv4Addr::new(198, 18 + (index / 256) as u8, (index % 256) as u8, host)
}

/// Who keeps a run alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A process (a test): the run is stale once it is gone. `start` is its start time in clock
    /// ticks since boot, so a recycled pid is not mistaken for it.
    Process { pid: u32, start: u64 },
    /// Left running on purpose (`godwit-cluster up`) until `down` removes it.
    Detached,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner::Process {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the owner process still runs (always true for a detached run).
    pub fn alive(&self) -> bool {
        match self {
            Owner::Process { pid, start } => start_time(*pid) == Some(*start),
            Owner::Detached => true,
        }
    }
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces; fields after it are counted from its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process with this pid exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid part of a run id `<pid>-<counter>`.
pub(super) fn run_pid(run: &str) -> Option<u32> {
    run.split('-').next()?.parse().ok()
}

/// The run id inside a namespace name `gw-<run>-<suffix>`.
pub(super) fn run_of_netns(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    let (run, _suffix) = rest.rsplit_once('-')?;
    run_pid(run).map(|_| run)
}

/// Everything one run owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    pub run: String,
    pub owner: Owner,
    /// Index of the run's /24 (see [`subnet_addr`]).
    pub subnet: u16,
    /// Name of the uplink veth's end in the root namespace.
    pub uplink: String,
    /// Configs, logs and data directories of the agents.
    pub work_dir: PathBuf,
    /// The run's cgroup directory (its nodes' cgroups are its children).
    pub cgroup: PathBuf,
    /// Every namespace, hub first.
    pub namespaces: Vec<String>,
    /// Node name and pid of each agent last started (informational: teardown kills by cgroup).
    pub agents: Vec<(String, u32)>,
}

impl RunState {
    /// The state directory of run `run`.
    pub fn dir_of(run: &str) -> PathBuf {
        Path::new(STATE_ROOT).join("runs").join(run)
    }

    /// The text of the state file.
    pub fn render(&self) -> String {
        let mut s = format!("run {}\n", self.run);
        match &self.owner {
            Owner::Process { pid, start } => s += &format!("owner {pid} {start}\n"),
            Owner::Detached => s += "owner detached\n",
        }
        s += &format!("subnet {}\n", self.subnet);
        s += &format!("uplink {}\n", self.uplink);
        s += &format!("work_dir {}\n", self.work_dir.display());
        s += &format!("cgroup {}\n", self.cgroup.display());
        for ns in &self.namespaces {
            s += &format!("netns {ns}\n");
        }
        for (node, pid) in &self.agents {
            s += &format!("agent {node} {pid}\n");
        }
        s
    }

    /// Parses a state file.
    pub fn parse(text: &str) -> Result<RunState> {
        let mut st = RunState {
            run: String::new(),
            owner: Owner::Detached,
            subnet: u16::MAX,
            uplink: String::new(),
            work_dir: PathBuf::new(),
            cgroup: PathBuf::new(),
            namespaces: Vec::new(),
            agents: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "run" => st.run = value.to_string(),
                "owner" if value == "detached" => st.owner = Owner::Detached,
                "owner" => {
                    let (pid, start) = value.split_once(' ').context("owner PID START")?;
                    st.owner = Owner::Process {
                        pid: pid.parse().context("owner pid")?,
                        start: start.parse().context("owner start time")?,
                    };
                }
                "subnet" => st.subnet = value.parse().context("subnet index")?,
                "uplink" => st.uplink = value.to_string(),
                "work_dir" => st.work_dir = PathBuf::from(value),
                "cgroup" => st.cgroup = PathBuf::from(value),
                "netns" => st.namespaces.push(value.to_string()),
                "agent" => {
                    let (node, pid) = value.split_once(' ').context("agent NODE PID")?;
                    st.agents
                        .push((node.to_string(), pid.parse().context("agent pid")?));
                }
                other => bail!("unknown key {other:?} in state file"),
            }
        }
        if st.run.is_empty() || st.subnet >= SUBNETS {
            bail!("state file lacks a run id or a valid subnet");
        }
        Ok(st)
    }

    /// Writes the state file atomically (write, then rename).
    pub fn save(&self) -> Result<()> {
        let dir = RunState::dir_of(&self.run);
        let tmp = dir.join("state.tmp");
        std::fs::write(&tmp, self.render()).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("state")).context("rename state file")?;
        Ok(())
    }

    /// Reads run `run`'s state file.
    pub fn load(run: &str) -> Result<RunState> {
        let path = RunState::dir_of(run).join("state");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        RunState::parse(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// Creates a fresh state directory for a new run of this process and returns its run id
/// (`<pid>-<counter>`). The directory is made with `mkdir`, which fails if it exists, so a run
/// id is never reused, even when a crashed run left its state behind.
pub(crate) fn new_run_id() -> Result<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let runs = Path::new(STATE_ROOT).join("runs");
    std::fs::create_dir_all(&runs).with_context(|| format!("create {}", runs.display()))?;
    loop {
        let run = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let clash = net::netns_exists(&format!("{NS_PREFIX}{run}-hub"));
        match std::fs::create_dir(runs.join(&run)) {
            Ok(()) if !clash => return Ok(run),
            Ok(()) => {
                let _ = std::fs::remove_dir(runs.join(&run));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("create run state directory"),
        }
    }
}

/// Claims a free /24 for `run`: starts at an index derived from the run id and takes the first
/// one that is neither claimed by another run nor routed in the root namespace already.
pub(crate) fn claim_subnet(run: &str) -> Result<u16> {
    let dir = Path::new(STATE_ROOT).join("subnets");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let routes = net::ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let seed = run
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    for k in 0..SUBNETS {
        let index = ((seed + k as u32) % SUBNETS as u32) as u16;
        let net = subnet_addr(index, 0);
        if routes.contains(&format!("{net}/")) {
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(index.to_string()))
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(run.as_bytes()).context("write subnet claim")?;
                return Ok(index);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("claim subnet"),
        }
    }
    bail!(
        "all {SUBNETS} subnets of 198.18.0.0/15 are claimed: remove stale runs with \
         `cargo xtask cluster down --all`"
    )
}

/// Releases subnet claim `index` if `run` holds it.
fn release_subnet(index: u16, run: &str) {
    let path = Path::new(STATE_ROOT)
        .join("subnets")
        .join(index.to_string());
    if std::fs::read_to_string(&path).ok().as_deref() == Some(run) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes everything `st` lists: agents (through their cgroups), namespaces (which takes their
/// veths, the uplink included), cgroups, work directory, subnet claim and state. Idempotent, and
/// each step goes on when an earlier one failed.
pub(super) fn teardown(st: &RunState) {
    cgroup::remove_tree(&st.cgroup);
    // The services' mirror in the v1 memory hierarchy (hybrid hosts), emptied by the line above.
    if let Some(v1) = cgroup::memory_v1_root() {
        cgroup::remove_tree(&v1.join(cgroup::PARENT).join(&st.run));
    }
    for ns in st.namespaces.iter().rev() {
        net::delete_netns(ns);
    }
    if !st.uplink.is_empty() && net::root_links().contains(&st.uplink) {
        let _ = net::ip(&["link", "delete", &st.uplink]);
    }
    let _ = std::fs::remove_dir_all(&st.work_dir);
    release_subnet(st.subnet, &st.run);
    let _ = std::fs::remove_dir_all(RunState::dir_of(&st.run));
}

/// One run as `list` reports it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run: String,
    /// The parsed state, or why it could not be read.
    pub state: Result<RunState, String>,
    /// Whether its owner still runs (detached runs count as alive).
    pub alive: bool,
}

/// Every run with a state directory.
pub fn list() -> Vec<RunInfo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(Path::new(STATE_ROOT).join("runs")) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let run = e.file_name().to_string_lossy().into_owned();
        let state = RunState::load(&run).map_err(|e| format!("{e:#}"));
        let alive = match &state {
            Ok(st) => st.owner.alive(),
            // A run still being set up has a directory but no state file yet.
            Err(_) => run_pid(&run).is_some_and(pid_alive),
        };
        out.push(RunInfo { run, state, alive });
    }
    out.sort_by(|a, b| a.run.cmp(&b.run));
    out
}

/// What [`down`] removed.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Runs torn down from their state.
    pub runs: Vec<String>,
    /// Leftovers with no state: namespaces, cgroups, links, directories, claims.
    pub leftovers: Vec<String>,
    /// Runs left alone because a live process owns them.
    pub kept: Vec<String>,
}

/// Tears down runs.
///
/// - `run: Some(id)`: that run only, whoever owns it.
/// - `all: false`: every detached run (those `godwit-cluster up` left running).
/// - `all: true`: every run whose owner is gone (detached or crashed), and any leftover of the
///   harness that belongs to no live run: `gw-*` namespaces, cgroups under
///   `<v2 root>/godwit-cluster/`, `gwh*` links, work directories, subnet claims.
///
/// Runs owned by a live process (a test running now) are never touched, except by id.
/// Idempotent: running it twice removes nothing the second time.
pub fn down(run: Option<&str>, all: bool) -> Result<DownReport> {
    let mut report = DownReport::default();
    if let Some(run) = run {
        let st = RunState::load(run)?;
        teardown(&st);
        report.runs.push(run.to_string());
        return Ok(report);
    }
    let mut live = Vec::new();
    for info in list() {
        match &info.state {
            Ok(st) if st.owner == Owner::Detached || (all && !info.alive) => {
                teardown(st);
                report.runs.push(info.run);
            }
            Err(_) if all && !info.alive => {
                let _ = std::fs::remove_dir_all(RunState::dir_of(&info.run));
                report.leftovers.push(format!("state of {}", info.run));
            }
            _ => {
                if info.alive {
                    report.kept.push(info.run.clone());
                }
                live.push(info.run);
            }
        }
    }
    if all {
        sweep_leftovers(&live, &mut report);
    }
    Ok(report)
}

/// Removes every harness object that no run in `live` owns.
fn sweep_leftovers(live: &[String], report: &mut DownReport) {
    let is_live = |run: &str| live.iter().any(|r| r == run);
    // Namespaces: node namespaces before hubs does not matter; deleting either kills its veths.
    for ns in net::list_netns() {
        if let Some(run) = run_of_netns(&ns) {
            if !is_live(run) {
                net::delete_netns(&ns);
                report.leftovers.push(format!("netns {ns}"));
            }
        }
    }
    // Cgroups, and their mirror in the v1 memory hierarchy.
    let roots = cgroup::v2_root()
        .ok()
        .into_iter()
        .chain(cgroup::memory_v1_root());
    for root in roots {
        let parent = root.join(cgroup::PARENT);
        if let Ok(rd) = std::fs::read_dir(&parent) {
            for e in rd.filter_map(|e| e.ok()) {
                let run = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && !is_live(&run) {
                    cgroup::remove_tree(&e.path());
                    report
                        .leftovers
                        .push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        if live.is_empty() {
            let _ = std::fs::remove_dir(&parent);
        }
    }
    // Subnet claims, and uplinks whose claim is gone.
    let claims = Path::new(STATE_ROOT).join("subnets");
    let mut claimed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&claims) {
        for e in rd.filter_map(|e| e.ok()) {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            if is_live(&owner) {
                claimed.push(e.file_name().to_string_lossy().into_owned());
            } else {
                let _ = std::fs::remove_file(e.path());
                report.leftovers.push(format!("subnet claim {owner}"));
            }
        }
    }
    for link in net::root_links() {
        if let Some(index) = link.strip_prefix(UPLINK_PREFIX) {
            if index.parse::<u16>().is_ok() && !claimed.iter().any(|c| c == index) {
                let _ = net::ip(&["link", "delete", &link]);
                report.leftovers.push(format!("link {link}"));
            }
        }
    }
    // Work directories.
    if let Ok(rd) = std::fs::read_dir(work_root()) {
        for e in rd.filter_map(|e| e.ok()) {
            let run = e.file_name().to_string_lossy().into_owned();
            if !is_live(&run) {
                let _ = std::fs::remove_dir_all(e.path());
                report
                    .leftovers
                    .push(format!("work dir {}", e.path().display()));
            }
        }
    }
}

/// The directory holding every run's work directory.
pub(crate) fn work_root() -> PathBuf {
    std::env::temp_dir().join("godwit-cluster")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_stay_inside_198_18_0_0_15() {
        assert_eq!(subnet_addr(0, 1), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(subnet_addr(255, 254), Ipv4Addr::new(198, 18, 255, 254));
        assert_eq!(subnet_addr(256, 3), Ipv4Addr::new(198, 19, 0, 3));
        assert_eq!(subnet_addr(511, 9), Ipv4Addr::new(198, 19, 255, 9));
    }

    #[test]
    #[should_panic(expected = "outside 198.18.0.0/15")]
    fn subnet_index_beyond_the_range_panics() {
        subnet_addr(512, 1);
    }

    #[test]
    fn state_round_trips() {
        let st = RunState {
            run: "123-4".into(),
            owner: Owner::Process {
                pid: 123,
                start: 99,
            },
            subnet: 300,
            uplink: "gwh300".into(),
            work_dir: "/tmp/godwit-cluster/123-4".into(),
            cgroup: "/sys/fs/cgroup/godwit-cluster/123-4".into(),
            namespaces: vec!["gw-123-4-hub".into(), "gw-123-4-n1".into()],
            agents: vec![("n1".into(), 456)],
        };
        assert_eq!(RunState::parse(&st.render()).unwrap(), st);
        let detached = RunState {
            owner: Owner::Detached,
            ..st
        };
        assert_eq!(RunState::parse(&detached.render()).unwrap(), detached);
    }

    #[test]
    fn run_ids_come_back_from_namespace_names() {
        assert_eq!(run_of_netns("gw-123-4-hub"), Some("123-4"));
        assert_eq!(run_of_netns("gw-123-4-n12"), Some("123-4"));
        assert_eq!(run_of_netns("gw-x-hub"), None);
        assert_eq!(run_of_netns("other"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = Owner::me();
        assert!(me.alive());
        let Owner::Process { pid, start } = me else {
            unreachable!()
        };
        assert!(!Owner::Process {
            pid,
            start: start + 1
        }
        .alive());
    }

    #[test]
    fn finds_the_v2_root_on_hybrid_and_pure_hosts() {
        let hybrid = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup::v2_root_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup::v2_root_from(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup::v2_root_from("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            cgroup::memory_v1_root_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(cgroup::memory_v1_root_from(pure), None);
    }
}
