/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TEST-ONLY object: the "proof the matrix can fail".
 *
 * tests/qemu/run-matrix.sh compiles this file into <bpf-dir>/conntrack.bpf.o and starts
 * `privileged-loader run --bpf-dir <bpf-dir>` inside the Debian 6.1 guests. The object has
 * the program names and constants of the real CO-RE conntracker (bpf/conntrack.bpf.c), so
 * the loader tries every attach strategy with it, but every program reads
 * `struct net_device::irq_moder`, a field added in Linux 6.11 (present on the 6.18 host,
 * absent from Debian's 6.1 BTF). aya poisons the unresolvable CO-RE relocation, the 6.1
 * verifier rejects the poisoned call, and the matrix expects `loaderctl status --json` to
 * show asset "conntrack" as `verifier-error`. If that ever stops happening, the matrix
 * fails: it would mean a relocation against a missing field no longer surfaces.
 *
 * Never embedded in the loader: it lives under tests/qemu/, not bpf/.
 */
#include "common.h"

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct dim_irq_moder;

struct net_device {
	/* Linux >= 6.11 only: the field this object exists to miss on 6.1. */
	struct dim_irq_moder *irq_moder;
};

struct net {
	struct net_device *loopback_dev;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct nf_conn {
	possible_net_t ct_net;
};

struct sk_buff {
	struct net_device *dev;
};

struct pt_regs {
	unsigned long di;
};
#pragma clang attribute pop

/* The raw tracepoint's context (as in the kernel's uapi): the hook the loader tries after
 * tp_btf, so the object must carry it like the real conntracker does. */
struct bpf_raw_tracepoint_args {
	unsigned long long args[0];
};

char LICENSE[] SEC("license") = "GPL";

/* The real conntracker sets these with override_global(.., must_exist = true). */
volatile const u8 tcpv6_enabled = 1;
volatile const u8 udpv6_enabled = 1;

/* Written so that the reads below are not optimised away. */
u64 moder_seen;

static __always_inline void note(struct net_device *dev)
{
	if (BPF_CORE_READ(dev, irq_moder))
		__sync_fetch_and_add(&moder_seen, 1);
}

static __always_inline void note_conn(struct nf_conn *ct)
{
	note(BPF_CORE_READ(ct, ct_net.net, loopback_dev));
}

SEC("fentry/__nf_conntrack_hash_insert")
int BPF_PROG(ct_fentry_hash_insert, struct nf_conn *ct)
{
	note_conn(ct);
	return 0;
}

SEC("kprobe/__nf_conntrack_hash_insert")
int ct_kprobe_hash_insert(struct pt_regs *ctx)
{
	note_conn((struct nf_conn *)BPF_CORE_READ(ctx, di));
	return 0;
}

SEC("kprobe/__nf_conntrack_confirm")
int ct_kprobe_confirm(struct pt_regs *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)BPF_CORE_READ(ctx, di);

	note(BPF_CORE_READ(skb, dev));
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int ct_kretprobe_confirm(struct pt_regs *ctx)
{
	note(NULL);
	return 0;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(ct_net_dev_queue, struct sk_buff *skb)
{
	note(BPF_CORE_READ(skb, dev));
	return 0;
}

SEC("raw_tracepoint/net_dev_queue")
int ct_raw_net_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];

	note(BPF_CORE_READ(skb, dev));
	return 0;
}
