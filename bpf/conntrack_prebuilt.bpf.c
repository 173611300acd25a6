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
 *      skb->_nfct & ~7. Fast path: the NAT status bits are checked before anything else.
 *
 * The map key/value layout is that of conntrack.bpf.c (src/conntrack/map.rs reads both).
 */
#include "common.h"

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
/* enum ip_conntrack_status: IPS_SRC_NAT | IPS_DST_NAT. */
#define IPS_NAT_MASK ((1UL << 4) | (1UL << 5))
#define NFCT_PTRMASK (~7UL)
#define REFRESH_NS 1000000000ULL

/* Guessed offsets, set by the loader (EbpfLoader::set_global) before load. */
volatile const u64 off_nfct = 0;   /* sk_buff._nfct */
volatile const u64 off_origin = 0; /* nf_conn.tuplehash[IP_CT_DIR_ORIGINAL].tuple */
volatile const u64 off_reply = 0;  /* nf_conn.tuplehash[IP_CT_DIR_REPLY].tuple */
volatile const u64 off_status = 0; /* nf_conn.status */
volatile const u64 off_netns = 0;  /* nf_conn.ct_net.net */
volatile const u64 off_ino = 0;    /* net.ns.inum */
volatile const u8 tcpv6_enabled = 1;
volatile const u8 udpv6_enabled = 1;

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

/* Identical to struct ct_tuple / ct_value of conntrack.bpf.c: see src/conntrack/map.rs. */
struct ct_tuple {
	u8 src[16];
	u8 dst[16];
	u16 sport;
	u16 dport;
	u32 netns;
	u8 proto;
	u8 family;
	u8 _pad[2];
};

struct ct_value {
	struct ct_tuple other;
	u8 dir;
	u8 _pad[3];
	u64 last_seen_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_tuple);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

static __always_inline u64 read_u64(const void *base, u64 offset)
{
	u64 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (const u8 *)base + offset);
	return value;
}

static __always_inline int convert_tuple(const struct raw_tuple *raw, u32 netns, struct ct_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (raw->protonum != IPPROTO_TCP && raw->protonum != IPPROTO_UDP)
		return -1;
	if (raw->l3num == AF_INET) {
		t->family = 4;
		__builtin_memcpy(t->src, raw->src, 4);
		__builtin_memcpy(t->dst, raw->dst, 4);
	} else if (raw->l3num == AF_INET6) {
		if (raw->protonum == IPPROTO_TCP && !tcpv6_enabled)
			return -1;
		if (raw->protonum == IPPROTO_UDP && !udpv6_enabled)
			return -1;
		t->family = 6;
		__builtin_memcpy(t->src, raw->src, 16);
		__builtin_memcpy(t->dst, raw->dst, 16);
	} else {
		return -1;
	}
	t->sport = bpf_ntohs(raw->sport);
	t->dport = bpf_ntohs(raw->dport);
	t->proto = raw->protonum;
	t->netns = netns;
	return 0;
}

static __always_inline int same_addr(const u8 *a, const u8 *b)
{
	const u64 *x = (const u64 *)a, *y = (const u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline int is_plain_inverse(const struct ct_tuple *orig, const struct ct_tuple *reply)
{
	return same_addr(orig->src, reply->dst) && same_addr(orig->dst, reply->src) &&
	       orig->sport == reply->dport && orig->dport == reply->sport;
}

static __always_inline int same_tuple(const struct ct_tuple *a, const struct ct_tuple *b)
{
	return same_addr(a->src, b->src) && same_addr(a->dst, b->dst) && a->sport == b->sport &&
	       a->dport == b->dport && a->netns == b->netns && a->proto == b->proto &&
	       a->family == b->family;
}

static __always_inline void record(const void *conn)
{
	struct raw_tuple raw;
	struct ct_tuple orig, reply;
	struct ct_value value = {};
	struct ct_value *seen;
	u32 netns = 0;
	u64 now;

	if (!conn)
		return;
	if (!(read_u64(conn, off_status) & IPS_NAT_MASK))
		return;
	bpf_probe_read_kernel(&netns, sizeof(netns), (const u8 *)read_u64(conn, off_netns) + off_ino);

	if (bpf_probe_read_kernel(&raw, sizeof(raw), (const u8 *)conn + off_origin) ||
	    convert_tuple(&raw, netns, &orig))
		return;
	if (bpf_probe_read_kernel(&raw, sizeof(raw), (const u8 *)conn + off_reply) ||
	    convert_tuple(&raw, netns, &reply))
		return;
	if (is_plain_inverse(&orig, &reply))
		return;

	now = bpf_ktime_get_ns();
	seen = bpf_map_lookup_elem(&conntrack, &orig);
	if (seen && same_tuple(&seen->other, &reply)) {
		if (now - seen->last_seen_ns > REFRESH_NS)
			seen->last_seen_ns = now;
		return;
	}
	value.other = reply;
	value.dir = 0;
	value.last_seen_ns = now;
	bpf_map_update_elem(&conntrack, &orig, &value, BPF_ANY);
	value.other = orig;
	value.dir = 1;
	bpf_map_update_elem(&conntrack, &reply, &value, BPF_ANY);
}

/* Strategy 1: once per entry, where kprobes exist. */
SEC("kprobe/__nf_conntrack_hash_insert")
int prebuilt_kprobe_hash_insert(struct x86_regs *ctx)
{
	record((const void *)ctx->di);
	return 0;
}

/* Strategy 2: every transmitted skb; BTF-free, args[0] is the skb. */
SEC("raw_tracepoint/net_dev_queue")
int prebuilt_net_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	const void *skb = (const void *)ctx->args[0];

	record((const void *)(read_u64(skb, off_nfct) & NFCT_PTRMASK));
	return 0;
}
