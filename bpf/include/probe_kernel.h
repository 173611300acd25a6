/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types the probe object reads, and nothing else.
 *
 * Only the BPF iterator program dereferences kernel memory (its context). The layouts
 * below are declared with preserve_access_index, so every field offset is relocated
 * against the running kernel's BTF at load time: a kernel that moved a field still
 * loads correctly, and one that lacks it fails with a relocation error naming it.
 */
#pragma once

#include "common.h"

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

struct bpf_map {
	u32 id;
};

/* Context of an iter/bpf_map program: one call per BPF map, then once with map == NULL. */
struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
};

#pragma clang attribute pop
