// SPDX-License-Identifier: GPL-2.0
/*
 * The CO-RE conntracker: records every NAT'd conntrack entry in an LRU hash map keyed
 * both ways (original tuple -> reply tuple and reply tuple -> original tuple), so that
 * userspace can translate a connection seen from either end.
 *
 * Three hooks feed the same recording function; userspace loads and attaches only the
 * first that works on the running kernel (src/conntrack/core.rs):
 *   1. fentry/__nf_conntrack_hash_insert: called once per confirmed entry (cheapest);
 *   2. kprobe/__nf_conntrack_hash_insert, or the kprobe/kretprobe pair on
 *      __nf_conntrack_confirm where hash_insert is not a visible symbol;
 *   3. tp_btf/net_dev_queue: every transmitted skb; skb->_nfct & ~7 is the entry. Seen
 *      for every packet, so only new and handshake packets (and a sample of the rest)
 *      take the recording path; see the program below.
 *
 * The key/value layout is mirrored in src/conntrack/map.rs; keep them in step.
 */
#include "common.h"
#include "conntrack_kernel.h"

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
#define NF_ACCEPT 1
/* A recorded entry's last_seen_ns is refreshed at most once a second per connection. */
#define REFRESH_NS 1000000000ULL

/* Set by the loader (EbpfLoader::set_global) from [conntrack] tcpv6_enabled/udpv6_enabled. */
volatile const u8 tcpv6_enabled = 1;
volatile const u8 udpv6_enabled = 1;

/* One direction of a connection. Explicitly padded: hash keys are compared bytewise. */
struct ct_tuple {
	u8 src[16];  /* network byte order; IPv4 uses the first 4 bytes, the rest is zero */
	u8 dst[16];
	u16 sport;   /* host byte order */
	u16 dport;
	u32 netns;   /* inode of the entry's network namespace */
	u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	u8 family;   /* 4 or 6 */
	u8 _pad[2];
};

#define CT_DIR_ORIGINAL 0
#define CT_DIR_REPLY 1

struct ct_value {
	struct ct_tuple other; /* the translation: the tuple of the opposite direction */
	u8 dir;                /* direction of the KEY: CT_DIR_ORIGINAL or CT_DIR_REPLY */
	u8 _pad[3];
	u64 last_seen_ns;      /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last refresh */
};

/* max_entries is replaced at load time from [conntrack] max_entries. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_tuple);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

/* kprobe/kretprobe pair on __nf_conntrack_confirm: the skb argument, per thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u64);
	__type(value, u64);
} confirm_args SEC(".maps");

/*
 * Per-packet cost is dominated by helper calls, so an entry is copied with ONE
 * bpf_probe_read_kernel of the span of struct nf_conn from tuplehash[0].tuple to the end of
 * ct_net (both tuples, the status bits and the namespace pointer; offsets and sizes from
 * the kernel's BTF), and its fields are picked out of the copy at the kernel's offsets:
 * CO-RE without a helper call per field. Only the namespace inode takes a second read,
 * and only for an entry that is NAT'd. Every bound below is checked against relocated
 * constants, which is what lets the verifier accept the variable offsets.
 */
#define CONN_COPY 192
#define TUPLE_COPY 64

#define FIELD_AT(buf, field, type)                                                          \
	({                                                                                  \
		u32 ___off = bpf_core_field_offset(struct nf_conntrack_tuple, field);        \
		type ___v = 0;                                                              \
		if (___off <= TUPLE_COPY - sizeof(type))                                    \
			__builtin_memcpy(&___v, (buf) + ___off, sizeof(type));             \
		___v;                                                                       \
	})

static __always_inline int copy_addr(u8 *dst, const u8 *buf, u32 off, u32 len)
{
	if (off > TUPLE_COPY - 16)
		return -1;
	if (len == 4)
		__builtin_memcpy(dst, buf + off, 4);
	else
		__builtin_memcpy(dst, buf + off, 16);
	return 0;
}

