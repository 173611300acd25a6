// SPDX-License-Identifier: GPL-2.0
/*
 * The prebuilt conntracker: the same job as conntrack.bpf.c (record every NAT'd conntrack
 * entry in an LRU map keyed both ways) for kernels without BTF.
 *
 * It uses no kernel type and has no CO-RE relocation: struct sk_buff, struct nf_conn and
 * struct net are opaque byte ranges here, and every field is read with
 * bpf_probe_read_kernel at an offset the loader found by offset guessing
 * (src/offsetguess) and wrote into the `volatile const` globals below before loading.
 * The one layout assumed rather than guessed is struct nf_conntrack_tuple itself (40
 * bytes: address, port, family, address, port, protocol, direction), stable since 2.6.
 *
 * Two hooks, the loader attaches the first that works (src/conntrack/prebuilt.rs):
 *   1. kprobe/__nf_conntrack_hash_insert: once per confirmed entry, its first argument;
 *   2. raw_tracepoint/net_dev_queue: every transmitted skb (args[0]); the entry is
 *      skb->_nfct & ~7, sampled as in the CO-RE object.
 *
 * The map, its layout and the recording step are shared with the CO-RE object:
 * include/conntrack_record.h.
 */
#include "conntrack_record.h"

#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* Guessed offsets, set by the loader (EbpfLoader::set_global) before load. */
volatile const u64 off_nfct = 0;   /* sk_buff._nfct */
volatile const u64 off_origin = 0; /* nf_conn.tuplehash[IP_CT_DIR_ORIGINAL].tuple */
volatile const u64 off_reply = 0;  /* nf_conn.tuplehash[IP_CT_DIR_REPLY].tuple */
volatile const u64 off_status = 0; /* nf_conn.status */
volatile const u64 off_netns = 0;  /* nf_conn.ct_net.net */
volatile const u64 off_ino = 0;    /* net.ns.inum */

/* struct nf_conntrack_tuple, written out: no kernel BTF involved. */
struct raw_tuple {
	u8 src[16];
	u16 sport; /* network byte order */
	u16 l3num;
	u8 dst[16];
	u16 dport; /* network byte order */
	u8 protonum;
	u8 dir;
};

_Static_assert(sizeof(struct raw_tuple) == 40, "struct nf_conntrack_tuple is 40 bytes");

/* The x86_64 struct pt_regs, up to the first argument register (di). */
struct x86_regs {
	u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
};

static __always_inline u64 read_u64(const void *base, u64 offset)
{
	u64 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (const u8 *)base + offset);
	return value;
}

static __always_inline int convert_tuple(const struct raw_tuple *raw, u32 netns, struct ct_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (!recordable(raw->l3num, raw->protonum))
		return -1;
	if (raw->l3num == AF_INET) {
		t->family = 4;
		__builtin_memcpy(t->src, raw->src, 4);
		__builtin_memcpy(t->dst, raw->dst, 4);
	} else {
		t->family = 6;
		__builtin_memcpy(t->src, raw->src, 16);
		__builtin_memcpy(t->dst, raw->dst, 16);
	}
	t->sport = bpf_ntohs(raw->sport);
	t->dport = bpf_ntohs(raw->dport);
	t->proto = raw->protonum;
	t->netns = netns;
	return 0;
}

/*
 * Records a NAT'd entry, as the CO-RE object does; `action` and h as there: a handshake
 * reply that its IP_CT_NEW packet's record spares stops after reading the tuples.
 */
static __always_inline void record(const void *conn, struct hook_cpu *h, int action)
{
	struct raw_tuple raw_orig, raw_reply;
	struct ct_tuple orig, reply;
	u64 net, removals = removals_now();
	u32 netns = 0;

	if (!conn)
		return;
	if (!(read_u64(conn, off_status) & IPS_NAT_MASK))
		return;
	if (bpf_probe_read_kernel(&raw_orig, sizeof(raw_orig), (const u8 *)conn + off_origin) ||
	    bpf_probe_read_kernel(&raw_reply, sizeof(raw_reply), (const u8 *)conn + off_reply))
		return;
	net = read_u64(conn, off_netns);
	if (spared_by_recent(h, action, (u64)conn, net, (const u8 *)&raw_orig, (const u8 *)&raw_reply))
		return;
	if (convert_tuple(&raw_orig, 0, &orig) || convert_tuple(&raw_reply, 0, &reply))
		return;
	if (is_plain_inverse(&orig, &reply))
		return;
	/* The namespace's inode only for an entry that will be recorded. */
	bpf_probe_read_kernel(&netns, sizeof(netns), (const u8 *)net + off_ino);
	orig.netns = reply.netns = netns;

	if (!store(&orig, &reply))
		recent_remember(h, action, removals, (u64)conn, net, (const u8 *)&raw_orig,
				(const u8 *)&raw_reply);
}

/* Strategy 1: once per entry, where kprobes exist. */
SEC("kprobe/__nf_conntrack_hash_insert")
int prebuilt_kprobe_hash_insert(struct x86_regs *ctx)
{
	count_new();
	record((const void *)ctx->di, 0, RECORD_ALWAYS);
	return 0;
}

/* The status bits at their guessed offset, for PACKET_ACTION. */
static __always_inline u64 guessed_status(const void *conn)
{
	return read_u64(conn, off_status);
}

/*
 * Strategy 2: every transmitted skb; BTF-free, args[0] is the skb. Only new and
 * handshake packets, and a sample of the rest, take the recording path (PACKET_ACTION in
 * conntrack_record.h).
 */
SEC("raw_tracepoint/net_dev_queue")
int prebuilt_net_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	const void *skb = (const void *)ctx->args[0];
	u64 nfct = read_u64(skb, off_nfct);
	const void *conn = (const void *)(nfct & NFCT_PTRMASK);
	struct hook_cpu *h = hook_cpu();
	int action;

	if (!conn || !h)
		return 0;
	action = PACKET_ACTION(h, nfct, conn, guessed_status);
	if (action != PACKET_SKIP)
		record(conn, h, action);
	return 0;
}
