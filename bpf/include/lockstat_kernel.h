/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types the lock-contention collector reads, trimmed to the fields it uses.
 *
 * Every record is marked preserve_access_index: offsets here are placeholders and aya
 * relocates each access (and each bpf_core_field_offset/size, bpf_core_type_size) against
 * the running kernel's BTF. Names and nesting were checked against Linux 6.18 BTF. Fields
 * that older kernels lack (pcpu_freelist.extralist, removed in 6.15) are only touched
 * behind bpf_core_field_exists().
 *
 * Also the binary records the iterators write and the Rust side decodes
 * (privileged-loader/src/lockstats/layout.rs, ksym.rs): keep both in step.
 */
#pragma once

#include "common.h"
#include <stdbool.h>
#include <linux/bpf.h> /* enum bpf_map_type, BPF_F_* map flags */

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;

/* include/linux/bpf.h: the fields of every map that name it. */
struct bpf_map {
	enum bpf_map_type map_type;
	__u32 map_flags;
	__u32 id;
	__u32 max_entries;
	char name[16];
};

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

/* kernel/bpf/map_iter.c: the context of iter/bpf_map. */
struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
};

/* kernel/kallsyms.c */
struct kallsym_iter {
	unsigned long value;
	char type;
	char name[512];
};

struct bpf_iter__ksym {
	struct bpf_iter_meta *meta;
	struct kallsym_iter *ksym;
};

/* kernel/bpf/hashtab.c: one hash bucket = list head + its lock (rqspinlock_t on 6.18). */
struct bucket {
	void *head;
};

/* kernel/bpf/percpu_freelist.h: the free elements of a preallocated hash map. */
struct pcpu_freelist_head {
	void *first;
};

struct pcpu_freelist {
	struct pcpu_freelist_head *freelist; /* __percpu */
	struct pcpu_freelist_head extralist; /* gone in 6.15+ */
};

/* kernel/bpf/bpf_lru_list.h */
struct bpf_lru_list {
	void *next_inactive_rotation;
};

struct bpf_lru_locallist {
	unsigned short next_steal;
};

struct bpf_common_lru {
	struct bpf_lru_list lru_list;
	struct bpf_lru_locallist *local_list; /* __percpu */
};

struct bpf_lru {
	union {
		struct bpf_common_lru common_lru;
		struct bpf_lru_list *percpu_lru; /* __percpu */
	};
	bool percpu;
};

struct bpf_htab {
	struct bpf_map map;
	struct bucket *buckets;
	union {
		struct pcpu_freelist freelist;
		struct bpf_lru lru;
	};
	__u32 n_buckets;
};

/* kernel/bpf/ringbuf.c */
struct wait_queue_head {
	void *head;
};

struct bpf_ringbuf {
	struct wait_queue_head waitq;
	/* rqspinlock_t on 6.18, raw_spinlock_t before: a struct either way; offset and size
	 * are relocated, its contents never read */
	struct lockstat_lock_word { int val; } spinlock;
};

/* kernel/bpf/arraymap.c: the element pointers follow the struct (a flexible union
 * member at offset sizeof(struct bpf_array)). */
struct bpf_array {
	struct bpf_map map;
};

struct bpf_ringbuf_map {
	struct bpf_map map;
	struct bpf_ringbuf *rb;
};

#pragma clang attribute pop

/* ---- records written by the iterators (little-endian, native layout) ---- */

#define LOCKSTAT_MAX_CPUS 512
#define LOCKSTAT_HEADER_MAGIC 0x4c4b5354u /* "LKST" */
#define LOCKSTAT_MAP_MAGIC 0x4c4b4d50u    /* "LKMP" */

#define LOCKSTAT_PCPU_OFFSETS 0     /* values are __per_cpu_offset[cpu] */
#define LOCKSTAT_PCPU_PROBE_ADDRS 1 /* values are the probe map's per-CPU value addresses */

/* Written once, before the first map: what per-CPU lock addresses are computed from. */
struct lockstat_header {
	__u32 magic;
	__u32 nr_cpus;
	__u32 kind; /* LOCKSTAT_PCPU_* */
	__u32 _pad;
	/* followed by nr_cpus __u64 values */
};

/* One per map. Addresses are 0 where the map type has no such lock. */
struct lockstat_map_record {
	__u32 magic;
	__u32 id;
	__u32 map_type;
	__u32 map_flags;
	__u32 max_entries;
	__u32 n_buckets;
	char name[16];
	__u64 map_addr;
	__u64 buckets;            /* hash: struct bucket array */
	__u64 freelist_pcpu;      /* hash, preallocated: __percpu pcpu_freelist_head */
	__u64 extralist;          /* hash, preallocated, < 6.15: global freelist head */
	__u64 lru_global;         /* LRU, common: the global bpf_lru_list */
	__u64 lru_pcpu;           /* LRU: __percpu local lists, or per-CPU lists if percpu */
	__u64 rb_waitq;           /* ringbuf: wait queue head (its spinlock) */
	__u64 rb_spinlock;        /* ringbuf: the producer spinlock */
	__u64 pcpu_base;          /* per-CPU array: the __percpu pointer of element 0 */
	__u32 bucket_size;
	__u32 freelist_head_size;
	__u32 lru_list_size;
	__u32 lru_locallist_size;
	__u32 waitq_size;
	__u32 rb_spinlock_size;
	__u32 lru_percpu;         /* BPF_F_NO_COMMON_LRU: lru_pcpu holds bpf_lru_list */
	__u32 _pad;
};

/* iter/ksym: one per wanted symbol found. */
struct lockstat_ksym_record {
	__u64 addr;
	char name[64];
};
