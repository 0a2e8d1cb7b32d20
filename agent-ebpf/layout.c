// SPDX-License-Identifier: Apache-2.0
/*
 * Built and run on the host by agent/build.rs: prints the sizes, field offsets and constants of
 * godwit.h as a Rust table, so a unit test can check the #[repr(C)] mirrors against the C compiler.
 */
#include <stddef.h>
#include <stdio.h>
#include "godwit.h"

#define SIZE(s) printf("    (\"%s\", \"sizeof\", %zu),\n", #s, sizeof(struct s))
#define FIELD(s, f) printf("    (\"%s\", \"%s\", %zu),\n", #s, #f, offsetof(struct s, f))
#define CONST(c) printf("    (\"const\", \"%s\", %lu),\n", #c, (unsigned long)(c))

int main(void)
{
	printf("/// (struct, field or \"sizeof\", value) as the C compiler sees godwit.h.\n");
	printf("pub(crate) const C_LAYOUT: &[(&str, &str, usize)] = &[\n");
	SIZE(godwit_counters);
	FIELD(godwit_counters, cpu_ns);
	FIELD(godwit_counters, dirtied_pages);
	FIELD(godwit_counters, write_faults);
	FIELD(godwit_counters, cgroup_id);
	FIELD(godwit_counters, last_jiffies);
	FIELD(godwit_counters, changed_pages);
	SIZE(godwit_oncpu);
	FIELD(godwit_oncpu, runtime_base_ns);
	FIELD(godwit_oncpu, cgroup_id);
	FIELD(godwit_oncpu, tgid);
	FIELD(godwit_oncpu, pid);
	SIZE(godwit_inode_key);
	FIELD(godwit_inode_key, ino);
	FIELD(godwit_inode_key, dev);
	SIZE(godwit_inode_stats);
	FIELD(godwit_inode_stats, dirtied_pages);
	FIELD(godwit_inode_stats, events);
	SIZE(godwit_proc_event);
	FIELD(godwit_proc_event, kind);
	FIELD(godwit_proc_event, tgid);
	FIELD(godwit_proc_event, ppid);
	FIELD(godwit_proc_event, cgroup_id);
	FIELD(godwit_proc_event, ts_ns);
	FIELD(godwit_proc_event, comm);
	SIZE(godwit_dirty_range);
	FIELD(godwit_dirty_range, key);
	FIELD(godwit_dirty_range, index);
	FIELD(godwit_dirty_range, nr);
	FIELD(godwit_dirty_range, tgid);
	CONST(GODWIT_COMM_LEN);
	CONST(GODWIT_EV_EXEC);
	CONST(GODWIT_EV_EXIT);
	CONST(GODWIT_STAT_EVENTS_LOST);
	CONST(GODWIT_STAT_DIRTY_LOST);
	CONST(GODWIT_STAT_TASKS_FULL);
	CONST(GODWIT_STAT_CGROUPS_FULL);
	CONST(GODWIT_STAT_EXEC);
	CONST(GODWIT_STAT_EXIT);
	CONST(GODWIT_STAT_DIRTY_EVENTS);
	CONST(GODWIT_STAT_FAULT_UNKNOWN);
	CONST(GODWIT_STAT_MAX);
	printf("];\n");
	return 0;
}
