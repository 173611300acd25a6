/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Base definitions shared by every eBPF object of this project.
 *
 * Kernel types are NOT taken from a generated vmlinux.h: each object declares, in its own
 * header under bpf/include/, the trimmed set of kernel structs and fields it reads, marked
 * preserve_access_index so that libbpf/aya CO-RE relocates every access against the
 * running kernel's BTF. docs/bpf.md explains the choice.
 */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

typedef __u8 u8;
typedef __s8 s8;
typedef __u16 u16;
typedef __s16 s16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;

#ifndef NULL
#define NULL ((void *)0)
#endif
