//! The ctnetlink wire format: building the dump request and parsing conntrack messages.
//!
//! Pure functions over byte slices, no sockets, so that the parser is tested against
//! bytes captured from this kernel (`fixtures/`). Only what a conntracker needs is
//! decoded: the message kind and the original and reply tuples of TCP/UDP entries.
//! Layout references: `include/uapi/linux/netlink.h`, `.../netfilter/nfnetlink.h`,
//! `.../netfilter/nfnetlink_conntrack.h`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::conntrack::{Entry, Protocol, Tuple};

pub(super) const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// Attribute type bits; the top two are NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

pub(super) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const NFNETLINK_V0: u8 = 0;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
/// `IPS_DYING_BIT` of `enum ip_conntrack_status`: set when the kernel starts destroying it.
const IPS_DYING: u32 = 1 << 9;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// What a ctnetlink conntrack message announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A dumped entry, or a NEW/UPDATE event.
    New,
    /// A DESTROY event (or a reply to a delete).
    Destroy,
}

/// The two tuples of a TCP or UDP conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub original: Tuple,
    pub reply: Tuple,
}

impl Flow {
    /// True when the reply tuple is not the original turned around: NAT rewrote it.
    pub fn is_nat(&self) -> bool {
        crate::conntrack::tuple::is_nat(&self.original, &self.reply)
    }

    pub fn into_entry(self, netns: u32) -> Entry {
        Entry { original: self.original, reply: self.reply, netns }
    }
}

/// One netlink message, decoded as far as a conntracker cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A conntrack entry; `flow` is `None` for protocols other than TCP/UDP. `dying`: the
    /// kernel has started destroying it (`IPS_DYING` in `CTA_STATUS`).
    Conntrack { kind: Kind, flow: Option<Flow>, dying: bool },
    /// End of a dump.
    Done,
    /// An error (or, with `errno == 0`, an acknowledgement) from the kernel.
    Error { errno: i32 },
    /// Anything else (other ctnetlink messages, other subsystems).
    Other,
}

/// Bytes that are not well-formed netlink, with where it went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("netlink message at byte {offset} has length {len}, but {available} bytes remain")]
    MessageLength { offset: usize, len: usize, available: usize },
    #[error("netlink attribute {kind} has length {len}, but {available} bytes remain")]
    AttributeLength { kind: u16, len: usize, available: usize },
    #[error("conntrack attribute {what} has {len} bytes, expected {expected}")]
    ValueLength { what: &'static str, len: usize, expected: usize },
    #[error("conntrack tuple lacks {0}")]
    Missing(&'static str),
}

/// A request to dump the whole conntrack table of the socket's namespace, every family.
pub fn dump_request(seq: u32) -> Vec<u8> {
    bare_request(seq, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP)
}

/// A request for the global conntrack statistics (`IPCTNL_MSG_CT_GET_STATS`): the cheapest
/// question ctnetlink answers, which is how the probe asks whether it is there.
pub fn stats_request(seq: u32) -> Vec<u8> {
    bare_request(seq, IPCTNL_MSG_CT_GET_STATS, NLM_F_REQUEST)
}

/// A ctnetlink request without attributes, for every family.
fn bare_request(seq: u32, message: u16, flags: u16) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | message).to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&[AF_UNSPEC, NFNETLINK_V0, 0, 0]);
    msg
}

/// A request for the one entry of the socket's namespace whose original tuple is
/// `original` (`IPCTNL_MSG_CT_GET` without `NLM_F_DUMP`): the kernel answers with that
/// entry, or with `ENOENT`.
pub fn get_request(seq: u32, original: &Tuple) -> Vec<u8> {
    let family = if original.src.is_ipv6() { AF_INET6 } else { AF_INET };
    let mut ip = Vec::new();
    match (original.src, original.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            put_attr(&mut ip, CTA_IP_V4_SRC, &src.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &dst.octets());
        }
        (src, dst) => {
            put_attr(&mut ip, CTA_IP_V6_SRC, &ipv6_octets(src));
            put_attr(&mut ip, CTA_IP_V6_DST, &ipv6_octets(dst));
        }
    }
    let mut proto = Vec::new();
    put_attr(&mut proto, CTA_PROTO_NUM, &[original.protocol.number()]);
    put_attr(&mut proto, CTA_PROTO_SRC_PORT, &original.src_port.to_be_bytes());
    put_attr(&mut proto, CTA_PROTO_DST_PORT, &original.dst_port.to_be_bytes());
    let mut tuple = Vec::new();
    put_attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut attrs = Vec::new();
    put_attr(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);

    let len = (NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()) as u32;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    msg.extend_from_slice(&attrs);
    msg
}

/// Appends one attribute, padded to 4 bytes.
pub(super) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (NLA_HDRLEN + value.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

fn ipv6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    }
}

/// Every message in one datagram read from a netlink socket.
pub fn parse(buf: &[u8]) -> Result<Vec<Message>, WireError> {
    Ok(parse_sequenced(buf)?.into_iter().map(|(_, message)| message).collect())
}

