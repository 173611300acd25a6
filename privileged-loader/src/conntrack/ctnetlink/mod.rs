//! ctnetlink: the kernel's conntrack table over netlink.
//!
//! The one ctnetlink client of the loader: the eBPF conntrackers load the entries that
//! existed before they attached (a table dump) and forget entries the kernel destroyed
//! (DESTROY events, of every namespace with an id: `nsid.rs`); the netlink conntracker
//! follows NEW and DESTROY; the start-up probe asks [`ask_stats`]. [`CtNetlink::dump`]
//! gives a `Vec<Entry>`, [`CtNetlink::next_events`] gives [`Event::New`]/[`Event::Destroy`],
//! [`CtNetlink::get`] the current entry of a tuple.
//!
//! The conntrack messages are built and decoded with `netlink-packet-netfilter` inside
//! `wire.rs`, which maps them to the loader's own types; the socket (`socket.rs`) and the
//! rtnetlink namespace-id messages (`nsid.rs`) are still hand-written (docs/conntrack.md,
//! "The ctnetlink client", says why, item by item). Tested here against bytes captured
//! from the kernel (`fixtures/capture.py`).
pub mod nsid;
mod socket;
pub mod wire;

pub use socket::{
    Coverage, CtNetlink, EVENTS_NOTE_PREFIX, Event, Groups, NetlinkError, Parked, ask_stats, current_netns,
};

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests;
