//! The ctnetlink client against the real kernel, on its own (it will also back the
//! netlink-only conntracker): dump, NEW and DESTROY events, and overrun detection.
//! Each test works in its own throwaway network namespace. Needs root.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::time::Duration;

use e2e_tests::{L4, NatLab, oracle};
use privileged_loader::conntrack::ctnetlink::{CtNetlink, Event, Groups, NetlinkError};
use privileged_loader::conntrack::{Protocol, Tuple};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn tuple(t: &oracle::Tuple) -> Tuple {
    let protocol = if t.protocol == L4::Tcp { Protocol::Tcp } else { Protocol::Udp };
    Tuple { src: t.src, src_port: t.sport, dst: t.dst, dst_port: t.dport, protocol }
}

#[test]
fn a_dump_returns_what_conntrack_l_shows_with_the_namespace_inode() {
    let lab = NatLab::new("nl-dump").unwrap();
    let _conns = lab.connect_all().unwrap();
    let dumped = lab
        .netns
        .run(|| runtime().block_on(async { CtNetlink::dump_socket()?.dump().await }))
        .unwrap()
        .unwrap();

    let inode = lab.netns.inode().unwrap();
    assert!(dumped.iter().all(|e| e.netns == inode));
    let mut want: Vec<_> =
        oracle::entries(&lab.netns).unwrap().iter().map(|e| (tuple(&e.original), tuple(&e.reply))).collect();
    let mut got: Vec<_> = dumped.iter().map(|e| (e.original, e.reply)).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn new_and_destroy_events_carry_the_nat_tuples() {
    let lab = NatLab::new("nl-events").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = lab
        .netns
        .spawn(move || {
            runtime().block_on(async move {
                let mut socket = CtNetlink::event_socket(Groups::NewAndDestroy).unwrap();
                tx.send(()).unwrap();
                let mut seen = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !seen.iter().any(|e| matches!(e, Event::Destroy(_))) {
                    match tokio::time::timeout_at(deadline, socket.next_events()).await {
                        Ok(events) => seen.extend(events.unwrap()),
                        Err(_) => break,
                    }
                }
                seen
            })
        })
        .unwrap();
    rx.recv().unwrap();
    let conn = lab.connect(L4::Tcp, false).unwrap();
    let original = conn.original_tuple().unwrap();
    oracle::delete(&lab.netns, &original).unwrap();
    let events = listener.join().unwrap();

    let original = tuple(&original);
    let new = events.iter().find_map(|e| match e {
        Event::New(entry) if entry.original == original => Some(entry),
        _ => None,
    });
    let new = new.unwrap_or_else(|| panic!("no NEW event for {original:?} in {events:#?}"));
    assert_eq!(new.reply.src_port, 8080, "the reply comes from the DNAT target");
    assert!(events.iter().any(|e| matches!(e, Event::Destroy(entry) if entry.original == original)));
}

#[test]
fn a_full_event_queue_is_reported_as_an_overrun() {
    let lab = NatLab::new("nl-overrun").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let listener = lab
        .netns
        .spawn(move || {
            runtime().block_on(async move {
                let mut socket = CtNetlink::event_socket(Groups::Destroy).unwrap();
                socket.set_receive_buffer(4096).unwrap();
                tx.send(()).unwrap();
                // Do not read until the flood is over, so the queue overflows.
                go_rx.recv().unwrap();
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), socket.next_events()).await {
                        Ok(Err(NetlinkError::Overrun)) => return true,
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
            })
        })
        .unwrap();
    rx.recv().unwrap();
    let _flows: Vec<_> = (0..200).map(|_| lab.connect(L4::Udp, false).unwrap()).collect();
    let mut flush = lab.netns.command("conntrack");
    flush.arg("-F");
    e2e_tests::netns::run(&mut flush).unwrap();
    go_tx.send(()).unwrap();
    assert!(listener.join().unwrap(), "200 destroy events into a 4 KiB queue should overrun it");
}
