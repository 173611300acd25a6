// SPDX-License-Identifier: GPL-2.0
/*
 * iter/bpf_map: the element count of every map that keeps the kernel's per-CPU element
 * counter (hash maps, LRU included, since Linux 6.6), without walking any map.
 *
 * The count is the bpf_map_sum_elem_count kfunc's. aya 0.14 cannot relocate kfunc calls,
 * so the call is written as a raw instruction whose immediate is a marker the loader
 * replaces, in the object's bytes before loading, by the kfunc's BTF id in the running
 * kernel (src/map_count.rs). Reading a whole conntrack map's keys takes one syscall per
 * key (~100 ms at 131k slots); this takes one pass over the system's maps, whatever their
 * size. A kernel without the kfunc (before 6.6) has no such BTF id: the loader then
 * walks the map instead.
 */
#include "map_count_kernel.h"

char LICENSE[] SEC("license") = "GPL";

SEC("iter/bpf_map")
int map_count(struct bpf_iter__bpf_map *ctx)
{
	struct bpf_map *map = ctx->map;
	struct map_count_record rec = {};
	__s64 count;

	if (!map)
		return 0;
	/* r0 = bpf_map_sum_elem_count(map): `call` (0x85) with src_reg BPF_PSEUDO_KFUNC_CALL
	 * (2) and the marker MAP_COUNT_KFUNC_MARKER as immediate. */
	asm volatile("r1 = %[map]\n"
		     ".byte 0x85, 0x20, 0x00, 0x00\n"
		     ".long " MAP_COUNT_KFUNC_MARKER "\n"
		     "%[count] = r0\n"
		     : [count] "=r"(count)
		     : [map] "r"(map)
		     : "r0", "r1", "r2", "r3", "r4", "r5");
	rec.id = map->id;
	rec.max_entries = map->max_entries;
	rec.entries = count;
	BPF_CORE_READ_STR_INTO(&rec.name, map, name);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
