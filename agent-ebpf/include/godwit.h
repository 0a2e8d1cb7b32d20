/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Types shared between the BPF programs (godwit.bpf.c) and the agent (agent/src/probe/bpf.rs).
 * Every struct here is mirrored by a #[repr(C)] Rust type; build.rs compiles layout.c on the
 * host to print sizes and offsets, and a unit test compares them with the Rust side.
 * Keep fields naturally aligned and padding explicit.
 */
#ifndef GODWIT_H
#define GODWIT_H

#ifndef __VMLINUX_H__
#include <stdint.h>
typedef uint8_t __u8;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif

#define GODWIT_COMM_LEN 16

/* Sizes of the maps. Userspace reads them from the object; overflow is counted. */
#define GODWIT_MAX_TASKS 32768
#define GODWIT_MAX_CGROUPS 8192
#define GODWIT_MAX_TRACKED_INODES 1024
#define GODWIT_EVENTS_RING_BYTES (256 * 1024)
#define GODWIT_DIRTY_RING_BYTES (4 * 1024 * 1024)

/* Counters per tgid (PERCPU_HASH) and per cgroup id (PERCPU_HASH); userspace sums CPUs. */
struct godwit_counters {
	__u64 cpu_ns;          /* on-CPU time charged at switch-out */
	__u64 dirtied_pages;   /* clean-to-dirty page transitions, every page of a folio */
	__u64 write_faults;    /* user page faults with the write bit */
	__u64 cgroup_id;       /* last cgroup v2 id seen for this task (tgid map only) */
	__u64 last_jiffies;    /* jiffies of the last CPU-time update on this CPU */
	__u64 changed_pages;   /* pages a write touched: buffered writes' ranges at page
	                        * granularity, and write faults on shared file mappings */
};

/*
 * Per-CPU record of the task on the CPU, written when it is switched in: userspace adds the
 * slice still running (its /proc/TGID/task/PID/schedstat runtime minus runtime_base_ns, its
 * runtime at switch-in) and the switch-out charges to the cgroup read here.
 */
struct godwit_oncpu {
	__u64 runtime_base_ns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pid;
};

/* Key of the tracked inode map: the kernel's dev_t of the superblock and the inode number. */
struct godwit_inode_key {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

struct godwit_inode_stats {
	__u64 dirtied_pages;
	__u64 events;
};

enum godwit_event_kind {
	GODWIT_EV_EXEC = 1,
	GODWIT_EV_EXIT = 2,
};

/* Process lifecycle events (ring buffer "events"). */
struct godwit_proc_event {
	__u32 kind;
	__u32 tgid;
	__u32 ppid;
	__u32 _pad;
	__u64 cgroup_id;
	__u64 ts_ns;
	char comm[GODWIT_COMM_LEN];
};

/* A dirtied range of a tracked inode (ring buffer "dirty_ranges"). */
struct godwit_dirty_range {
	struct godwit_inode_key key;
	__u64 index;   /* first page index in the file */
	__u32 nr;      /* number of pages */
	__u32 tgid;
};

/* Indices of the per-CPU "stats" array. */
enum godwit_stat {
	GODWIT_STAT_EVENTS_LOST = 0,    /* events ring full */
	GODWIT_STAT_DIRTY_LOST = 1,     /* dirty_ranges ring full: tracked inodes need a rescan */
	GODWIT_STAT_TASKS_FULL = 2,     /* tgid map full */
	GODWIT_STAT_CGROUPS_FULL = 3,   /* cgroup map full */
	GODWIT_STAT_EXEC = 4,
	GODWIT_STAT_EXIT = 5,
	GODWIT_STAT_DIRTY_EVENTS = 6,   /* writeback_dirty_folio hits */
	GODWIT_STAT_FAULT_UNKNOWN = 7,  /* a write fault whose mapping could not be looked up */
	GODWIT_STAT_MAX = 8,
};

#endif /* GODWIT_H */
