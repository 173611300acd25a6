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
 * New conntrack entries the hook saw, NAT'd or not, per CPU: free to count here, and the
 * loader reads the rate to drop its DESTROY subscription during connection storms
 * (docs/conntrack.md, "Connection storms"). Every entry counts, because the
 * subscription's price is paid per entry; a reused tuple whose translation the map
 * already holds is a new entry too (counting only changed translations saw a fifth of a
 * 20,000/s storm, whose clients reuse their ports).
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
 * Returns 0 when both keys hold the translation.
 */
static __always_inline int store(const struct ct_tuple *orig, const struct ct_tuple *reply)
{
	struct ct_value value = {};
	struct ct_value *seen;
	u64 now = bpf_ktime_get_ns();

	seen = bpf_map_lookup_elem(&conntrack, orig);
	if (seen && same_tuple(&seen->other, reply)) {
		if (now - seen->last_seen_ns > REFRESH_NS)
			seen->last_seen_ns = now;
		return 0;
	}
	value.other = *reply;
	value.dir = CT_DIR_ORIGINAL;
	value.last_seen_ns = now;
	if (bpf_map_update_elem(&conntrack, orig, &value, BPF_ANY))
		return -1;
	value.other = *orig;
	value.dir = CT_DIR_REPLY;
	return bpf_map_update_elem(&conntrack, reply, &value, BPF_ANY) ? -1 : 0;
}

/* Counts one new conntrack entry (the storm guard's rate). */
static __always_inline void count_new(void)
{
	u32 zero = 0;
	u64 *seen = bpf_map_lookup_elem(&conntrack_new, &zero);

	if (seen)
		*seen += 1;
}

/*
 * Bumped by the loader around every removal from the conntrack map (MapTracker::
 * remove_keys): odd while one is under way. A slot of the per-CPU cache below is valid
 * only under the value it was filled with, so nothing the loader removed after a record
 * is taken as still recorded.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} conntrack_removals SEC(".maps");

/* The removal generation now; odd (never valid) if it cannot be read. */
static __always_inline u64 removals_now(void)
{
	u32 zero = 0;
	u64 *gen = bpf_map_lookup_elem(&conntrack_removals, &zero);

	return gen ? *(volatile u64 *)gen : 1;
}

/*
 * Per-CPU state of the per-packet hooks (net_dev_queue), which run for every transmitted
 * packet: everything here is there to keep that common path free of helper calls and
 * map work. Per CPU, so no locking; the kernel does not nest a program's runs on one CPU.
 */
#define RECENT_SLOTS 64 /* a power of 2 */
#define KERNEL_TUPLE_WORDS 5 /* struct nf_conntrack_tuple: 40 bytes since 2.6 */

/*
 * An entry this CPU recorded from its IP_CT_NEW packet, until its first handshake reply
 * (one-shot), with what identifies it beyond its address (reused by the next entry as
 * soon as one is freed): its tuples as read, its namespace and the removal generation.
 */
struct recent_entry {
	u64 ct;                          /* the struct nf_conn pointer; 0 = empty */
	u64 net;                         /* its struct net pointer */
	u64 removals;                    /* conntrack_removals when it was recorded (even) */
	u64 orig[KERNEL_TUPLE_WORDS];    /* its two kernel tuples, bytes as read */
	u64 reply[KERNEL_TUPLE_WORDS];
};

struct hook_cpu {
	u64 rng; /* xorshift64 state of the refresh sample; 0 until first seeded */
	struct recent_entry recent[RECENT_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct hook_cpu);
} conntrack_hook SEC(".maps");

static __always_inline struct hook_cpu *hook_cpu(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&conntrack_hook, &zero);
}

/*
 * One packet in REFRESH_SAMPLE, at random. A xorshift64 step in the per-CPU state rather
 * than bpf_get_prandom_u32: no helper call on the common path. Random rather than every
 * REFRESH_SAMPLE-th packet, so that flows interleaving in step cannot all miss the sample.
 */
