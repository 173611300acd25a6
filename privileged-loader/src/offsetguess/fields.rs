//! The fields the prebuilt conntracker needs, and how to recognise each one in the bytes
//! the guessing object reads from the kernel. Pure: no syscalls, unit-tested below.
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

/// One offset the prebuilt conntracker needs, in the order they are guessed. Later
/// fields are read through earlier ones (the entry through `_nfct`, `struct net` through
/// the netns pointer), so the order is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `sk_buff._nfct`: the entry pointer, with the ctinfo in its low 3 bits.
    SkbNfct,
    /// `nf_conn.tuplehash[IP_CT_DIR_ORIGINAL].tuple`.
    OriginTuple,
    /// `nf_conn.tuplehash[IP_CT_DIR_REPLY].tuple`.
    ReplyTuple,
    /// `nf_conn.status`.
    Status,
    /// `nf_conn.ct_net.net`: the entry's `struct net *`.
    NetnsPointer,
    /// `net.ns.inum`: the namespace inode, as in `/proc/<pid>/ns/net`.
    NetnsInum,
}

/// What the kernel side reads for a check (`READ_*` in `bpf/offsetguess.bpf.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ReadKind {
    SkbPointer = 1,
    Conn = 2,
    ConnPointer = 3,
    Net = 4,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::SkbNfct,
        Field::OriginTuple,
        Field::ReplyTuple,
        Field::Status,
        Field::NetnsPointer,
        Field::NetnsInum,
    ];

    /// The name used in errors and status, e.g. "offset guessing overflow on reply tuple".
    pub fn name(self) -> &'static str {
        match self {
            Field::SkbNfct => "sk_buff._nfct",
            Field::OriginTuple => "origin tuple",
            Field::ReplyTuple => "reply tuple",
            Field::Status => "status",
            Field::NetnsPointer => "netns pointer",
            Field::NetnsInum => "net.ns.inum",
        }
    }

    /// Candidates are aligned to the field's natural alignment: pointers and `unsigned
    /// long` on 8, tuples (arrays of u32) and `unsigned int` on 4.
    pub fn step(self) -> u32 {
        match self {
            Field::SkbNfct | Field::Status | Field::NetnsPointer => 8,
            Field::OriginTuple | Field::ReplyTuple | Field::NetnsInum => 4,
        }
    }

    pub fn read_kind(self) -> ReadKind {
        match self {
            Field::SkbNfct => ReadKind::SkbPointer,
            Field::OriginTuple | Field::ReplyTuple | Field::Status => ReadKind::Conn,
            Field::NetnsPointer => ReadKind::ConnPointer,
            Field::NetnsInum => ReadKind::Net,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `sizeof(struct nf_conntrack_tuple)`.
pub const TUPLE_LEN: usize = 40;
const AF_INET: u16 = 2;
const IPPROTO_UDP: u8 = 17;
/// `enum ip_conntrack_info` IP_CT_NEW: a datagram of an entry that has seen no reply.
pub const IP_CT_NEW: u32 = 2;
/// `enum ip_conntrack_status` bits of a confirmed, destination-NAT'd entry that has seen
/// no reply: IPS_CONFIRMED | IPS_DST_NAT | IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE (the
/// source half is "done" as a null binding).
pub const DNAT_CONFIRMED_STATUS: u64 = (1 << 3) | (1 << 5) | (1 << 7) | (1 << 8);

/// One direction of the known UDP/IPv4 connection, as `struct nf_conntrack_tuple` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownTuple {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    /// 0 for the original direction, 1 for the reply (`tuple.dst.dir`).
    pub dir: u8,
}

impl KnownTuple {
    /// True when `bytes` starts with this tuple. Compares the bytes that carry meaning
    /// (addresses, ports, family, protocol, direction), not the zero tail of the IPv4
    /// address unions.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let Some(b) = bytes.get(..TUPLE_LEN) else { return false };
        b[0..4] == self.src.octets()
            && b[16..18] == self.src_port.to_be_bytes()
            && b[18..20] == AF_INET.to_ne_bytes()
            && b[20..24] == self.dst.octets()
            && b[36..38] == self.dst_port.to_be_bytes()
            && b[38] == IPPROTO_UDP
            && b[39] == self.dir
    }

    /// The 4-aligned position of this tuple inside `window`, if any.
    pub fn find_in(&self, window: &[u8]) -> Option<usize> {
        (0..window.len().saturating_sub(TUPLE_LEN - 1)).step_by(4).find(|&p| self.matches(&window[p..]))
    }
}

/// What the known connection must look like in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub origin: KnownTuple,
    pub reply: KnownTuple,
    pub status: u64,
    pub ctinfo: u32,
    /// Inode of the guessing thread's network namespace.
    pub netns_inum: u32,
}

/// What the kernel side read for one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// `READ_SKB_POINTER`: the low 3 bits of the value read.
    pub ctinfo: u32,
    /// `READ_*_POINTER`: whether the value read was a kernel address.
    pub is_pointer: bool,
    /// The bytes at the candidate offset, or behind the pointer found there.
    pub window: Vec<u8>,
}