/// Every message in one datagram with its sequence number: replies to a request carry
/// the request's number (events carry 0), so that leftovers of an abandoned dump can be
/// told apart from the replies to the current one.
pub fn parse_sequenced(buf: &[u8]) -> Result<Vec<(u32, Message)>, WireError> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while buf.len() - offset >= NLMSG_HDRLEN {
        let rest = &buf[offset..];
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(WireError::MessageLength { offset, len, available: rest.len() });
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        messages.push((seq, parse_message(kind, &rest[NLMSG_HDRLEN..len])?));
        offset += align4(len).min(rest.len());
    }
    Ok(messages)
}

fn parse_message(kind: u16, payload: &[u8]) -> Result<Message, WireError> {
    match kind {
        NLMSG_DONE => Ok(Message::Done),
        NLMSG_ERROR => {
            let code = payload.get(..4).ok_or(WireError::ValueLength {
                what: "nlmsgerr",
                len: payload.len(),
                expected: 4,
            })?;
            let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
            Ok(Message::Error { errno })
        }
        _ if kind >> 8 != NFNL_SUBSYS_CTNETLINK => Ok(Message::Other),
        _ => {
            let kind = match kind & 0xff {
                IPCTNL_MSG_CT_NEW => Kind::New,
                IPCTNL_MSG_CT_DELETE => Kind::Destroy,
                _ => return Ok(Message::Other),
            };
            let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
            Ok(Message::Conntrack { kind, flow: parse_flow(attrs)?, dying: parse_dying(attrs)? })
        }
    }
}

fn parse_flow(attrs: &[u8]) -> Result<Option<Flow>, WireError> {
    let (mut original, mut reply) = (None, None);
    for attr in attributes(attrs) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_ORIG => original = parse_tuple(value)?,
            CTA_TUPLE_REPLY => reply = parse_tuple(value)?,
            _ => {}
        }
    }
    Ok(original.zip(reply).map(|(original, reply)| Flow { original, reply }))
}

/// Whether the entry's `CTA_STATUS` has `IPS_DYING` (false without a status).
fn parse_dying(attrs: &[u8]) -> Result<bool, WireError> {
    for attr in attributes(attrs) {
        if let (CTA_STATUS, value) = attr? {
            return Ok(u32::from_be_bytes(fixed::<4>(value, "CTA_STATUS")?) & IPS_DYING != 0);
        }
    }
    Ok(false)
}

/// A tuple, or `None` when its protocol is neither TCP nor UDP.
fn parse_tuple(nested: &[u8]) -> Result<Option<Tuple>, WireError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for attr in attributes(nested) {
        match attr? {
            (CTA_TUPLE_IP, ip) => {
                for attr in attributes(ip) {
                    match attr? {
                        (CTA_IP_V4_SRC, v) => src = Some(ipv4(v, "CTA_IP_V4_SRC")?),
                        (CTA_IP_V4_DST, v) => dst = Some(ipv4(v, "CTA_IP_V4_DST")?),
                        (CTA_IP_V6_SRC, v) => src = Some(ipv6(v, "CTA_IP_V6_SRC")?),
                        (CTA_IP_V6_DST, v) => dst = Some(ipv6(v, "CTA_IP_V6_DST")?),
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, p) => {
                for attr in attributes(p) {
                    match attr? {
                        (CTA_PROTO_NUM, v) => proto = Some(fixed::<1>(v, "CTA_PROTO_NUM")?[0]),
                        (CTA_PROTO_SRC_PORT, v) => sport = Some(port(v, "CTA_PROTO_SRC_PORT")?),
                        (CTA_PROTO_DST_PORT, v) => dport = Some(port(v, "CTA_PROTO_DST_PORT")?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let Some(protocol) = proto.and_then(Protocol::from_number) else { return Ok(None) };
    Ok(Some(Tuple {
        src: src.ok_or(WireError::Missing("a source address"))?,
        src_port: sport.ok_or(WireError::Missing("a source port"))?,
        dst: dst.ok_or(WireError::Missing("a destination address"))?,
        dst_port: dport.ok_or(WireError::Missing("a destination port"))?,
        protocol,
    }))
}

/// Iterates over `(type, value)` of the attributes in `buf`.
pub(super) fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), WireError>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            let err = WireError::AttributeLength { kind, len, available: rest.len() };
            rest = &[];
            return Some(Err(err));
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some(Ok((kind, value)))
    })
}

pub(super) fn fixed<const N: usize>(value: &[u8], what: &'static str) -> Result<[u8; N], WireError> {
    value.try_into().map_err(|_| WireError::ValueLength { what, len: value.len(), expected: N })
}

fn ipv4(value: &[u8], what: &'static str) -> Result<IpAddr, WireError> {
    Ok(IpAddr::V4(Ipv4Addr::from(fixed::<4>(value, what)?)))
}

fn ipv6(value: &[u8], what: &'static str) -> Result<IpAddr, WireError> {
    Ok(IpAddr::V6(Ipv6Addr::from(fixed::<16>(value, what)?)))
}

/// Ports travel in network byte order.
fn port(value: &[u8], what: &'static str) -> Result<u16, WireError> {
    Ok(u16::from_be_bytes(fixed::<2>(value, what)?))
}

pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}
