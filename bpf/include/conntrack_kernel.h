/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types the CO-RE conntracker reads, trimmed to the fields it uses.
 *
 * Every record below is marked preserve_access_index: the offsets written here are only
 * placeholders, aya relocates each access against the running kernel's BTF at load time.
 * Field *names* and nesting must match the kernel (checked against Linux 6.18 BTF); a
 * field that a kernel lacks makes the load fail with a relocation error naming it, which
 * the loader reports as a verifier error of asset "conntrack".
 */
#pragma once

#include "common.h"

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* include/linux/ns_common.h: the namespace's inode number, as in /proc/<pid>/ns/net. */
struct ns_common {
	unsigned int inum;
};

/* include/net/net_namespace.h */
struct net {
	struct ns_common ns;
};

/* include/net/net_namespace.h: a plain pointer when CONFIG_NET_NS=y. */
typedef struct {
	struct net *net;
} possible_net_t;

/* include/uapi/linux/netfilter.h: IPv4 in the first word, IPv6 in all four. */
union nf_inet_addr {
	__u32 all[4];
	__be32 ip;
	__be32 ip6[4];
};

/* include/uapi/linux/netfilter/nf_conntrack_tuple_common.h: TCP/UDP port. */
union nf_conntrack_man_proto {
	__be16 all;
};

/* include/net/netfilter/nf_conntrack_tuple.h: the manipulable (source) half. */
struct nf_conntrack_man {
	union nf_inet_addr u3;
	union nf_conntrack_man_proto u;
	u16 l3num; /* AF_INET or AF_INET6 */
};

struct nf_conntrack_tuple {
	struct nf_conntrack_man src;
	struct {
		union nf_inet_addr u3;
		union {
			__be16 all;
		} u;
		u8 protonum; /* IPPROTO_TCP or IPPROTO_UDP */
	} dst;
};

struct nf_conntrack_tuple_hash {
	struct nf_conntrack_tuple tuple;
};

/* include/net/netfilter/nf_conntrack.h: [0] original direction, [1] reply direction. */
struct nf_conn {
	struct nf_conntrack_tuple_hash tuplehash[2];
	unsigned long status; /* enum ip_conntrack_status bits */
	possible_net_t ct_net;
};

/* include/linux/skbuff.h: the conntrack pointer with the ctinfo in its low 3 bits. */
struct sk_buff {
	unsigned long _nfct;
};

/* arch/x86/include/asm/ptrace.h: the registers bpf_tracing.h reads for kprobes. */
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long r8;
	unsigned long r9;
	unsigned long ax;
	unsigned long sp;
	unsigned long ip;
};

#pragma clang attribute pop
