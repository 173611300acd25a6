//! The layout of the `conntrack` BPF map and the pure conversions to and from [`Tuple`].
//!
//! Mirrors `struct ct_tuple` / `struct ct_value` of `bpf/include/conntrack_record.h` (shared
//! by the CO-RE and prebuilt objects) byte for byte
//! (the size assertions below fail the build if either side drifts). Every connection has
//! two keys: its original tuple (value: the reply tuple) and its reply tuple (value: the
//! original tuple), so a lookup from either end of a connection is one map read.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Entry, Protocol, Tuple};

/// Name of the map in the object.
pub const MAP_NAME: &str = "conntrack";

/// `struct ct_tuple`: one direction of a connection in one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Inode of the entry's network namespace.
    pub netns: u32,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Always zero: keys are hashed bytewise.
    pub pad: [u8; 2],
}

/// Which direction of its connection a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    Original = 0,
    Reply = 1,
}

/// `struct ct_value`: the translation of the key and bookkeeping for the sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// The tuple of the opposite direction.
    pub other: CtKey,
    /// Direction of the key ([`Direction`] as a byte).
    pub dir: u8,
    pub pad: [u8; 3],
    /// CLOCK_MONOTONIC nanoseconds of insertion or last refresh (see the eBPF source).
    pub last_seen_ns: u64,
}

const _: () = assert!(size_of::<CtKey>() == 44);
const _: () = assert!(size_of::<CtValue>() == 56);

// SAFETY: both are repr(C), made only of integers and byte arrays, with every padding
// byte an explicit field, so any bit pattern is a valid value.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CtValue {}

/// A map key or value that does not describe a TCP/UDP IPv4/IPv6 tuple.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("conntrack map key has unknown address family {0} (expected 4 or 6)")]
    Family(u8),
    #[error("conntrack map key has unknown protocol {0} (expected 6 or 17)")]
    Protocol(u8),
    #[error("conntrack map value has unknown direction {0} (expected 0 or 1)")]
    Direction(u8),
}

impl CtKey {
    /// The key of `tuple` in namespace `netns`.
    pub fn from_tuple(tuple: &Tuple, netns: u32) -> Self {
        let (src, family) = addr_bytes(tuple.src);
        let (dst, _) = addr_bytes(tuple.dst);
        CtKey {
            src,
            dst,
            sport: tuple.src_port,
            dport: tuple.dst_port,
            netns,
            proto: tuple.protocol.number(),
            family,
            pad: [0; 2],
        }
    }

    pub fn to_tuple(&self) -> Result<Tuple, LayoutError> {
        let protocol = Protocol::from_number(self.proto).ok_or(LayoutError::Protocol(self.proto))?;
        Ok(Tuple {
            src: bytes_addr(&self.src, self.family)?,
            src_port: self.sport,
            dst: bytes_addr(&self.dst, self.family)?,
            dst_port: self.dport,
            protocol,
        })
    }
}

impl CtValue {
    pub fn direction(&self) -> Result<Direction, LayoutError> {
        match self.dir {
            0 => Ok(Direction::Original),
            1 => Ok(Direction::Reply),
            other => Err(LayoutError::Direction(other)),
        }
    }
}

/// The connection a map slot describes, or `None` for the reply-direction slot (each
/// connection is listed once, from its original-direction key).
pub fn entry_of(key: &CtKey, value: &CtValue) -> Result<Option<Entry>, LayoutError> {
    if value.direction()? == Direction::Reply {
        return Ok(None);
    }
    Ok(Some(Entry { original: key.to_tuple()?, reply: value.other.to_tuple()?, netns: key.netns }))
}

/// The two map slots of `entry`, both stamped `now_ns`.
pub fn slots_of(entry: &Entry, now_ns: u64) -> [(CtKey, CtValue); 2] {
    let original = CtKey::from_tuple(&entry.original, entry.netns);
    let reply = CtKey::from_tuple(&entry.reply, entry.netns);
    let value = |other, dir: Direction| CtValue { other, dir: dir as u8, pad: [0; 3], last_seen_ns: now_ns };
    [(original, value(reply, Direction::Original)), (reply, value(original, Direction::Reply))]
}

fn addr_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

fn bytes_addr(bytes: &[u8; 16], family: u8) -> Result<IpAddr, LayoutError> {
    match family {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        other => Err(LayoutError::Family(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn tuple(src: &str, sport: u16, dst: &str, dport: u16, protocol: Protocol) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            src_port: sport,
            dst: dst.parse().unwrap(),
            dst_port: dport,
            protocol,
        }
    }

    fn dnat_entry() -> Entry {
        Entry {
            original: tuple("10.99.0.1", 40000, "10.99.0.1", 80, Protocol::Tcp),
            reply: tuple("127.0.0.1", 8080, "10.99.0.1", 40000, Protocol::Tcp),
            netns: 4026532000,
        }
    }

    #[test]
    fn ipv4_key_uses_the_first_four_bytes_and_host_order_ports() {
        let key = CtKey::from_tuple(&dnat_entry().original, 7);
        assert_eq!(&key.src[..4], &[10, 99, 0, 1]);
        assert_eq!(&key.src[4..], &[0; 12]);
        assert_eq!((key.sport, key.dport, key.proto, key.family, key.netns), (40000, 80, 6, 4, 7));
    }

    #[test]
    fn tuples_survive_the_round_trip() {
        let v6 = tuple("fd99::1", 5353, "::1", 53, Protocol::Udp);
        for t in [dnat_entry().original, dnat_entry().reply, v6] {
            assert_eq!(CtKey::from_tuple(&t, 1).to_tuple(), Ok(t));
        }
    }

    #[test]
    fn an_entry_is_listed_from_its_original_slot_only() {
        let entry = dnat_entry();
        let [(okey, oval), (rkey, rval)] = slots_of(&entry, 99);
        assert_eq!(entry_of(&okey, &oval), Ok(Some(entry)));
        assert_eq!(entry_of(&rkey, &rval), Ok(None));
        assert_eq!(rval.other, okey);
        assert_eq!(oval.last_seen_ns, 99);
    }

    #[test]
    fn garbage_slots_are_errors_not_panics() {
        let mut key = CtKey::from_tuple(&dnat_entry().original, 1);
        key.family = 5;
        assert_eq!(key.to_tuple(), Err(LayoutError::Family(5)));
        key.family = 4;
        key.proto = 1;
        assert_eq!(key.to_tuple(), Err(LayoutError::Protocol(1)));
        let value = CtValue { dir: 9, ..Default::default() };
        assert_eq!(value.direction(), Err(LayoutError::Direction(9)));
    }
}
