/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel support check (privileged-loader probe): one tiny program per attach kind.
 *
 * The loader decides what this kernel can do by loading and attaching each program, not
 * from version tables: a feature backported to an old kernel, or blocked on a new one
 * (fentry is EPERM when ftrace is locked down), is seen as it really is. Every program
 * does nothing and returns at once; each is detached right after its attach succeeded.
 */
#include "probe_kernel.h"

char LICENSE[] SEC("license") = "GPL";

/* Attach target chosen by the loader (vfs_read): exists on every kernel. */
SEC("fentry")
int BPF_PROG(probe_fentry)
{
	return 0;
}

/* Attach target chosen by the loader; a kprobe needs CONFIG_KPROBES. */
SEC("kprobe")
int probe_kprobe(struct pt_regs *ctx)
{
	return 0;
}

/* The hook the CO-RE conntracker falls back to. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(probe_tp_btf)
{
	return 0;
}

/* BTF-free hook kind of the prebuilt conntracker; attached to net_dev_xmit by the loader. */
SEC("raw_tracepoint")
int probe_raw_tracepoint(void *ctx)
{
	return 0;
}

/* One line per BPF map: proves an iterator can be created and read. */
SEC("iter/bpf_map")
int probe_iter(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_map *map = ctx->map;

	if (!map)
		return 0;
	BPF_SEQ_PRINTF(seq, "%u\n", map->id);
	return 0;
}
