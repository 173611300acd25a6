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
 * The map, its layout and the recording step are shared with the prebuilt object:
 * include/conntrack_record.h.
 */
#include "conntrack_record.h"
#include "conntrack_kernel.h"

#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define NF_ACCEPT 1

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
	if (bpf_core_type_size(struct nf_conntrack_tuple) > TUPLE_COPY || !recordable(l3, proto))
		return -1;
	t->family = l3 == AF_INET ? 4 : 6;
	len = l3 == AF_INET ? 4 : 16;
	if (copy_addr(t->src, buf, src_off, len) || copy_addr(t->dst, buf, dst_off, len))
		return -1;
	t->sport = bpf_ntohs(FIELD_AT(buf, src.u.all, u16));
	t->dport = bpf_ntohs(FIELD_AT(buf, dst.u.all, u16));
	t->proto = proto;
	return 0;
}

/* The copy starts at nf_conn.tuplehash[0].tuple; offsets inside it. */
#define CONN_START                                                                          \
	(bpf_core_field_offset(struct nf_conn, tuplehash) +                                  \
	 bpf_core_field_offset(struct nf_conntrack_tuple_hash, tuple))
#define CONN_OFF(field) (bpf_core_field_offset(struct nf_conn, field) - CONN_START)

/*
 * Records a conntrack entry when it is a NAT'd TCP/UDP entry whose reply is not the plain
 * inverse of its original. `action` and h (a per-packet hook's per-CPU state, or 0) as in
 * conntrack_record.h: a handshake reply that its IP_CT_NEW packet's record spares stops
 * after the one copy, with no parse, namespace read, clock read or map lookup.
 */
static __always_inline void record(struct nf_conn *ct, struct hook_cpu *h, int action)
{
	u8 raw[CONN_COPY];
	u32 reply_off = bpf_core_type_size(struct nf_conntrack_tuple_hash); /* tuplehash[1].tuple */
	u32 status_off = CONN_OFF(status);
	u32 net_off = CONN_OFF(ct_net);
	u32 len = net_off + sizeof(void *);
	struct ct_tuple orig, reply;
	unsigned long status;
	struct net *net;
	u64 removals = removals_now();

	if (!ct || len > CONN_COPY || reply_off > CONN_COPY - TUPLE_COPY ||
	    status_off > CONN_COPY - sizeof(status) || net_off > CONN_COPY - sizeof(net))
		return;
	if (bpf_probe_read_kernel(raw, len, (u8 *)ct + CONN_START))
		return;
	__builtin_memcpy(&status, raw + status_off, sizeof(status));
	if (!(status & IPS_NAT_MASK))
		return;
	__builtin_memcpy(&net, raw + net_off, sizeof(net));
	if (spared_by_recent(h, action, (u64)ct, (u64)net, raw, raw + reply_off))
		return;
	if (parse_tuple(raw, &orig) || parse_tuple(raw + reply_off, &reply))
		return;
	if (is_plain_inverse(&orig, &reply))
		return;
	orig.netns = reply.netns = BPF_CORE_READ(net, ns.inum);
	if (!store(&orig, &reply))
		recent_remember(h, action, removals, (u64)ct, (u64)net, raw, raw + reply_off);
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
	count_new();
	record(ct, 0, RECORD_ALWAYS);
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
	count_new();
	record((struct nf_conn *)ctx->di, 0, RECORD_ALWAYS);
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
	if (ret == NF_ACCEPT) {
		count_new();
		record(skb_conn(skb), 0, RECORD_ALWAYS);
	}
	return 0;
}

/* The status bits, for PACKET_ACTION. */
static __always_inline unsigned long conn_status(struct nf_conn *ct)
{
	return BPF_CORE_READ(ct, status);
}

/* Both per-packet hooks, once they have the packet's skb->_nfct. */
static __always_inline void on_packet(unsigned long nfct)
{
	struct nf_conn *ct = (struct nf_conn *)(nfct & NFCT_PTRMASK);
	struct hook_cpu *h = hook_cpu();
	int action;

	if (!ct || !h)
		return;
	action = PACKET_ACTION(h, nfct, ct, conn_status);
	if (action != PACKET_SKIP)
		record(ct, h, action);
}

/*
 * Strategy 3: every transmitted packet carries its conntrack entry in skb->_nfct; only
 * new and handshake packets, and a sample of the rest, take the recording path
 * (PACKET_ACTION in conntrack_record.h).
 */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(ct_net_dev_queue, struct sk_buff *skb)
{
	/* The tracepoint's skb is a BTF pointer the verifier trusts: a direct load. */
	on_packet(skb->_nfct);
	return 0;
}

/*
 * Strategy 4: the same per-packet hook as a raw tracepoint, for BTF the kernel does not
 * publish itself (remote config, btf.file, BTFHub). tp_btf resolves its target by type id
 * in the kernel's own BTF, so it cannot attach there; a raw tracepoint needs no kernel
 * BTF, and the field offsets still come from CO-RE relocations against the external BTF
 * (unlike the prebuilt object's guessed ones). args[0] is an untrusted pointer: every
 * read goes through bpf_probe_read_kernel (BPF_CORE_READ).
 */
SEC("raw_tracepoint/net_dev_queue")
int ct_raw_net_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];

	on_packet(BPF_CORE_READ(skb, _nfct));
	return 0;
}
