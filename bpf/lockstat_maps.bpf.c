// SPDX-License-Identifier: GPL-2.0
/*
 * iter/bpf_map: the kernel addresses of the locks inside every BPF map on the system.
 *
 * This kernel has no kprobes, so the collector cannot catch map creation; instead this
 * iterator visits every live map and reads, with CO-RE, where its locks live:
 * container_of(map, struct bpf_htab, map)->buckets / n_buckets for hash maps, the freelist
 * and LRU lists, the ring buffer's spinlock and wait queue. Sizes come from the running
 * kernel's BTF (bpf_core_type_size / bpf_core_field_size), so `struct bucket` growing an
 * rqspinlock_t (6.18) needs no code change.
 *
 * Output (read by privileged-loader/src/lockstats/layout.rs): one lockstat_header with the
 * per-CPU offsets before the first map, then one lockstat_map_record per map.
 */
#include "lockstat_kernel.h"

char LICENSE[] SEC("license") = "GPL";

/* Address of __per_cpu_offset (from iter/ksym or /proc/kallsyms; 0 when the kernel does
 * not expose it, e.g. without CONFIG_KALLSYMS_ALL) and how many possible CPUs there are.
 * Set by the loader before load. */
const volatile __u64 per_cpu_offset_addr = 0;
const volatile __u32 nr_cpus = 0;

/* Without __per_cpu_offset, per-CPU offsets are measured on this map instead: the
 * kernel hands out per_cpu_ptr(pptr, cpu) for its element, and the iterator reads its
 * pptr when it visits it, so offset[cpu] = address[cpu] - pptr (done in user space). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pcpu_probe SEC(".maps");

static __always_inline bool is_hash(__u32 type)
{
	return type == BPF_MAP_TYPE_HASH || type == BPF_MAP_TYPE_PERCPU_HASH ||
	       type == BPF_MAP_TYPE_LRU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH ||
	       type == BPF_MAP_TYPE_HASH_OF_MAPS;
}

static __always_inline bool is_lru(__u32 type)
{
	return type == BPF_MAP_TYPE_LRU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

static __always_inline void write_header(struct seq_file *seq)
{
	struct lockstat_header hdr = { .magic = LOCKSTAT_HEADER_MAGIC, .nr_cpus = nr_cpus };
	__u32 zero = 0;
	__u64 value;

	hdr.kind = per_cpu_offset_addr ? LOCKSTAT_PCPU_OFFSETS : LOCKSTAT_PCPU_PROBE_ADDRS;
	bpf_seq_write(seq, &hdr, sizeof(hdr));
	for (__u32 cpu = 0; cpu < LOCKSTAT_MAX_CPUS && cpu < nr_cpus; cpu++) {
		value = 0;
		if (per_cpu_offset_addr)
			bpf_probe_read_kernel(&value, sizeof(value),
					      (void *)(per_cpu_offset_addr + cpu * sizeof(__u64)));
		else
			value = (__u64)bpf_map_lookup_percpu_elem(&pcpu_probe, &zero, cpu);
		bpf_seq_write(seq, &value, sizeof(value));
	}
}

static __always_inline void fill_hash(struct lockstat_map_record *rec, struct bpf_htab *htab)
{
	rec->buckets = (__u64)BPF_CORE_READ(htab, buckets);
	rec->n_buckets = BPF_CORE_READ(htab, n_buckets);
	rec->bucket_size = bpf_core_type_size(struct bucket);

	if (is_lru(rec->map_type)) {
		rec->lru_percpu = BPF_CORE_READ(htab, lru.percpu);
		rec->lru_list_size = bpf_core_type_size(struct bpf_lru_list);
		rec->lru_locallist_size = bpf_core_type_size(struct bpf_lru_locallist);
		if (rec->lru_percpu) {
			rec->lru_pcpu = (__u64)BPF_CORE_READ(htab, lru.percpu_lru);
		} else {
			rec->lru_global = (__u64)&htab->lru.common_lru.lru_list;
			rec->lru_pcpu = (__u64)BPF_CORE_READ(htab, lru.common_lru.local_list);
		}
		return;
	}
	if (rec->map_flags & BPF_F_NO_PREALLOC)
		return; /* bpf_mem_alloc: per-CPU caches without a lock of the map's own */
	rec->freelist_pcpu = (__u64)BPF_CORE_READ(htab, freelist.freelist);
	rec->freelist_head_size = bpf_core_type_size(struct pcpu_freelist_head);
	if (bpf_core_field_exists(htab->freelist.extralist))
		rec->extralist = (__u64)&htab->freelist.extralist;
}

static __always_inline void fill_ringbuf(struct lockstat_map_record *rec, struct bpf_ringbuf_map *rbm)
{
	struct bpf_ringbuf *rb = BPF_CORE_READ(rbm, rb);

	if (!rb)
		return;
	rec->rb_waitq = (__u64)rb + bpf_core_field_offset(struct bpf_ringbuf, waitq);
	rec->waitq_size = bpf_core_field_size(struct bpf_ringbuf, waitq);
	rec->rb_spinlock = (__u64)rb + bpf_core_field_offset(struct bpf_ringbuf, spinlock);
	rec->rb_spinlock_size = bpf_core_field_size(struct bpf_ringbuf, spinlock);
}

SEC("iter/bpf_map")
int lockstat_maps(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_map *map = ctx->map;
	struct lockstat_map_record rec = {};
	__u64 addr;

	if (!map)
		return 0;
	if (ctx->meta->seq_num == 0)
		write_header(seq);

	addr = (__u64)map;
	rec.magic = LOCKSTAT_MAP_MAGIC;
	rec.map_addr = addr;
	rec.id = BPF_CORE_READ(map, id);
	rec.map_type = BPF_CORE_READ(map, map_type);
	rec.map_flags = BPF_CORE_READ(map, map_flags);
	rec.max_entries = BPF_CORE_READ(map, max_entries);
	BPF_CORE_READ_INTO(&rec.name, map, name);

	if (is_hash(rec.map_type))
		fill_hash(&rec, (struct bpf_htab *)(addr - bpf_core_field_offset(struct bpf_htab, map)));
	else if (rec.map_type == BPF_MAP_TYPE_PERCPU_ARRAY)
		bpf_probe_read_kernel(&rec.pcpu_base, sizeof(rec.pcpu_base),
				      (void *)(addr + bpf_core_type_size(struct bpf_array)));
	else if (rec.map_type == BPF_MAP_TYPE_RINGBUF || rec.map_type == BPF_MAP_TYPE_USER_RINGBUF)
		fill_ringbuf(&rec, (struct bpf_ringbuf_map *)(addr - bpf_core_field_offset(struct bpf_ringbuf_map, map)));

	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}
