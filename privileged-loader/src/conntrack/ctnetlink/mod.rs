//! ctnetlink: the kernel's conntrack table over netlink.
//!
//! The CO-RE conntracker uses it to load the entries that existed before it attached
//! (a table dump) and to forget entries the kernel destroyed (DESTROY events). Kept
//! independent of the eBPF map so that a netlink-only conntracker can reuse it as is:
//! [`CtNetlink::dump`] gives a `Vec<Entry>`, [`CtNetlink::next_events`] gives
//! [`Event::New`]/[`Event::Destroy`], [`CtNetlink::get`] the current entry of a tuple.
//!
//! No crate is used for the wire format: the subset needed (one request, the tuple
//! attributes) is small and tested here against bytes captured from the kernel
//! (`fixtures/capture.py`).
pub mod nsid;
mod socket;
pub mod wire;

pub use socket::{Coverage, CtNetlink, Event, Groups, NetlinkError, ask_stats, current_netns};

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests;
