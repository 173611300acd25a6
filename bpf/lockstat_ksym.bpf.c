// SPDX-License-Identifier: GPL-2.0
/*
 * iter/ksym: the addresses of a few kernel symbols, without /proc/kallsyms.
 *
 * The loader names up to LOCKSTAT_KSYM_WANTED symbols (NUL-padded, in `wanted`); the
 * iterator walks every kernel symbol and writes one lockstat_ksym_record per match. The
 * address is written even when it is 0 so the loader can tell "hidden" from "absent".
 */
#include "lockstat_kernel.h"

char LICENSE[] SEC("license") = "GPL";

#define LOCKSTAT_KSYM_WANTED 4
#define LOCKSTAT_KSYM_NAME 64

const volatile char wanted[LOCKSTAT_KSYM_WANTED][LOCKSTAT_KSYM_NAME] = {};

static __always_inline bool same_name(const char *name, __u32 slot)
{
	for (__u32 i = 0; i < LOCKSTAT_KSYM_NAME; i++) {
		char c = wanted[slot][i];

		if (c != name[i])
			return false;
		if (c == 0)
			return true;
	}
	return false; /* longer than a slot: never wanted */
}

SEC("iter/ksym")
int lockstat_ksym(struct bpf_iter__ksym *ctx)
{
	struct kallsym_iter *sym = ctx->ksym;
	struct lockstat_ksym_record rec = {};

	if (!sym)
		return 0;
	if (bpf_probe_read_kernel_str(rec.name, sizeof(rec.name), sym->name) <= 0)
		return 0;
	for (__u32 slot = 0; slot < LOCKSTAT_KSYM_WANTED; slot++) {
		if (wanted[slot][0] == 0 || !same_name(rec.name, slot))
			continue;
		rec.addr = BPF_CORE_READ(sym, value);
		bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
		break;
	}
	return 0;
}
