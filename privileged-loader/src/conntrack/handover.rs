//! Handing the translations a running conntracker knows to its successor at a reload, so
//! that no lookup of a translation that existed before the swap answers "not found".
//!
//! The successor is already attached when this runs, so every connection made from now
//! on is recorded by both; what is copied is what only the predecessor knows. A slot the
//! successor has already recorded is left as it is (`BPF_NOEXIST`): its record is newer.
use super::map;
use super::map_tracker::monotonic_ns;
use super::{ConntrackError, RunningConntracker};

/// What a handover did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandedOver {
    /// Slots (eBPF map entries; two per connection) written into the successor's map.
    pub copied: usize,
    /// Slots the successor already held.
    pub already_known: usize,
    /// Translations that could not be handed on: the successor keeps a userspace table
    /// that learns its own namespace from a dump, and the predecessor's others are lost.
    pub not_handed: usize,
}

/// Copies what `from` knows into `to`. Reads the predecessor's map slot by slot (the raw
/// slots keep their last-seen times) when both are eBPF conntrackers, its entries
/// otherwise.
pub fn hand_over(from: &RunningConntracker, to: &RunningConntracker) -> Result<HandedOver, ConntrackError> {
    let mut done = HandedOver::default();
    let Some(target) = &to.map else {
        done.not_handed = from.tracker.entries()?.len();
        return Ok(done);
    };
    let slots = match &from.map {
        Some(source) => source.snapshot()?,
        None => {
            let now = monotonic_ns();
            from.tracker.entries()?.iter().flat_map(|e| map::slots_of(e, now)).collect()
        }
    };
    for (key, value) in &slots {
        if target.insert_absent(key, value) {
            done.copied += 1;
        } else {
            done.already_known += 1;
        }
    }
    Ok(done)
}
