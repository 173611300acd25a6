/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types map_count.bpf.c reads, trimmed (see common.h).
 */
#pragma once

#include "common.h"

/* include/linux/bpf.h */
struct bpf_map {
	__u32 id;
	__u32 max_entries;
	char name[16];
} __attribute__((preserve_access_index));

/* include/linux/bpf.h */
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

/* kernel/bpf/map_iter.c: the context of iter/bpf_map. */
struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
} __attribute__((preserve_access_index));

/* The immediate of the kfunc call the loader replaces (0x7f4d4331, "1CM\x7f"). */
#define MAP_COUNT_KFUNC_MARKER "0x7f4d4331"

/* One record per map that keeps the counter, read by the loader (src/api/fill_count.rs). */
struct map_count_record {
	__u32 id;
	__u32 max_entries;
	__s64 entries;
	char name[16];
};