/* Parses the kernel tuple at buf (TUPLE_COPY readable bytes) into t; netns is set later. */
static __always_inline int parse_tuple(const u8 *buf, struct ct_tuple *t)
{
	u16 l3 = FIELD_AT(buf, src.l3num, u16);
	u8 proto = FIELD_AT(buf, dst.protonum, u8);
	u32 src_off = bpf_core_field_offset(struct nf_conntrack_tuple, src.u3);
	u32 dst_off = bpf_core_field_offset(struct nf_conntrack_tuple, dst.u3);
	u32 len;

	__builtin_memset(t, 0, sizeof(*t));
	if (bpf_core_type_size(struct nf_conntrack_tuple) > TUPLE_COPY)
		return -1;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	if (l3 == AF_INET) {
		t->family = 4;
		len = 4;
	} else if (l3 == AF_INET6) {
		if (proto == IPPROTO_TCP && !tcpv6_enabled)
			return -1;
		if (proto == IPPROTO_UDP && !udpv6_enabled)
			return -1;
		t->family = 6;
		len = 16;
	} else {
		return -1;
	}
	if (copy_addr(t->src, buf, src_off, len) || copy_addr(t->dst, buf, dst_off, len))
		return -1;
	t->sport = bpf_ntohs(FIELD_AT(buf, src.u.all, u16));
	t->dport = bpf_ntohs(FIELD_AT(buf, dst.u.all, u16));
	t->proto = proto;
	return 0;
}

