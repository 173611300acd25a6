//! The ctnetlink wire format: conntrack requests and conntrack messages.
//!
//! Pure functions over byte slices, no sockets, so that the parser is tested against
//! bytes captured from this kernel (`fixtures/`). The conntrack messages themselves —
//! the dump and GET requests, the stats request, and the NEW/DELETE messages (events
//! and dump replies) — are built and decoded by `netlink-packet-netfilter` (on
//! `netlink-packet-core`); this file maps them to and from the loader's own types
//! ([`Flow`], [`Message`], [`crate::conntrack::Tuple`]), which are all the rest of the
//! loader sees. Still by hand (docs/conntrack.md, "The ctnetlink client", says why): the
//! loop over the messages of a datagram, the choice of the three attributes decoded
//! (their type numbers), and [`attributes`], [`put_attr`] and [`fixed`] for the rtnetlink
//! namespace-id messages of `nsid.rs`, which the netfilter crate does not cover.
use std::net::{IpAddr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, ErrorBuffer, NLM_F_DUMP, NLMSG_DONE, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlasIterator, Parseable,
};
use netlink_packet_netfilter::conntrack::{
    self as ct, ConntrackAttribute, ConntrackMessage, ConntrackMessageType, IPTuple, ProtoTuple, Status,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily, NetfilterSubsystem};

use crate::conntrack::{Entry, Protocol, Tuple};

pub(super) use netlink_packet_core::{NLM_F_REQUEST, NLMSG_ERROR};

