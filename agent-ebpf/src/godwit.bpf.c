// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * godwit's kernel side: on-CPU time, pages dirtied (the page cache's folios), pages changed
 * (where writes happen) and write faults per tgid and per cgroup, process exec/exit events,
 * and dirtied page ranges of the inodes userspace tracks.
 *
 * Only BTF-enabled raw tracepoints (tp_btf) are used: they need no tracefs, cost less than
 * classic tracepoints and kprobes are not available on every kernel we run on.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "godwit.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h): a present page, a write. */
#define X86_PF_PROT (1UL << 0)
#define X86_PF_WRITE (1UL << 1)
/* TASK_DEAD of include/linux/sched.h: the state of a thread's last switch-out. */
#define TASK_DEAD 0x00000080
/* VM_SHARED of include/linux/mm.h: a shared mapping (writes reach the file). */
#define VM_SHARED 0x00000008
/* PAGE_SHIFT of x86-64. */
#define GODWIT_PAGE_SHIFT 12
/* errno values used below (vmlinux.h carries no macros). */
#define E2BIG 7

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, GODWIT_MAX_TASKS);
	__type(key, __u32);
	__type(value, struct godwit_counters);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, GODWIT_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct godwit_counters);
} cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct godwit_oncpu);
} oncpu SEC(".maps");

/*
 * Task-local storage of every thread seen: its scheduler runtime (se.sum_exec_runtime) when
 * it was last charged. Each switch-out charges the runtime since then, so a switch-in this
 * program did not see (measured on 6.18 under CPU contention: a few per second) delays a
 * charge, never loses it. The kernel frees the storage with the task.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} charged SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GODWIT_MAX_TRACKED_INODES);
	__type(key, struct godwit_inode_key);
	__type(value, struct godwit_inode_stats);
} tracked_inodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GODWIT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, GODWIT_EVENTS_RING_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, GODWIT_DIRTY_RING_BYTES);
} dirty_ranges SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/*
 * The counters of a tgid on this CPU, created on first use. A per-CPU hash needs no atomics:
 * each CPU owns its copy and userspace sums them.
 */
static __always_inline struct godwit_counters *task_counters(__u32 tgid)
{
	struct godwit_counters *c = bpf_map_lookup_elem(&tasks, &tgid);
	struct godwit_counters zero = {};

	if (c)
		return c;
	/* -EEXIST means another CPU created it first: the lookup below finds it. */
	if (bpf_map_update_elem(&tasks, &tgid, &zero, BPF_NOEXIST) == -E2BIG) {
		stat_inc(GODWIT_STAT_TASKS_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&tasks, &tgid);
}

static __always_inline struct godwit_counters *cgroup_counters(__u64 cgid)
{
	struct godwit_counters *c = bpf_map_lookup_elem(&cgroups, &cgid);
	struct godwit_counters zero = {};

	if (c)
		return c;
	if (bpf_map_update_elem(&cgroups, &cgid, &zero, BPF_NOEXIST) == -E2BIG) {
		stat_inc(GODWIT_STAT_CGROUPS_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&cgroups, &cgid);
}

/*
 * tp_btf arguments are trusted BTF pointers: direct dereferences become fault-safe loads
 * (vmlinux.h marks every type preserve_access_index, so they are CO-RE relocated too) and
 * cost far less than a bpf_probe_read_kernel call per hop.
 */
static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return t->cgroups->dfl_cgrp->kn->id;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u32 zero = 0;
	struct godwit_oncpu *cur = bpf_map_lookup_elem(&oncpu, &zero);
	struct godwit_counters *c;

	if (!cur)
		return 0;

	/*
	 * Charge prev the runtime since its last charge, by the scheduler's own accounting: it
	 * has updated prev's sum_exec_runtime before this tracepoint, so no timestamp helper is
	 * called on this hot path. The idle task (tgid 0) is not a process. A thread's storage
	 * is created at its first switch-out, from its runtime at the switch-in this CPU saw (0
	 * for a new thread); a thread whose switch-in was not seen either (running since before
	 * the probe loaded) only gets its base.
	 */
	if (prev->tgid) {
		__u64 runtime = prev->se.sum_exec_runtime;
		__u64 *base = bpf_task_storage_get(&charged, prev, 0, 0);
		bool seen = cur->pid == prev->pid;
		__u64 from = runtime;

		if (base) {
			from = *base;
			*base = runtime;
		} else {
			if (seen)
				from = cur->runtime_base_ns;
			if (!(prev_state & TASK_DEAD))
				bpf_task_storage_get(&charged, prev, &runtime,
						     BPF_LOCAL_STORAGE_GET_F_CREATE);
		}
		if (runtime > from) {
			__u64 delta = runtime - from;
			/*
			 * prev's cgroup as read when it was switched in; read now (rarely) if that
			 * switch was not seen, through a helper so the verifier never sees one load
			 * with two pointer types.
			 */
			__u64 cgid = seen ? cur->cgroup_id
					  : BPF_CORE_READ(prev, cgroups, dfl_cgrp, kn, id);
			__u64 jiffies = bpf_jiffies64();

			c = task_counters(prev->tgid);
			if (c) {
				c->cpu_ns += delta;
				c->cgroup_id = cgid;
				c->last_jiffies = jiffies;
			}
			c = cgroup_counters(cgid);
			if (c) {
				c->cpu_ns += delta;
				c->last_jiffies = jiffies;
			}
		}
	}

	cur->tgid = next->tgid;
	cur->pid = next->pid;
	cur->runtime_base_ns = next->se.sum_exec_runtime;
	cur->cgroup_id = cur->tgid ? task_cgroup_id(next) : 0;
	return 0;
}

static __always_inline int emit_proc_event(struct task_struct *p, __u32 kind)
{
	struct godwit_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		stat_inc(GODWIT_STAT_EVENTS_LOST);
		return 0;
	}
	e->kind = kind;
	e->tgid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->_pad = 0;
	e->cgroup_id = task_cgroup_id(p);
	e->ts_ns = bpf_ktime_get_ns();
	BPF_CORE_READ_STR_INTO(&e->comm, p, comm);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	stat_inc(GODWIT_STAT_EXEC);
	return emit_proc_event(p, GODWIT_EV_EXEC);
}

