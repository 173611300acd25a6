//! The wire parser against bytes captured from Linux 6.18 by `fixtures/capture.py`:
//! a DNAT'd IPv4 TCP connection 10.99.0.1:49180 -> 10.99.0.1:80 (to 127.0.0.1:8080) and
//! a DNAT'd IPv6 UDP flow to fd99::1:53 (to [::1]:5353).
use super::wire::{self, Flow, Kind, Message, WireError};
use crate::conntrack::{Protocol, Tuple};

const DUMP: &[u8] = include_bytes!("fixtures/dump.bin");
const DESTROY: &[u8] = include_bytes!("fixtures/destroy.bin");

fn tuple(src: &str, sport: u16, dst: &str, dport: u16, protocol: Protocol) -> Tuple {
    Tuple { src: src.parse().unwrap(), src_port: sport, dst: dst.parse().unwrap(), dst_port: dport, protocol }
}

fn tcp_flow() -> Flow {
    Flow {
        original: tuple("10.99.0.1", 49180, "10.99.0.1", 80, Protocol::Tcp),
        reply: tuple("127.0.0.1", 8080, "10.99.0.1", 49180, Protocol::Tcp),
    }
}

fn flows(messages: &[Message]) -> Vec<(Kind, Flow)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Conntrack { kind, flow: Some(flow), .. } => Some((*kind, *flow)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dump_gives_both_entries_and_ends_with_done() {
    let messages = wire::parse(DUMP).unwrap();
    assert_eq!(messages.last(), Some(&Message::Done));
    let flows = flows(&messages);
    assert_eq!(flows.len(), 2, "{messages:?}");
    assert!(flows.contains(&(Kind::New, tcp_flow())));
    let udp = flows.iter().find(|(_, f)| f.original.protocol == Protocol::Udp).unwrap().1;
    assert_eq!((udp.original.dst, udp.original.dst_port), ("fd99::1".parse().unwrap(), 53));
    assert_eq!((udp.reply.src, udp.reply.src_port), ("::1".parse().unwrap(), 5353));
    assert!(udp.is_nat());
}

#[test]
fn a_destroy_event_carries_the_deleted_tuples() {
    assert_eq!(flows(&wire::parse(DESTROY).unwrap()), vec![(Kind::Destroy, tcp_flow())]);
}

#[test]
fn an_unrewritten_reply_is_not_nat() {
    let plain = Flow {
        original: tuple("10.0.0.1", 1000, "10.0.0.2", 80, Protocol::Tcp),
        reply: tuple("10.0.0.2", 80, "10.0.0.1", 1000, Protocol::Tcp),
    };
    assert!(!plain.is_nat());
    assert!(tcp_flow().is_nat());
}

#[test]
fn truncated_or_corrupt_bytes_are_errors_not_panics() {
    for cut in 1..DESTROY.len() {
        let _ = wire::parse(&DESTROY[..cut]);
    }
    let mut bad = DESTROY.to_vec();
    bad[0] = 0xff; // message length beyond the buffer
    assert!(matches!(wire::parse(&bad), Err(WireError::MessageLength { .. })));
    let mut bad = DESTROY.to_vec();
    bad[20] = 0xff; // first attribute's length beyond its message
    assert!(matches!(wire::parse(&bad), Err(WireError::AttributeLength { .. })));
}

#[test]
fn the_dump_request_is_a_ctnetlink_get_with_the_dump_flag() {
    let req = wire::dump_request(7);
    assert_eq!(req.len(), 20);
    assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 20);
    assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x0101); // CTNETLINK << 8 | GET
    assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x0301); // REQUEST | DUMP
    assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
    assert_eq!(&req[16..], &[0, 0, 0, 0]); // AF_UNSPEC: every family
}