/// `struct nlmsghdr`.
pub(super) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`, in front of every netfilter message's attributes.
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// Attribute type bits; the top two are NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = netlink_packet_core::NLA_TYPE_MASK;

/// Not modelled by the crate: it knows NEW, GET and DELETE, the rest as `Other(type)`.
const IPCTNL_MSG_CT_GET_STATS: u8 = 5;
/// The attributes read (`nfnetlink_conntrack.h`), picked before the crate decodes them.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const NFNETLINK_V0: u8 = 0;

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
    /// What `netlink-packet-netfilter` refused in a conntrack message, in its words.
    #[error("malformed ctnetlink conntrack message: {0}")]
    Conntrack(String),
}

/// A request to dump the whole conntrack table of the socket's namespace, every family.
pub fn dump_request(seq: u32) -> Vec<u8> {
    request(seq, NLM_F_REQUEST | NLM_F_DUMP, NetfilterProtoFamily::Unspec, ConntrackMessage::Get(Vec::new()))
}

/// A request for the global conntrack statistics (`IPCTNL_MSG_CT_GET_STATS`): the cheapest
/// question ctnetlink answers, which is how the probe asks whether it is there.
pub fn stats_request(seq: u32) -> Vec<u8> {
    let stats = ConntrackMessage::Other { message_type: IPCTNL_MSG_CT_GET_STATS, attributes: Vec::new() };
    request(seq, NLM_F_REQUEST, NetfilterProtoFamily::Unspec, stats)
}

/// A request for the one entry of the socket's namespace whose original tuple is
/// `original` (`IPCTNL_MSG_CT_GET` without `NLM_F_DUMP`): the kernel answers with that
/// entry, or with `ENOENT`.
pub fn get_request(seq: u32, original: &Tuple) -> Vec<u8> {
    // Both addresses in one family: an IPv4 one beside an IPv6 one is sent IPv4-mapped.
    let (family, src, dst) = match (original.src, original.dst) {
        (src @ IpAddr::V4(_), dst @ IpAddr::V4(_)) => (NetfilterProtoFamily::IPv4, src, dst),
        (src, dst) => (NetfilterProtoFamily::IPv6, IpAddr::V6(ipv6(src)), IpAddr::V6(ipv6(dst))),
    };
    let tuple = vec![
        ct::Tuple::Ip(vec![IPTuple::SourceAddress(src), IPTuple::DestinationAddress(dst)]),
        ct::Tuple::Proto(vec![
            ProtoTuple::Protocol(ct::Protocol::from(original.protocol.number())),
            ProtoTuple::SourcePort(original.src_port),
            ProtoTuple::DestinationPort(original.dst_port),
        ]),
    ];
    let get = ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleOrig(tuple)]);
    request(seq, NLM_F_REQUEST, family, get)
}

/// One ctnetlink request, serialised; the kernel fills in the port id.
fn request(seq: u32, flags: u16, family: NetfilterProtoFamily, message: ConntrackMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let inner = NetfilterMessage::new(NetfilterHeader::new(family, NFNETLINK_V0, 0), message);
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(inner));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn ipv6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
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
        let Ok(netlink) = NetlinkBuffer::new_checked(rest) else {
            let len = NetlinkBuffer::new(rest).length() as usize;
            return Err(WireError::MessageLength { offset, len, available: rest.len() });
        };
        let message = parse_message(netlink.message_type(), netlink.payload())?;
        messages.push((netlink.sequence_number(), message));
        offset += align4(netlink.length() as usize).min(rest.len());
    }
    Ok(messages)
}

fn parse_message(kind: u16, payload: &[u8]) -> Result<Message, WireError> {
    let ctnetlink = u16::from(u8::from(NetfilterSubsystem::Conntrack));
    match kind {
        NLMSG_DONE => Ok(Message::Done),
        NLMSG_ERROR => {
            let error = ErrorBuffer::new_checked(payload).map_err(|_| WireError::ValueLength {
                what: "nlmsgerr",
                len: payload.len(),
                expected: 4,
            })?;
            // The kernel sends -errno (0 for an acknowledgement).
            Ok(Message::Error { errno: error.code().map_or(0, |code| code.get().wrapping_neg()) })
        }
        _ if kind >> 8 != ctnetlink => Ok(Message::Other),
        // Only NEW and DELETE carry an entry; the stats replies (GET_STATS) do not.
        _ => match ConntrackMessageType::from(kind as u8) {
            ConntrackMessageType::New | ConntrackMessageType::Delete => parse_conntrack(kind, payload),
            _ => Ok(Message::Other),
        },
    }
}

/// A NEW or DELETE message as the loader's [`Message`]: the crate checks the `nfgenmsg`
/// header and the framing of every attribute, and decodes the three attributes read here.
/// The others (`CTA_PROTOINFO`, `CTA_COUNTERS_*`, `CTA_ID`, `CTA_TIMEOUT`, ...) are skipped
/// unparsed: decoding them all (`NetfilterMessage::parse_with_param`) copies each into its
/// own allocation, which doubled the time of a 20,000-entry dump (docs/benchmarks.md).
fn parse_conntrack(kind: u16, payload: &[u8]) -> Result<Message, WireError> {
    let kind = match ConntrackMessageType::from(kind as u8) {
        ConntrackMessageType::Delete => Kind::Destroy,
        _ => Kind::New,
    };
    NetfilterHeader::parse(payload).map_err(|e| refused(payload, e))?;
    let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
    let (mut original, mut reply, mut dying) = (None, None, false);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| refused(payload, e))?;
        if !matches!(nla.kind(), CTA_TUPLE_ORIG | CTA_TUPLE_REPLY | CTA_STATUS) {
            continue;
        }
        match ConntrackAttribute::parse(&nla).map_err(|e| refused(payload, e))? {
            ConntrackAttribute::CtaTupleOrig(parts) => original = tuple(&parts)?,
            ConntrackAttribute::CtaTupleReply(parts) => reply = tuple(&parts)?,
            ConntrackAttribute::CtaStatus(status) => dying = status.contains(Status::Dying),
            _ => {}
        }
    }
    let flow = original.zip(reply).map(|(original, reply)| Flow { original, reply });
    Ok(Message::Conntrack { kind, flow, dying })
}

/// The crate's error says in prose what it refused. When the cause is a top-level
/// attribute running past its message, say which, with the numbers, as before the crate.
fn refused(payload: &[u8], error: DecodeError) -> WireError {
    let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
    attributes(attrs).find_map(Result::err).unwrap_or_else(|| WireError::Conntrack(error.to_string()))
}

/// A tuple, or `None` when its protocol is neither TCP nor UDP.
fn tuple(parts: &[ct::Tuple]) -> Result<Option<Tuple>, WireError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for part in parts {
        match part {
            ct::Tuple::Ip(ip) => {
                for attribute in ip {
                    match attribute {
                        IPTuple::SourceAddress(addr) => src = Some(*addr),
                        IPTuple::DestinationAddress(addr) => dst = Some(*addr),
                        _ => {}
                    }
                }
            }
            ct::Tuple::Proto(p) => {
                for attribute in p {
                    match attribute {
                        ProtoTuple::Protocol(number) => proto = Some(u8::from(*number)),
                        ProtoTuple::SourcePort(port) => sport = Some(*port),
                        ProtoTuple::DestinationPort(port) => dport = Some(*port),
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

/// Appends one attribute, padded to 4 bytes (rtnetlink messages of `nsid.rs`).
pub(super) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (NLA_HDRLEN + value.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// Iterates over `(type, value)` of the attributes in `buf`, without allocating: the
/// rtnetlink messages of `nsid.rs`, and naming a malformed attribute in [`refused`].
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

pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}
