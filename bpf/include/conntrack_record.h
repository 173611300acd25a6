/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What both conntrackers share: the translation map, its key and value, the recording
 * step, and the per-packet sampling policy of the net_dev_queue hooks.
 *
 * conntrack.bpf.c (CO-RE) and conntrack_prebuilt.bpf.c (guessed offsets) differ only in
 * how they read a struct nf_conn; once each has both tuples in struct ct_tuple form, the
 * rest is here. The key/value layout is mirrored in src/conntrack/map.rs; keep them in
 * step.
 */
#pragma once

#include "common.h"

#include <linux/bpf.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
/* enum ip_conntrack_status: IPS_SRC_NAT | IPS_DST_NAT, and IPS_ASSURED. */
#define IPS_NAT_MASK ((1UL << 4) | (1UL << 5))
#define IPS_ASSURED (1UL << 2)
/* skb->_nfct: the struct nf_conn pointer, with the packet's ctinfo in the low 3 bits. */
#define NFCT_PTRMASK (~7UL)
#define CTINFO_MASK 7UL
/* enum ip_conntrack_info */
#define IP_CT_NEW 2
#define IP_CT_IS_REPLY 3
/* A recorded entry's last_seen_ns is refreshed at most once a second per connection. */
#define REFRESH_NS 1000000000ULL
/* The net_dev_queue hooks look at one established packet in REFRESH_SAMPLE (a power of 2). */
#define REFRESH_SAMPLE 64

/* Set by the loader (EbpfLoader::override_global) from [conntrack] tcpv6/udpv6_enabled. */
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

/*
 * Connections recorded (new, or a tuple whose translation changed), per CPU: free to
 * count here, and the loader reads the rate to drop its DESTROY subscription during
 * connection storms (docs/conntrack.md, "Connection storms").
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} conntrack_new SEC(".maps");

/* Whether an entry of this family and protocol is recorded at all (config constants). */
static __always_inline int recordable(u16 l3num, u8 proto)
{
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (l3num == AF_INET)
		return 1;
	if (l3num != AF_INET6)
		return 0;
	return proto == IPPROTO_TCP ? tcpv6_enabled : udpv6_enabled;
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

static __always_inline int same_tuple(const struct ct_tuple *a, const struct ct_tuple *b)
{
	return same_addr(a->src, b->src) && same_addr(a->dst, b->dst) && a->sport == b->sport &&
	       a->dport == b->dport && a->netns == b->netns && a->proto == b->proto &&
	       a->family == b->family;
}

/*
 * Stores a NAT'd connection under both of its keys, or, when it is already there with
 * the same translation, refreshes its last_seen_ns (at most once per REFRESH_NS).
 */
static __always_inline void store(const struct ct_tuple *orig, const struct ct_tuple *reply)
{
	struct ct_value value = {};
	struct ct_value *seen;
	u64 now = bpf_ktime_get_ns();

	seen = bpf_map_lookup_elem(&conntrack, orig);
	if (seen && same_tuple(&seen->other, reply)) {
		if (now - seen->last_seen_ns > REFRESH_NS)
			seen->last_seen_ns = now;
		return;
	}
	value.other = *reply;
	value.dir = CT_DIR_ORIGINAL;
	value.last_seen_ns = now;
	bpf_map_update_elem(&conntrack, orig, &value, BPF_ANY);
	value.other = *orig;
	value.dir = CT_DIR_REPLY;
	bpf_map_update_elem(&conntrack, reply, &value, BPF_ANY);

	u32 zero = 0;
	u64 *recorded = bpf_map_lookup_elem(&conntrack_new, &zero);
	if (recorded)
		*recorded += 1;
}

/*
 * The per-packet hooks (net_dev_queue) see every transmitted packet. Recording needs the
 * first transmitted packet of a connection; the rest only refresh last_seen_ns (which
 * the sweep compares with stale_after_secs, default an hour) and re-add an entry the LRU
 * evicted. So a packet takes the recording path when it is:
 *   - IP_CT_NEW: the original direction before any reply (a TCP SYN, UDP until answered);
 *   - in the REPLY direction of an entry not yet ASSURED: the handshake, whose first
 *     reply is the first packet transmitted for a connection DNAT'd to a local server;
 *   - one of the other packets, one time in REFRESH_SAMPLE, at random.
 * An established packet costs a random number (and, in the reply direction, the status
 * read that `status_of` performs). `status_of` is a macro argument so that each object
 * reads the status its own way (CO-RE, or at a guessed offset).
 */
#define SKIP_PACKET(nfct, ct, status_of)                                                    \
	(((nfct) & CTINFO_MASK) != IP_CT_NEW && (bpf_get_prandom_u32() & (REFRESH_SAMPLE - 1)) && \
	 (((nfct) & CTINFO_MASK) < IP_CT_IS_REPLY || (status_of(ct) & IPS_ASSURED)))
