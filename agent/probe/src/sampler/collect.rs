//! Collecting the counters: from the BPF maps, or from procfs and cgroupfs, and folding them
//! into the per-process and per-container tables.

use std::collections::HashMap;
use std::time::Instant;

use super::*;

impl Sampler {
    /// Per-tgid and per-cgroup cumulative counters from the BPF maps, with the time of the
    /// tasks on CPU right now (not yet charged by a switch) added.
    pub(super) fn collect_bpf(
        &mut self,
        now: Instant,
    ) -> (HashMap<u32, Totals>, HashMap<u64, Totals>) {
        let Backend::Bpf(probe) = &self.backend else {
            unreachable!("bpf backend")
        };
        let counts_changes = probe.counts_changes();
        let totals = |c: &crate::bpf::Counters| Totals {
            cpu_ns: c.cpu_ns,
            dirtied_pages: c.dirtied_pages,
            write_faults: Some(c.write_faults),
            changed_pages: counts_changes.then_some(c.changed_pages),
            cpu_waited_us: None,
        };
        let task_counters = probe.tasks();
        let mut tasks: HashMap<u32, Totals> = task_counters
            .iter()
            .map(|(tgid, c)| (*tgid, totals(c)))
            .collect();
        let mut cgroups: HashMap<u64, Totals> = probe
            .cgroups()
            .iter()
            .map(|(id, c)| (*id, totals(c)))
            .collect();
        // A task that has not been switched out since the last sample has a slice running
        // that no switch has charged yet: add it, from the scheduler's runtime of that thread.
        for cpu in probe.on_cpu() {
            if cpu.tgid == 0 {
                continue;
            }
            let Ok(runtime) =
                procfs::read_thread_runtime_ns(&self.cfg.proc_root, cpu.tgid, cpu.pid)
            else {
                continue;
            };
            let running = runtime.saturating_sub(cpu.runtime_base_ns);
            tasks.entry(cpu.tgid).or_default().cpu_ns += running;
            cgroups.entry(cpu.cgroup_id).or_default().cpu_ns += running;
        }
        // Learn the cgroup of each task from the map (updated at every switch).
        let task_cgroups: Vec<(u32, u64)> = task_counters
            .iter()
            .map(|(t, c)| (*t, c.cgroup_id))
            .collect();
        let reconcile = self.ticks % RECONCILE_EVERY == 1;
        for (tgid, cgid) in task_cgroups {
            self.discover(tgid, cgid, now);
        }
        if reconcile {
            self.reconcile_with_proc(now);
        }
        (tasks, cgroups)
    }

