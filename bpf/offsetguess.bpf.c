// SPDX-License-Identifier: GPL-2.0
/*
 * The offset-guessing object: the kernel half of privileged-loader/src/offsetguess.
 *
 * Userspace does not know where the fields the prebuilt conntracker reads sit in this
 * kernel's struct sk_buff, struct nf_conn and struct net. It finds out by experiment: it
 * writes a candidate offset into the shared `guess_status` map (state CHECKING), sends a
 * UDP datagram whose conntrack entry it knows, and this program, seeing that datagram on
 * raw_tracepoint/net_dev_queue, copies the bytes found at the candidate offset into the
 * map (state CHECKED). Userspace compares them with what it expects and moves to the next
 * candidate or the next field. All comparison logic lives in userspace, where it is
 * unit-tested; this side only reads.
 *
 * Nothing here uses kernel BTF or CO-RE: every read is bpf_probe_read_kernel at an offset
 * taken from the map, so the object loads on kernels without BTF. The program acts only
 * for the guessing thread (pid_tgid written by userspace) and only in state CHECKING, so
 * the traffic of every other thread costs one map lookup and two compares.
 *
 * The layout of struct guess_status is mirrored in src/offsetguess/kernel.rs.
 */
#include "common.h"

#include <linux/bpf.h>

char LICENSE[] SEC("license") = "GPL";

#define STATE_UNINITIALIZED 0
#define STATE_CHECKING 1
#define STATE_CHECKED 2
#define STATE_READY 3

/* What the kernel reads for one check; userspace maps each guessed field to one of these. */
#define READ_SKB_POINTER 1 /* u64 at skb+offset; if a kernel pointer, CT_WINDOW bytes behind it */
#define READ_CONN 2        /* FIELD_WINDOW bytes at conn+offset (conn found via off_nfct) */
#define READ_CONN_POINTER 3 /* u64 at conn+offset; if a kernel pointer, NET_WINDOW bytes behind it */
#define READ_NET 4         /* FIELD_WINDOW bytes at net+offset (net found via off_netns) */

#define CT_WINDOW 192
#define NET_WINDOW 512
#define FIELD_WINDOW 64
#define WINDOW 512

/* skb->_nfct keeps enum ip_conntrack_info in its low 3 bits. */
#define NFCT_INFO_MASK 7ULL
/*
 * The lowest x86_64 kernel address with 5-level paging (LA57: the direct map starts at
 * 0xff11000000000000); with 4-level paging the kernel half starts at 0xffff800000000000
 * and the range between is non-canonical, where a read behind the "pointer" just fails.
 * Anything below is not a kernel pointer.
 */
#define KERNEL_SPACE_START 0xff00000000000000ULL

struct guess_status {
	u64 state;
	u64 pid_tgid;  /* the guessing thread: (tgid << 32) | tid */
	u32 read;      /* READ_* */
	u32 offset;    /* the candidate offset being checked */
	u32 off_nfct;  /* skb->_nfct, once guessed (READ_CONN, READ_CONN_POINTER, READ_NET) */
	u32 off_netns; /* nf_conn->ct_net, once guessed (READ_NET) */
	u32 ctinfo;    /* READ_SKB_POINTER: the low 3 bits of the value read */
	u32 is_pointer; /* READ_*_POINTER: the value read was a kernel pointer */
	u32 len;       /* bytes of window filled */
	u32 hits;      /* datagrams seen by this program for the guessing thread */
	u8 window[WINDOW];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct guess_status);
} guess_status SEC(".maps");

static __always_inline u64 read_u64(const void *base, u32 offset)
{
	u64 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (const u8 *)base + offset);
	return value;
}

static __always_inline void *conn_of(const void *skb, u32 off_nfct)
{
	return (void *)(read_u64(skb, off_nfct) & ~NFCT_INFO_MASK);
}

static __always_inline void read_skb_pointer(struct guess_status *st, const void *skb)
{
	u64 value = read_u64(skb, st->offset);

	st->ctinfo = value & NFCT_INFO_MASK;
	st->is_pointer = (value & ~NFCT_INFO_MASK) >= KERNEL_SPACE_START;
	if (st->is_pointer) {
		bpf_probe_read_kernel(st->window, CT_WINDOW, (void *)(value & ~NFCT_INFO_MASK));
		st->len = CT_WINDOW;
	}
}

static __always_inline void read_conn_pointer(struct guess_status *st, const void *conn)
{
	u64 value = read_u64(conn, st->offset);

	st->is_pointer = value >= KERNEL_SPACE_START;
	if (st->is_pointer) {
		bpf_probe_read_kernel(st->window, NET_WINDOW, (void *)value);
		st->len = NET_WINDOW;
	}
}

SEC("raw_tracepoint/net_dev_queue")
int guess_net_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	u32 zero = 0;
	struct guess_status *st = bpf_map_lookup_elem(&guess_status, &zero);
	const void *skb = (const void *)ctx->args[0];
	void *conn;

	if (!st || st->state != STATE_CHECKING || st->pid_tgid != bpf_get_current_pid_tgid())
		return 0;
	st->hits++;
	st->len = 0;
	st->is_pointer = 0;
	switch (st->read) {
	case READ_SKB_POINTER:
		read_skb_pointer(st, skb);
		break;
	case READ_CONN:
		conn = conn_of(skb, st->off_nfct);
		if (conn) {
			bpf_probe_read_kernel(st->window, FIELD_WINDOW, (u8 *)conn + st->offset);
			st->len = FIELD_WINDOW;
		}
		break;
	case READ_CONN_POINTER:
		conn = conn_of(skb, st->off_nfct);
		if (conn)
			read_conn_pointer(st, conn);
		break;
	case READ_NET:
		conn = conn_of(skb, st->off_nfct);
		if (conn) {
			void *net = (void *)read_u64(conn, st->off_netns);

			bpf_probe_read_kernel(st->window, FIELD_WINDOW, (u8 *)net + st->offset);
			st->len = FIELD_WINDOW;
		}
		break;
	default:
		return 0;
	}
	st->state = STATE_CHECKED;
	return 0;
}