static __always_inline int same_addr(const u8 *a, const u8 *b)
{
	const u64 *x = (const u64 *)a, *y = (const u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

/* True when the reply tuple is exactly the original one turned around: no NAT. */
static __always_inline int is_plain_inverse(const struct ct_tuple *orig, const struct ct_tuple *reply)
{
	return same_addr(orig->src, reply->dst) && same_addr(orig->dst, reply->src) &&
	       orig->sport == reply->dport && orig->dport == reply->sport;
}

/* The copy starts at nf_conn.tuplehash[0].tuple; offsets inside it. */
#define CONN_START                                                                          \
	(bpf_core_field_offset(struct nf_conn, tuplehash) +                                  \
	 bpf_core_field_offset(struct nf_conntrack_tuple_hash, tuple))
#define CONN_OFF(field) (bpf_core_field_offset(struct nf_conn, field) - CONN_START)

/*
 * Reads a conntrack entry's tuples and, when it is NAT'd, its namespace inode. Returns 0
 * with both tuples filled for a NAT'd TCP/UDP entry whose reply is not the plain inverse
 * of its original; -1 for every entry there is nothing to record for.
 */
static __always_inline int read_conn(struct nf_conn *ct, struct ct_tuple *orig, struct ct_tuple *reply)
{
	u8 raw[CONN_COPY];
	u32 reply_off = bpf_core_type_size(struct nf_conntrack_tuple_hash); /* tuplehash[1].tuple */
	u32 status_off = CONN_OFF(status);
	u32 net_off = CONN_OFF(ct_net);
	u32 len = net_off + sizeof(void *);
	unsigned long status;
	struct net *net;

	if (!ct || len > CONN_COPY || reply_off > CONN_COPY - TUPLE_COPY ||
	    status_off > CONN_COPY - sizeof(status) || net_off > CONN_COPY - sizeof(net))
		return -1;
	if (bpf_probe_read_kernel(raw, len, (u8 *)ct + CONN_START))
		return -1;
	__builtin_memcpy(&status, raw + status_off, sizeof(status));
	if (!(status & IPS_NAT_MASK))
		return -1;
	if (parse_tuple(raw, orig) || parse_tuple(raw + reply_off, reply))
		return -1;
	if (is_plain_inverse(orig, reply))
		return -1;
	__builtin_memcpy(&net, raw + net_off, sizeof(net));
	orig->netns = reply->netns = BPF_CORE_READ(net, ns.inum);
	return 0;
}

static __always_inline int same_tuple(const struct ct_tuple *a, const struct ct_tuple *b)
{
	return same_addr(a->src, b->src) && same_addr(a->dst, b->dst) && a->sport == b->sport &&
	       a->dport == b->dport && a->netns == b->netns && a->proto == b->proto &&
	       a->family == b->family;
}

static __always_inline void record(struct nf_conn *ct)
{
	struct ct_tuple orig, reply;
	struct ct_value value = {};
	struct ct_value *seen;
	u64 now;

	if (read_conn(ct, &orig, &reply))
		return;

	now = bpf_ktime_get_ns();
	seen = bpf_map_lookup_elem(&conntrack, &orig);
	if (seen && same_tuple(&seen->other, &reply)) {
		if (now - seen->last_seen_ns > REFRESH_NS)
			seen->last_seen_ns = now;
		return;
	}

	value.other = reply;
	value.dir = CT_DIR_ORIGINAL;
	value.last_seen_ns = now;
	bpf_map_update_elem(&conntrack, &orig, &value, BPF_ANY);
	value.other = orig;
	value.dir = CT_DIR_REPLY;
	bpf_map_update_elem(&conntrack, &reply, &value, BPF_ANY);
}

static __always_inline struct nf_conn *skb_conn(struct sk_buff *skb)
{
	unsigned long nfct = BPF_CORE_READ(skb, _nfct);

	return (struct nf_conn *)(nfct & NFCT_PTRMASK);
}

/* Strategy 1: once per entry, when conntrack inserts it into its hash table. */
SEC("fentry/__nf_conntrack_hash_insert")
int BPF_PROG(ct_fentry_hash_insert, struct nf_conn *ct)
{
	record(ct);
	return 0;
}

/* Strategy 2a: the same hook as a kprobe, for kernels where fentry is unavailable. */
/*
 * The kprobes read the argument registers directly (not through BPF_KPROBE): without a
 * vmlinux.h, bpf_tracing.h would name them after the userspace pt_regs (rdi, rax), which
 * the kernel's BTF does not know.
 */
SEC("kprobe/__nf_conntrack_hash_insert")
int ct_kprobe_hash_insert(struct pt_regs *ctx)
{
	record((struct nf_conn *)ctx->di);
	return 0;
}

/* Strategy 2b: where __nf_conntrack_hash_insert is inlined away, confirm + its return. */
SEC("kprobe/__nf_conntrack_confirm")
int ct_kprobe_confirm(struct pt_regs *ctx)
{
	u64 tid = bpf_get_current_pid_tgid();
	u64 arg = ctx->di;

	bpf_map_update_elem(&confirm_args, &tid, &arg, BPF_ANY);
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int ct_kretprobe_confirm(struct pt_regs *ctx)
{
	int ret = (int)ctx->ax;
	u64 tid = bpf_get_current_pid_tgid();
	u64 *arg = bpf_map_lookup_elem(&confirm_args, &tid);
	struct sk_buff *skb;

	if (!arg)
		return 0;
	skb = (struct sk_buff *)*arg;
	bpf_map_delete_elem(&confirm_args, &tid);
	if (ret == NF_ACCEPT)
		record(skb_conn(skb));
	return 0;
}

/*
 * Strategy 3: every transmitted packet carries its conntrack entry in skb->_nfct, with
 * the packet's ctinfo in the low 3 bits. Recording needs the first transmitted packet of
 * a connection; the rest only refresh last_seen_ns (which the sweep compares with
 * stale_after_secs, default an hour) and re-add an entry the LRU evicted. So the full
 * path runs for:
 *   - IP_CT_NEW: the original direction before any reply (a TCP SYN, UDP until answered);
 *   - a REPLY-direction packet of an entry not yet ASSURED: the handshake, whose first
 *     reply is the first packet transmitted for a connection DNAT'd to a local server;
 *   - one other packet in REFRESH_SAMPLE, at random.
 * An established packet costs a direct load and a random number (and, in the reply
 * direction, one 8-byte read): measured in docs/benchmarks.md.
 */
#define IP_CT_NEW 2
#define IP_CT_IS_REPLY 3
#define CTINFO_MASK 7UL
#define IPS_ASSURED (1UL << 2)
#define REFRESH_SAMPLE 64 /* a power of two */

SEC("tp_btf/net_dev_queue")
int BPF_PROG(ct_net_dev_queue, struct sk_buff *skb)
{
	/* The tracepoint's skb is a BTF pointer the verifier trusts: a direct load. */
	unsigned long nfct = skb->_nfct;
	struct nf_conn *ct = (struct nf_conn *)(nfct & NFCT_PTRMASK);

	unsigned long ctinfo = nfct & CTINFO_MASK;

	if (!ct)
		return 0;
	if (ctinfo != IP_CT_NEW && (bpf_get_prandom_u32() & (REFRESH_SAMPLE - 1)) &&
	    (ctinfo < IP_CT_IS_REPLY || (BPF_CORE_READ(ct, status) & IPS_ASSURED)))
		return 0;
	record(ct);
	return 0;
}