    /// Makes sure a tgid seen by the kernel has a [`Proc`] with its names.
    pub(super) fn discover(&mut self, tgid: u32, cgid: u64, now: Instant) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            if cgid != 0 && p.cgroup_id != cgid {
                p.cgroup_id = cgid;
                let path = self.cgroup_path_of(cgid, tgid);
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.cgroup_path = path;
                }
            }
            return;
        }
        if self.orphans.contains_key(&tgid) {
            return;
        }
        match procfs::read_stat(&self.cfg.proc_root, tgid) {
            Ok(st) => {
                let cmdline = procfs::read_cmdline(&self.cfg.proc_root, tgid).unwrap_or_default();
                let path = self.cgroup_path_of(cgid, tgid);
                let p = Proc::from_stat(&st, cmdline, cgid, path, now, self.page_size);
                self.procs.insert(tgid, p);
            }
            Err(_) => {
                // Ended before we looked (or a lost exit event): forget it after the grace.
                self.orphans.insert(tgid, now);
            }
        }
    }

    /// Lists /proc: finds processes that have not run since the agent started and ends the
    /// ones whose exit event was lost.
    pub(super) fn reconcile_with_proc(&mut self, now: Instant) {
        let Ok(pids) = procfs::list_pids(&self.cfg.proc_root) else {
            return;
        };
        let live: HashSet<u32> = pids.iter().copied().collect();
        for (pid, p) in self.procs.iter_mut() {
            if p.ended.is_none() && !live.contains(pid) {
                p.ended = Some(now);
            }
        }
        for pid in pids {
            if !self.procs.contains_key(&pid) {
                self.discover(pid, 0, now);
            }
        }
    }

    /// Cumulative counters from /proc/PID/stat and /proc/PID/io, and cgroup cpu.stat.
    pub(super) fn collect_procfs(
        &mut self,
        now: Instant,
    ) -> (HashMap<u32, Totals>, HashMap<u64, Totals>) {
        let root = self.cfg.proc_root.clone();
        let pids = procfs::list_pids(&root).unwrap_or_default();
        let live: HashSet<u32> = pids.iter().copied().collect();
        let mut tasks = HashMap::with_capacity(pids.len());
        for pid in pids {
            let Ok(st) = procfs::read_stat(&root, pid) else {
                continue;
            };
            let write_bytes = procfs::read_io(&root, pid)
                .map(|io| io.write_bytes)
                .unwrap_or(0);
            let cpu_ns = (st.utime_ticks + st.stime_ticks) * 1_000_000_000 / self.clk_tck.max(1);
            let reused = self
                .procs
                .get(&pid)
                .is_some_and(|p| p.starttime != st.starttime_ticks);
            if reused {
                self.procs.remove(&pid);
            }
            // A process first seen between fork and exec (a managed service's child before it
            // joined its cgroup) had its parent's names and cgroup. procfs has no exec event,
            // but exec changes the comm: then read the cmdline and the cgroup again.
            let execed = self.procs.get(&pid).is_some_and(|p| p.comm != st.comm);
            if execed {
                let cmdline = procfs::read_cmdline(&root, pid).unwrap_or_default();
                let path = procfs::read_cgroup(&root, pid)
                    .ok()
                    .and_then(|m| m.v2_path)
                    .unwrap_or_default();
                let cgid = self
                    .layout
                    .as_ref()
                    .and_then(|l| cgroup::cgroup_id(&l.dir(&path)).ok())
                    .unwrap_or(0);
                let named = Proc::from_stat(&st, cmdline, cgid, path, now, self.page_size);
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.comm = named.comm;
                    p.cmdline = named.cmdline;
                    p.cgroup_id = named.cgroup_id;
                    p.cgroup_path = named.cgroup_path;
                }
            }
            if !self.procs.contains_key(&pid) {
                let cmdline = procfs::read_cmdline(&root, pid).unwrap_or_default();
                let membership = procfs::read_cgroup(&root, pid).ok();
                let path = membership.and_then(|m| m.v2_path).unwrap_or_default();
                let cgid = self
                    .layout
                    .as_ref()
                    .and_then(|l| cgroup::cgroup_id(&l.dir(&path)).ok())
                    .unwrap_or(0);
                let p = Proc::from_stat(&st, cmdline, cgid, path, now, self.page_size);
                self.procs.insert(pid, p);
            }
            if let Some(p) = self.procs.get_mut(&pid) {
                p.rss_bytes = st.rss_pages * self.page_size;
                p.rss_age = 0;
            }
            tasks.insert(
                pid,
                Totals {
                    cpu_ns,
                    dirtied_pages: write_bytes / self.page_size,
                    write_faults: None,
                    changed_pages: None,
                    cpu_waited_us: None,
                },
            );
        }
        for (pid, p) in self.procs.iter_mut() {
            if p.ended.is_none() && !live.contains(pid) {
                p.ended = Some(now);
            }
        }
        // Per-cgroup dirtied pages: the sum over member processes (cgroupfs has no such count).
        let mut cgroups: HashMap<u64, Totals> = HashMap::new();
        for (pid, t) in &tasks {
            if let Some(p) = self.procs.get(pid) {
                cgroups.entry(p.cgroup_id).or_default().dirtied_pages += t.dirtied_pages;
            }
        }
        (tasks, cgroups)
    }

    pub(super) fn update_processes(
        &mut self,
        totals: HashMap<u32, Totals>,
        dt: Option<f64>,
        now: Instant,
    ) {
        let refresh_idle_rss = self.ticks % IDLE_RSS_EVERY == 0;
        let is_bpf = matches!(self.backend, Backend::Bpf(_));
        for (pid, t) in totals {
            let Some(p) = self.procs.get_mut(&pid) else {
                continue;
            };
            if p.ended.is_some() && !is_bpf {
                continue;
            }
            let d_cpu = p.meter.advance(t, dt, self.page_size);
            p.rss_age = p.rss_age.saturating_add(1);
            if is_bpf && p.ended.is_none() && (d_cpu > 0 || refresh_idle_rss || p.rss_age == 1) {
                if let Ok(st) = procfs::read_stat(&self.cfg.proc_root, pid) {
                    p.rss_bytes = st.rss_pages * self.page_size;
                    p.rss_age = 0;
                }
            }
        }
        let _ = now;
    }

    pub(super) fn update_containers(
        &mut self,
        totals: HashMap<u64, Totals>,
        dt: Option<f64>,
        now: Instant,
    ) {
        // Group cgroup ids into containers (the cgroup subtree a runtime created).
        let mut grouped: HashMap<String, (ContainerInfo, Totals)> = HashMap::new();
        for (id, t) in totals {
            if id == 0 {
                continue;
            }
            let path = match self.cgroup_path(id) {
                Some(p) => p.to_string(),
                None => {
                    self.rescan_cgroups();
                    match self.cgroup_path(id) {
                        Some(p) => p.to_string(),
                        None => {
                            self.dead_cgroups.entry(id).or_insert(now);
                            continue;
                        }
                    }
                }
            };
            let Some((root, info)) = container_of(&path) else {
                continue;
            };
            let entry = grouped
                .entry(root)
                .or_insert_with(|| (info, Totals::default()));
            entry.1.cpu_ns += t.cpu_ns;
            entry.1.dirtied_pages += t.dirtied_pages;
            entry.1.write_faults = match (entry.1.write_faults, t.write_faults) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            entry.1.changed_pages = match (entry.1.changed_pages, t.changed_pages) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        let mut members: HashMap<String, u32> = HashMap::new();
        for p in self.procs.values().filter(|p| p.ended.is_none()) {
            if let Some((root, _)) = container_of(&p.cgroup_path) {
                *members.entry(root).or_default() += 1;
            }
        }
        let procfs_mode = matches!(self.backend, Backend::Procfs);
        for (root, (info, mut t)) in grouped {
            if procfs_mode {
                // cgroupfs counts CPU for the whole subtree.
                t.cpu_ns = self
                    .layout
                    .as_ref()
                    .and_then(|l| cgroup::read_cpu_stat(&l.dir(&root)).ok())
                    .map(|s| s.usage_usec * 1000)
                    .unwrap_or(0);
            }
            t.cpu_waited_us = self
                .layout
                .as_ref()
                .and_then(|l| cgroup::read_cpu_waited_usec(&l.dir(&root)));
            let memory = self.layout.as_ref().and_then(|l| l.read_memory(&root));
            let c = self
                .containers
                .entry(root.clone())
                .or_insert_with(|| Container::new(info, root.clone(), now));
            let d_cpu = c.meter.advance(t, dt, self.page_size);
            c.memory = memory;
            c.processes = members.get(&root).copied().unwrap_or(0);
            if c.processes > 0 || d_cpu > 0 {
                c.last_active = now;
            }
        }
    }
}