#[test]
fn replies_carry_the_sequence_number_of_their_request() {
    // capture.py sent its dump request with sequence number 1; events carry 0.
    assert!(wire::parse_sequenced(DUMP).unwrap().iter().all(|(seq, _)| *seq == 1));
    assert!(wire::parse_sequenced(DESTROY).unwrap().iter().all(|(seq, _)| *seq == 0));
}

#[test]
fn entries_in_the_captures_are_live_and_a_dying_status_is_seen() {
    let live = |bytes: &[u8]| {
        wire::parse(bytes)
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                Message::Conntrack { dying, .. } => Some(*dying),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(live(DUMP), vec![false, false], "dumped entries are live");
    // The destroyed entry of the capture is marked dying (IPS_DYING, bit 9 of CTA_STATUS).
    assert_eq!(live(DESTROY), vec![true]);
}

#[test]
fn the_get_request_names_the_original_tuple_in_its_family() {
    let t = tcp_flow().original;
    let req = wire::get_request(9, &t);
    assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
    assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x0101); // CTNETLINK << 8 | GET
    assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x0001); // REQUEST, no DUMP
    assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 9);
    assert_eq!(req[16], 2, "AF_INET");
    // CTA_TUPLE_ORIG (nested) > CTA_TUPLE_IP (nested) > CTA_IP_V4_SRC = 10.99.0.1
    assert_eq!(u16::from_ne_bytes([req[22], req[23]]), 0x8001);
    assert_eq!(u16::from_ne_bytes([req[26], req[27]]), 0x8001);
    assert_eq!(&req[28..36], &[8, 0, 1, 0, 10, 99, 0, 1]);
    // ports in network byte order, the protocol number as one byte
    let be = |p: u16| p.to_be_bytes();
    assert!(req.windows(2).any(|w| w == be(49180)) && req.windows(2).any(|w| w == be(80)));
    let v6 = Tuple { src: "fd99::1".parse().unwrap(), dst: "::1".parse().unwrap(), ..t };
    assert_eq!(wire::get_request(1, &v6)[16], 10, "AF_INET6");
}

#[test]
fn a_stats_request_is_a_bare_ctnetlink_get_stats() {
    let msg = wire::stats_request(1);
    assert_eq!(msg.len(), 20);
    assert_eq!(u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]), 20);
    assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x0105, "NFNL_SUBSYS_CTNETLINK << 8 | GET_STATS");
    assert_eq!(u16::from_ne_bytes([msg[6], msg[7]]), 1, "NLM_F_REQUEST only: not a dump");
}

#[test]
fn what_the_crate_refuses_inside_an_entry_is_an_error_that_names_it() {
    let refused = |bytes: &[u8]| match wire::parse(bytes) {
        Err(WireError::Conntrack(why)) => why,
        other => panic!("expected the crate's refusal, got {other:?}"),
    };
    let mut bad = DESTROY.to_vec();
    bad[24] = 0xff; // CTA_TUPLE_IP inside CTA_TUPLE_ORIG: longer than its parent
    assert!(refused(&bad).contains("CTA_TUPLE_ORIG"));
    let mut bad = DESTROY.to_vec();
    assert_eq!(u16::from_ne_bytes([bad[134], bad[135]]), 3, "CTA_STATUS at byte 132");
    bad[132] = 6; // CTA_STATUS with 2 bytes of value instead of 4
    assert!(refused(&bad).contains("CTA_STATUS"));
}

#[test]
fn single_byte_corruptions_of_the_captures_are_messages_or_errors_never_panics() {
    // The crate's parsers behind `wire` index into the bytes; this puts the values around
    // every length and type boundary at every offset (the fuzz target goes on at random).
    const VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 8, 16, 0x7f, 0x80, 0xfe, 0xff];
    for capture in [DUMP, DESTROY] {
        let mut bytes = capture.to_vec();
        for at in 0..bytes.len() {
            let kept = bytes[at];
            for value in VALUES {
                bytes[at] = value;
                let _ = wire::parse_sequenced(&bytes);
            }
            bytes[at] = kept;
        }
    }
}