impl Expected {
    /// True when `reading` shows that `field` sits at the candidate offset.
    ///
    /// The two pointer fields cannot be compared with a known value (userspace does not
    /// know kernel addresses), so they are recognised by what they point to: `_nfct` must
    /// carry IP_CT_NEW and lead to an object holding the known original tuple; the netns
    /// pointer must lead to an object holding the namespace's inode number.
    pub fn matches(&self, field: Field, reading: &Reading) -> bool {
        let w = &reading.window;
        match field {
            Field::SkbNfct => {
                reading.is_pointer && reading.ctinfo == self.ctinfo && self.origin.find_in(w).is_some()
            }
            Field::OriginTuple => self.origin.matches(w),
            Field::ReplyTuple => self.reply.matches(w),
            Field::Status => read_u64(w) == Some(self.status),
            Field::NetnsPointer => reading.is_pointer && find_u32(w, self.netns_inum),
            Field::NetnsInum => read_u32(w) == Some(self.netns_inum),
        }
    }
}

fn read_u64(w: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(w.get(..8)?.try_into().ok()?))
}

fn read_u32(w: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(w.get(..4)?.try_into().ok()?))
}

fn find_u32(w: &[u8], value: u32) -> bool {
    w.chunks_exact(4).any(|c| c == value.to_ne_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn known() -> Expected {
        let lo = Ipv4Addr::LOCALHOST;
        Expected {
            origin: KnownTuple {
                src: lo,
                src_port: 40000,
                dst: Ipv4Addr::new(127, 0, 0, 2),
                dst_port: 9,
                dir: 0,
            },
            reply: KnownTuple { src: lo, src_port: 50000, dst: lo, dst_port: 40000, dir: 1 },
            status: DNAT_CONFIRMED_STATUS,
            ctinfo: IP_CT_NEW,
            netns_inum: 4026532001,
        }
    }

    /// The kernel's bytes for `t` (zeroed union tails, as nf_ct_get_tuple leaves them).
    pub(crate) fn encode(t: &KnownTuple) -> [u8; TUPLE_LEN] {
        let mut b = [0u8; TUPLE_LEN];
        b[0..4].copy_from_slice(&t.src.octets());
        b[16..18].copy_from_slice(&t.src_port.to_be_bytes());
        b[18..20].copy_from_slice(&AF_INET.to_ne_bytes());
        b[20..24].copy_from_slice(&t.dst.octets());
        b[36..38].copy_from_slice(&t.dst_port.to_be_bytes());
        b[38] = IPPROTO_UDP;
        b[39] = t.dir;
        b
    }

    #[test]
    fn a_tuple_matches_only_its_own_bytes_and_direction() {
        let e = known();
        assert!(e.origin.matches(&encode(&e.origin)));
        assert!(!e.reply.matches(&encode(&e.origin)));
        let mut wrong_dir = encode(&e.reply);
        wrong_dir[39] = 0;
        assert!(!e.reply.matches(&wrong_dir));
        assert!(!e.origin.matches(&encode(&e.origin)[..39]), "a short window never matches");
    }

    #[test]
    fn nfct_needs_a_pointer_the_new_ctinfo_and_the_origin_tuple_behind_it() {
        let e = known();
        let mut window = vec![0u8; 192];
        window[32..72].copy_from_slice(&encode(&e.origin));
        let good = Reading { ctinfo: IP_CT_NEW, is_pointer: true, window: window.clone() };
        assert!(e.matches(Field::SkbNfct, &good));
        assert!(!e.matches(Field::SkbNfct, &Reading { is_pointer: false, ..good.clone() }));
        assert!(!e.matches(Field::SkbNfct, &Reading { ctinfo: 0, ..good.clone() }));
        assert!(!e.matches(Field::SkbNfct, &Reading { window: vec![0; 192], ..good }));
    }

    #[test]
    fn netns_pointer_is_recognised_by_the_inode_behind_it() {
        let e = known();
        let mut window = vec![0u8; 512];
        window[176..180].copy_from_slice(&e.netns_inum.to_ne_bytes());
        assert!(
            e.matches(Field::NetnsPointer, &Reading { is_pointer: true, window: window.clone(), ctinfo: 0 })
        );
        assert!(!e.matches(Field::NetnsPointer, &Reading { is_pointer: false, window, ctinfo: 0 }));
        assert!(e.matches(
            Field::NetnsInum,
            &Reading { window: e.netns_inum.to_ne_bytes().to_vec(), ..Default::default() }
        ));
    }

    #[test]
    fn status_compares_the_whole_word() {
        let e = known();
        let read = |v: u64| Reading { window: v.to_ne_bytes().to_vec(), ..Default::default() };
        assert!(e.matches(Field::Status, &read(DNAT_CONFIRMED_STATUS)));
        assert!(!e.matches(Field::Status, &read(DNAT_CONFIRMED_STATUS | 1 << 1)));
    }
}
