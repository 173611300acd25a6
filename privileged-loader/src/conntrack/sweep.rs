//! The stale-entry sweep: which map slots to drop and which entries to (re)insert.
//!
//! Pure policy over a snapshot of the map and a fresh conntrack dump of the loader's own
//! network namespace; `core.rs` does the I/O. The policy (see `docs/conntrack.md`):
//! - never touch a slot written or refreshed after the sweep started (the eBPF program
//!   may be inserting it right now);
//! - a connection of the loader's namespace that the dump no longer lists is gone: its
//!   DESTROY event was missed (queue overrun, or the entry predates our subscription);
//! - a connection of another namespace (whose events the loader cannot see) goes when
//!   it was not seen for `stale_after`, if the attach strategy refreshes "seen" at all;
//! - a reply-direction slot whose original slot is gone (LRU eviction) goes too;
//! - a NAT'd connection of the dump missing from the map is (re)inserted.
use std::collections::{HashMap, HashSet};

use super::Entry;
use super::map::{CtKey, CtValue, Direction};

/// What the sweep may assume, fixed for one conntracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepPolicy {
    /// Inode of the namespace the dump describes (the loader's).
    pub own_netns: u32,
    /// Age after which other namespaces' entries are dropped; `None` to keep them until
    /// the LRU evicts them (also when the strategy does not refresh `last_seen_ns`).
    pub stale_after_ns: Option<u64>,
}

/// The changes one sweep makes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    pub delete: Vec<CtKey>,
    pub insert: Vec<Entry>,
}

/// Plans a sweep started at `started_ns` (CLOCK_MONOTONIC), given the map's slots and
/// the NAT'd entries of a dump of the own namespace taken after `started_ns` (`None`
/// when the dump failed: then the own namespace is left alone).
pub fn plan(
    slots: &[(CtKey, CtValue)],
    dump: Option<&[Entry]>,
    policy: &SweepPolicy,
    started_ns: u64,
) -> SweepPlan {
    let originals: HashMap<CtKey, &CtValue> = slots
        .iter()
        .filter(|(_, v)| v.direction() == Ok(Direction::Original))
        .map(|(k, v)| (*k, v))
        .collect();
    let alive: Option<HashSet<CtKey>> =
        dump.map(|entries| entries.iter().map(|e| CtKey::from_tuple(&e.original, e.netns)).collect());

    let mut plan = SweepPlan::default();
    for (key, value) in slots {
        if value.last_seen_ns >= started_ns {
            continue;
        }
        let gone = match value.direction() {
            Ok(Direction::Original) => connection_gone(key, value, alive.as_ref(), policy, started_ns),
            Ok(Direction::Reply) => match originals.get(&value.other) {
                Some(original) => connection_gone(&value.other, original, alive.as_ref(), policy, started_ns),
                None => true,
            },
            Err(_) => true,
        };
        if gone {
            plan.delete.push(*key);
        }
    }
    if let Some(entries) = dump {
        plan.insert = entries
            .iter()
            .filter(|e| !originals.contains_key(&CtKey::from_tuple(&e.original, e.netns)))
            .copied()
            .collect();
    }
    plan
}

fn connection_gone(
    original: &CtKey,
    value: &CtValue,
    alive: Option<&HashSet<CtKey>>,
    policy: &SweepPolicy,
    started_ns: u64,
) -> bool {
    if value.last_seen_ns >= started_ns {
        return false;
    }
    if original.netns == policy.own_netns {
        return alive.is_some_and(|alive| !alive.contains(original));
    }
    policy.stale_after_ns.is_some_and(|limit| started_ns - value.last_seen_ns > limit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use crate::conntrack::map::slots_of;
    use crate::conntrack::{Protocol, Tuple};

    const OWN: u32 = 100;
    const OTHER: u32 = 200;
    const SEC: u64 = 1_000_000_000;

    fn entry(port: u16, netns: u32) -> Entry {
        let t = |src: &str, sp, dst: &str, dp| Tuple {
            src: src.parse().unwrap(),
            src_port: sp,
            dst: dst.parse().unwrap(),
            dst_port: dp,
            protocol: Protocol::Tcp,
        };
        Entry {
            original: t("10.0.0.1", port, "10.0.0.9", 80),
            reply: t("127.0.0.1", 8080, "10.0.0.1", port),
            netns,
        }
    }

    fn policy() -> SweepPolicy {
        SweepPolicy { own_netns: OWN, stale_after_ns: Some(60 * SEC) }
    }

    fn keys_of(e: &Entry) -> Vec<CtKey> {
        slots_of(e, 0).iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn own_namespace_entries_missing_from_the_dump_go_with_both_slots() {
        let (live, dead) = (entry(1, OWN), entry(2, OWN));
        let slots: Vec<_> = [live, dead].iter().flat_map(|e| slots_of(e, 5 * SEC)).collect();
        let plan = plan(&slots, Some(&[live]), &policy(), 10 * SEC);
        assert_eq!(plan.delete, keys_of(&dead));
        assert!(plan.insert.is_empty());
    }

    #[test]
    fn without_a_dump_the_own_namespace_is_left_alone() {
        let slots = slots_of(&entry(1, OWN), 5 * SEC);
        assert_eq!(plan(&slots, None, &policy(), 10 * SEC), SweepPlan::default());
    }

    #[test]
    fn slots_written_after_the_sweep_started_are_kept() {
        let slots = slots_of(&entry(1, OWN), 11 * SEC);
        assert!(plan(&slots, Some(&[]), &policy(), 10 * SEC).delete.is_empty());
    }

    #[test]
    fn other_namespaces_expire_by_age_only_when_enabled() {
        let (old, fresh) = (entry(1, OTHER), entry(2, OTHER));
        let mut slots = slots_of(&old, SEC).to_vec();
        slots.extend(slots_of(&fresh, 100 * SEC));
        let now = 120 * SEC;
        assert_eq!(plan(&slots, Some(&[]), &policy(), now).delete, keys_of(&old));
        let keep = SweepPolicy { stale_after_ns: None, ..policy() };
        assert!(plan(&slots, Some(&[]), &keep, now).delete.is_empty());
    }

    #[test]
    fn a_reply_slot_without_its_original_is_dropped() {
        let e = entry(1, OTHER);
        let [_, reply] = slots_of(&e, SEC);
        let plan = plan(&[reply], None, &SweepPolicy { stale_after_ns: None, ..policy() }, 10 * SEC);
        assert_eq!(plan.delete, vec![reply.0]);
    }

    #[test]
    fn dumped_connections_missing_from_the_map_are_inserted() {
        let (known, missed) = (entry(1, OWN), entry(2, OWN));
        let slots = slots_of(&known, SEC);
        let plan = plan(&slots, Some(&[known, missed]), &policy(), 10 * SEC);
        assert_eq!(plan.insert, vec![missed]);
        assert!(plan.delete.is_empty());
    }
}