static __always_inline int sampled(struct hook_cpu *h)
{
	u64 x = h->rng;

	if (!x)
		x = ((u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32() | 1;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	h->rng = x;
	/* The high bits: xorshift's low bits are its weakest. */
	return (x >> 58) < 64 / REFRESH_SAMPLE;
}

/* The direct-mapped slot of entry ct (slab objects are at least 64-byte aligned). */
static __always_inline struct recent_entry *recent_slot(struct hook_cpu *h, u64 ct)
{
	return &h->recent[((ct >> 6) ^ (ct >> 12)) & (RECENT_SLOTS - 1)];
}

static __always_inline int same_words(const u64 *a, const u8 *b)
{
	u64 w;

#pragma unroll
	for (int i = 0; i < KERNEL_TUPLE_WORDS; i++) {
		__builtin_memcpy(&w, b + i * 8, 8);
		if (a[i] != w)
			return 0;
	}
	return 1;
}

/*
 * What a per-packet hook does with a packet (PACKET_ACTION below), and how record() in
 * each object uses the per-CPU cache:
 *   PACKET_SKIP:      nothing;
 *   PACKET_NEW:       record the entry, then fill its cache slot (recent_remember);
 *   PACKET_HANDSHAKE: record it, unless its slot was filled by its own IP_CT_NEW packet
 *                     since the last removal (spared_by_recent, which empties the slot);
 *   RECORD_ALWAYS:    record it, no cache: the sample that refreshes last_seen_ns and
 *                     re-adds an entry the LRU evicted, and every once-per-entry hook.
 */
#define PACKET_SKIP 0
#define PACKET_NEW 1
#define PACKET_HANDSHAKE 2
#define RECORD_ALWAYS 3

/*
 * Whether a handshake reply of entry ct (its tuples as read, its namespace) needs no
 * record: this CPU recorded this very entry from its IP_CT_NEW packet and the loader has
 * removed nothing since, so the map still holds what that record wrote (short of an LRU
 * eviction in between, which the sample repairs as for any established packet). Spares
 * one reply per record: the slot is emptied. Why only after an IP_CT_NEW record: an entry
 * whose first packet here was a reply (a connection to a local server) has no further
 * unassured reply to empty its slot, and the next entry at its address with its tuples
 * would otherwise find it filled; an entry whose IP_CT_NEW packet is transmitted here
 * has its handshake replies transmitted here too, or the next such entry's own
 * IP_CT_NEW packet refills the slot.
 */
static __always_inline int spared_by_recent(struct hook_cpu *h, int action, u64 ct, u64 net,
					    const u8 *orig, const u8 *reply)
{
	struct recent_entry *e;

	if (!h || action != PACKET_HANDSHAKE)
		return 0;
	e = recent_slot(h, ct);
	if (e->ct != ct || e->net != net || e->removals != removals_now() || !same_words(e->orig, orig) ||
	    !same_words(e->reply, reply))
		return 0;
	e->ct = 0;
	return 1;
}

/* Fills entry ct's slot after a PACKET_NEW record; `removals` was read before the record. */
static __always_inline void recent_remember(struct hook_cpu *h, int action, u64 removals, u64 ct, u64 net,
					    const u8 *orig, const u8 *reply)
{
	struct recent_entry *e;

	if (!h || action != PACKET_NEW || (removals & 1))
		return;
	e = recent_slot(h, ct);
	e->ct = ct;
	e->net = net;
	e->removals = removals;
	__builtin_memcpy(e->orig, orig, sizeof(e->orig));
	__builtin_memcpy(e->reply, reply, sizeof(e->reply));
}

/*
 * The per-packet hooks (net_dev_queue) see every transmitted packet. Recording needs the
 * first transmitted packet of a connection; the rest only refresh last_seen_ns (which
 * the sweep compares with stale_after_secs, default an hour) and re-add an entry the LRU
 * evicted. So a packet is recorded when it is:
 *   - IP_CT_NEW: the original direction before any reply (a TCP SYN, UDP until answered);
 *     counted too, as an entry's IP_CT_NEW packets are its first (count_new);
 *   - in the REPLY direction of an entry not yet ASSURED: the handshake, whose first
 *     reply is the first packet transmitted for a connection DNAT'd to a local server;
 *   - one of the other packets, one time in REFRESH_SAMPLE, at random (RECORD_ALWAYS).
 * An established packet in the original direction costs a xorshift step; in the reply
 * direction also the status read that `status_of` performs. `status_of` is a macro
 * argument so that each object reads the status its own way (CO-RE, or at a guessed
 * offset).
 */
#define PACKET_ACTION(h, nfct, ct, status_of)                                               \
	({                                                                                  \
		u64 ___ctinfo = (nfct) & CTINFO_MASK;                                       \
		int ___action = PACKET_HANDSHAKE;                                           \
		if (___ctinfo == IP_CT_NEW) {                                               \
			count_new();                                                        \
			___action = PACKET_NEW;                                             \
		} else if (sampled(h)) {                                                    \
			___action = RECORD_ALWAYS;                                          \
		} else if (___ctinfo < IP_CT_IS_REPLY || (status_of(ct) & IPS_ASSURED)) {   \
			___action = PACKET_SKIP;                                            \
		}                                                                           \
		___action;                                                                  \
	})
