// SPDX-License-Identifier: GPL-2.0
/*
 * Lock contention on the locks inside BPF maps, per lock-address range.
 *
 * The loader fills `ranges` with the sorted, non-overlapping [start, end) address ranges
 * of the locks it tracks (hash buckets, freelists, LRU lists, ring buffer locks) and sets
 * `nr_ranges` before load. contention_begin looks the lock address up with a binary
 * search (a bounded loop: the verifier of 6.1 and 6.18 accepts it), remembers when the
 * wait started — per CPU for spinning locks, which cannot sleep or migrate while waiting,
 * per task for sleeping ones — and contention_end adds the wait to that range's stats.
 * Addresses outside every range cost one search and nothing else.
 */
#include "lockstat_kernel.h"

char LICENSE[] SEC("license") = "GPL";

/* include/trace/events/lock.h */
#define LCB_F_SPIN (1U << 0)

/* 2^32 ranges at most: the search never needs more steps than this. */
#define SEARCH_STEPS 32
#define MAX_SLEEPING_WAITERS 16384

struct lock_range {
	__u64 start;
	__u64 end;
};

struct range_stats {
	__u64 count;
	__u64 total_ns;
	__u64 min_ns;
	__u64 max_ns;
};

struct wait_start {
	__u64 lock;
	__u64 ts;
	__u32 range;
	__u32 _pad;
};

enum counter {
	COUNTER_STATS_FULL = 0,   /* a range's first event found the stats map full */
	COUNTER_WAITERS_FULL = 1, /* a sleeping waiter found the per-task table full */
	COUNTER_UNMATCHED = 2,    /* an end without its begin (nested or missed) */
	COUNTER_SEEN = 3,         /* every contention_begin, tracked or not */
	COUNTER_TRACKED = 4,      /* contention_begin inside a tracked range */
	NR_COUNTERS = 5,
};

/* Set by the loader before load. Deliberately NOT const (.data, not .rodata): as a
 * constant, the verifier walks every path of the binary search with concrete bounds,
 * which costs time proportional to the number of ranges (0.5 s for 3,000); as a
 * value read at run time it checks the loop once. */
volatile __u32 nr_ranges = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized by the loader to nr_ranges */
	__type(key, __u32);
	__type(value, struct lock_range);
} ranges SEC(".maps");

/* Not preallocated: most ranges never contend, and preallocating per-CPU values for
 * thousands of ranges made loading take ~0.4 s. Entries come from bpf_mem_alloc when a
 * range first contends; a failed insert is counted (COUNTER_STATS_FULL). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1); /* resized by the loader */
	__type(key, __u32);
	__type(value, struct range_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wait_start);
} spinning SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SLEEPING_WAITERS);
	__type(key, __u32);
	__type(value, struct wait_start);
} sleeping SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
}

/* Index of the range holding addr, or -1. */
static __always_inline int find_range(__u64 addr)
{
	__u32 lo = 0, hi = nr_ranges;

	for (int step = 0; step < SEARCH_STEPS; step++) {
		__u32 mid;
		struct lock_range *r;

		if (lo >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		r = bpf_map_lookup_elem(&ranges, &mid);
		if (!r)
			break;
		if (addr < r->start)
			hi = mid;
		else if (addr >= r->end)
			lo = mid + 1;
		else
			return mid;
	}
	return -1;
}

SEC("tp_btf/contention_begin")
int BPF_PROG(contention_begin, void *lock, unsigned int flags)
{
	int range = find_range((__u64)lock);
	struct wait_start start = {};
	__u32 zero = 0, tid;

	count(COUNTER_SEEN);
	if (range < 0)
		return 0;
	count(COUNTER_TRACKED);
	start.lock = (__u64)lock;
	start.range = range;
	start.ts = bpf_ktime_get_ns();
	if (flags & LCB_F_SPIN) {
		bpf_map_update_elem(&spinning, &zero, &start, BPF_ANY);
		return 0;
	}
	tid = (__u32)bpf_get_current_pid_tgid();
	if (bpf_map_update_elem(&sleeping, &tid, &start, BPF_ANY))
		count(COUNTER_WAITERS_FULL);
	return 0;
}

static __always_inline void add_wait(__u32 range, __u64 wait)
{
	struct range_stats *s = bpf_map_lookup_elem(&stats, &range);
	struct range_stats first = { .count = 1, .total_ns = wait, .min_ns = wait, .max_ns = wait };

	if (!s) {
		if (bpf_map_update_elem(&stats, &range, &first, BPF_NOEXIST))
			count(COUNTER_STATS_FULL);
		return;
	}
	/* Per-CPU value: no other CPU writes it, plain updates are exact. */
	s->count += 1;
	s->total_ns += wait;
	if (wait < s->min_ns)
		s->min_ns = wait;
	if (wait > s->max_ns)
		s->max_ns = wait;
}

static __always_inline struct wait_start *pending_wait(__u64 lock, __u32 *tid, bool *per_task)
{
	__u32 zero = 0;
	struct wait_start *w = bpf_map_lookup_elem(&spinning, &zero);

	*per_task = false;
	if (w && w->lock == lock)
		return w;
	*tid = (__u32)bpf_get_current_pid_tgid();
	*per_task = true;
	return bpf_map_lookup_elem(&sleeping, tid);
}

SEC("tp_btf/contention_end")
int BPF_PROG(contention_end, void *lock, int ret)
{
	__u32 tid = 0;
	bool per_task;
	struct wait_start *w = pending_wait((__u64)lock, &tid, &per_task);
	__u64 now = bpf_ktime_get_ns();

	if (!w)
		return 0;
	if (w->lock != (__u64)lock) {
		count(COUNTER_UNMATCHED);
		return 0;
	}
	add_wait(w->range, now - w->ts);
	if (per_task)
		bpf_map_delete_elem(&sleeping, &tid);
	else
		w->lock = 0;
	return 0;
}