/*
 * Fires for every exiting thread; the process has ended when its last thread goes, which is
 * when signal->live drops to zero (do_exit decrements it before this tracepoint).
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	stat_inc(GODWIT_STAT_EXIT);
	return emit_proc_event(p, GODWIT_EV_EXIT);
}

/*
 * Pages changed, counted where they are written and at the granularity a migration's rounds
 * send (a page): a buffered write's range, and a write fault on a shared file mapping (the
 * kernel write-protects a mapped page when it cleans it, so each page faults once per clean
 * cycle). The folio count above is the page cache's volume: one 8 KiB write into a clean
 * 2 MiB folio counts 512 pages there and 2 here. One limit: where transparent huge pages
 * are allowed on a file mapping, measured on 6.18, one 2 MiB piece of a 16 MiB mapping
 * faulted once for all its pages, so writes through mappings may count low (by 1/8 there).
 */
static __always_inline void count_changed(__u64 pages)
{
	struct godwit_counters *c;

	if (!pages)
		return;
	c = task_counters(bpf_get_current_pid_tgid() >> 32);
	if (c)
		c->changed_pages += pages;
	c = cgroup_counters(bpf_get_current_cgroup_id());
	if (c)
		c->changed_pages += pages;
}

/* The pages [pos, pos + len) touches. */
static __always_inline __u64 pages_spanned(__s64 pos, __u64 len)
{
	if (len == 0 || pos < 0)
		return 0;
	return (((__u64)pos + len - 1) >> GODWIT_PAGE_SHIFT) - ((__u64)pos >> GODWIT_PAGE_SHIFT) + 1;
}

/*
 * Pages in a folio. On 6.18 folio->flags is memdesc_flags_t (a struct holding one unsigned
 * long), before it was a plain unsigned long: reading 8 bytes at the relocated offset works
 * for both.
 */
static __always_inline __u64 folio_pages(struct folio *folio)
{
	unsigned long flags = 0;
	unsigned long head = 1UL << bpf_core_enum_value(enum pageflags, PG_head);

	bpf_core_read(&flags, sizeof(flags), &folio->flags);
	if (!(flags & head))
		return 1;
	if (bpf_core_field_exists(folio->_nr_pages)) {
		unsigned int n = BPF_CORE_READ(folio, _nr_pages);

		return n ? n : 1;
	}
	/* Older kernels keep the order in the low byte of the second page's flags. */
	return 1UL << (BPF_CORE_READ(folio, _flags_1) & 0xff);
}

/*
 * A folio went from clean to dirty, in the context of the task that dirtied it (the same
 * point where the kernel charges /proc/PID/io write_bytes).
 */
SEC("tp_btf/writeback_dirty_folio")
int BPF_PROG(writeback_dirty_folio, struct folio *folio, struct address_space *mapping)
{
	__u64 nr = folio_pages(folio);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct godwit_inode_key key = {};
	struct godwit_inode_stats *ist;
	struct godwit_dirty_range *r;
	struct godwit_counters *c;
	struct inode *host;

	stat_inc(GODWIT_STAT_DIRTY_EVENTS);
	c = task_counters(tgid);
	if (c)
		c->dirtied_pages += nr;
	c = cgroup_counters(cgid);
	if (c)
		c->dirtied_pages += nr;

	if (!mapping)
		return 0;
	host = BPF_CORE_READ(mapping, host);
	if (!host)
		return 0;
	key.ino = BPF_CORE_READ(host, i_ino);
	key.dev = BPF_CORE_READ(host, i_sb, s_dev);
	ist = bpf_map_lookup_elem(&tracked_inodes, &key);
	if (!ist)
		return 0;
	__sync_fetch_and_add(&ist->dirtied_pages, nr);
	__sync_fetch_and_add(&ist->events, 1);

	r = bpf_ringbuf_reserve(&dirty_ranges, sizeof(*r), 0);
	if (!r) {
		stat_inc(GODWIT_STAT_DIRTY_LOST);
		return 0;
	}
	r->key = key;
	r->index = BPF_CORE_READ(folio, index);
	r->nr = nr;
	r->tgid = tgid;
	bpf_ringbuf_submit(r, 0);
	return 0;
}

/*
 * The buffered write paths, where the filesystem traces them (a tracepoint on each, so tp_btf
 * works without ftrace): ext4 reports each folio-sized piece of a write with the bytes it
 * copied (write, pwrite, writev, io_uring alike); xfs reports the whole write.
 */
SEC("tp_btf/ext4_da_write_end")
int BPF_PROG(ext4_da_write_end, struct inode *inode, loff_t pos, unsigned int len,
	     unsigned int copied)
{
	count_changed(pages_spanned(pos, copied));
	return 0;
}

SEC("tp_btf/ext4_write_end")
int BPF_PROG(ext4_write_end, struct inode *inode, loff_t pos, unsigned int len,
	     unsigned int copied)
{
	count_changed(pages_spanned(pos, copied));
	return 0;
}

SEC("tp_btf/ext4_journalled_write_end")
int BPF_PROG(ext4_journalled_write_end, struct inode *inode, loff_t pos, unsigned int len,
	     unsigned int copied)
{
	count_changed(pages_spanned(pos, copied));
	return 0;
}

SEC("tp_btf/xfs_file_buffered_write")
int BPF_PROG(xfs_file_buffered_write, struct kiocb *iocb, struct iov_iter *from)
{
	count_changed(pages_spanned(iocb->ki_pos, from->count));
	return 0;
}

struct vma_kind {
	int shared_file;
};

/*
 * Task-local: a write fault on a page not present whose mapping could not be looked up, until
 * the filemap_fault of that fault (if it is a file's) says it wrote a file.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} unresolved_fault SEC(".maps");

static long vma_shared_file(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct vma_kind *kind = data;

	kind->shared_file = vma->vm_file && (vma->vm_flags & VM_SHARED);
	return 0;
}

/*
 * User-mode page faults with the write bit: the signal for anonymous memory being written,
 * and, on a shared file mapping, a page of the file changed.
 */
SEC("tp_btf/page_fault_user")
int BPF_PROG(page_fault_user, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	__u64 *pending = bpf_task_storage_get(&unresolved_fault, bpf_get_current_task_btf(), 0, 0);
	struct vma_kind kind = {};
	struct godwit_counters *c;

	/* Every fault of this thread ends what an earlier one left pending. */
	if (pending)
		*pending = 0;
	if (!(error_code & X86_PF_WRITE))
		return 0;
	c = task_counters(bpf_get_current_pid_tgid() >> 32);
	if (c)
		c->write_faults += 1;
	c = cgroup_counters(bpf_get_current_cgroup_id());
	if (c)
		c->write_faults += 1;
	/*
	 * This tracepoint runs with interrupts off, so bpf_find_vma releases the mmap lock from
	 * an irq_work, and fails (-EBUSY) while that is still pending: always for a second
	 * program on this tracepoint (another agent on the host), now and then for ours. Then a
	 * fault on a present page (the page was write-protected: a shared mapping cleaned, or
	 * copy-on-write) is taken as a page changed, and the fault is counted as unresolved.
	 */
	if (bpf_find_vma(bpf_get_current_task_btf(), address, vma_shared_file, &kind, 0)) {
		stat_inc(GODWIT_STAT_FAULT_UNKNOWN);
		if (error_code & X86_PF_PROT) {
			count_changed(1);
		} else {
			/* Not present: a file's page if filemap_fault runs for it next. */
			pending = bpf_task_storage_get(&unresolved_fault, bpf_get_current_task_btf(),
						       0, BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (pending)
				*pending = 1;
		}
	} else if (kind.shared_file) {
		count_changed(1);
	}
	return 0;
}

/*
 * A file's page faulted in. After a write fault left unresolved above, that write went to a
 * file mapping: a shared one (or, rarely, a private one's copy-on-write): a page changed.
 */
SEC("tp_btf/mm_filemap_fault")
int BPF_PROG(mm_filemap_fault, struct address_space *mapping, unsigned long index)
{
	__u64 *pending = bpf_task_storage_get(&unresolved_fault, bpf_get_current_task_btf(), 0, 0);

	if (pending && *pending) {
		*pending = 0;
		count_changed(1);
	}
	return 0;
}
