//! The stale-entry sweep: which map slots to drop and which entries to (re)insert.
//!
//! Pure policy over a snapshot of the map and fresh conntrack dumps of the loader's own
//! network namespace and of the others it reached (`reach.rs`); `sweeper.rs` does the
//! I/O. The policy (see `docs/conntrack.md`):
//! - never touch a slot written or refreshed after the sweep started (the eBPF program
//!   may be inserting it right now);
//! - a connection of a dumped namespace that two consecutive dumps no longer list is
//!   gone: its DESTROY event was missed (queue overrun, or the entry predates our
//!   subscription). One miss only makes it a suspect, because a dump can skip an entry
//!   that moves while the table is walked, and with fentry/kprobe a wrongly deleted
//!   entry would never come back. Even then the kernel is asked about each one
//!   ([`dumped_deletions`], [`spare`]): an entry it still holds is never deleted;
//! - a connection of a namespace that was not dumped (not reached, or its dump failed)
//!   goes when it was not seen for `stale_after`, if the attach strategy refreshes "seen"
//!   at all — except the own namespace's, which are left alone when its dump failed;
//! - a reply-direction slot whose original slot is gone (LRU eviction) goes too;
//! - a recordable connection of the dump missing from the map is (re)inserted.
use std::collections::{HashMap, HashSet};

use super::Entry;
use super::map::{CtKey, CtValue, Direction};

/// The recordable entries of each namespace dumped for one sweep, by namespace inode. A
/// namespace whose dump failed is absent.
pub type Dumps = HashMap<u32, Vec<Entry>>;

/// What the sweep may assume, fixed for one conntracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepPolicy {
    /// Inode of the loader's own namespace.
    pub own_netns: u32,
    /// Age after which other namespaces' entries are dropped; `None` to keep them until
    /// the LRU evicts them (also when the strategy does not refresh `last_seen_ns`).
    pub stale_after_ns: Option<u64>,
}

/// The changes one sweep makes, and what the next sweep must remember.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    pub delete: Vec<CtKey>,
    pub insert: Vec<Entry>,
    /// Original keys of dumped namespaces missing from this dump for the first time.
    pub suspects: HashSet<CtKey>,
}

/// Plans a sweep started at `started_ns` (CLOCK_MONOTONIC), given the map's slots, the
/// dumps taken after `started_ns` (the own namespace absent when its dump failed: then
/// it is left alone) and the previous sweep's suspects.
pub fn plan(
    slots: &[(CtKey, CtValue)],
    dumps: &Dumps,
    policy: &SweepPolicy,
    started_ns: u64,
    suspects: &HashSet<CtKey>,
) -> SweepPlan {
    let originals: HashMap<CtKey, &CtValue> = slots
        .iter()
        .filter(|(_, v)| v.direction() == Ok(Direction::Original))
        .map(|(k, v)| (*k, v))
        .collect();
    let alive: HashSet<CtKey> =
        dumps.values().flatten().map(|e| CtKey::from_tuple(&e.original, e.netns)).collect();

    let mut plan = SweepPlan::default();
    let mut gone = HashSet::new();
    for (key, value) in &originals {
        match verdict(key, value, dumps, &alive, policy, started_ns) {
            Verdict::Keep => {}
            Verdict::Missing if !suspects.contains(key) => {
                plan.suspects.insert(*key);
            }
            Verdict::Missing | Verdict::Expired => {
                gone.insert(*key);
            }
        }
    }
    for (key, value) in slots {
        let delete = match value.direction() {
            Ok(Direction::Original) => gone.contains(key),
            Ok(Direction::Reply) => {
                gone.contains(&value.other)
                    || (!originals.contains_key(&value.other) && value.last_seen_ns < started_ns)
            }
            Err(_) => true,
        };
        if delete {
            plan.delete.push(*key);
        }
    }
    plan.insert = dumps
        .values()
        .flatten()
        .filter(|e| !originals.contains_key(&CtKey::from_tuple(&e.original, e.netns)))
        .copied()
        .collect();
    plan
}

/// The connections of dumped namespaces (original keys) that `plan` deletes because the
/// dumps no longer list them. A dump is not proof: the caller asks the kernel about each
/// and [`spare`]s those it still holds.
pub fn dumped_deletions(plan: &SweepPlan, slots: &[(CtKey, CtValue)], dumps: &Dumps) -> Vec<CtKey> {
    let deleted: HashSet<&CtKey> = plan.delete.iter().collect();
    slots
        .iter()
        .filter(|(k, v)| dumps.contains_key(&k.netns) && v.direction() == Ok(Direction::Original))
        .filter(|(k, _)| deleted.contains(k))
        .map(|(k, _)| *k)
        .collect()
}

/// Keeps both slots of every connection whose original key is in `held` (the kernel
/// still has it) out of `plan.delete`.
pub fn spare(plan: &mut SweepPlan, slots: &[(CtKey, CtValue)], held: &HashSet<CtKey>) {
    if held.is_empty() {
        return;
    }
    let values: HashMap<&CtKey, &CtValue> = slots.iter().map(|(k, v)| (k, v)).collect();
    plan.delete.retain(|key| {
        let reply_of_held =
            values.get(key).is_some_and(|v| v.direction() == Ok(Direction::Reply) && held.contains(&v.other));
        !held.contains(key) && !reply_of_held
    });
}

enum Verdict {
    Keep,
    /// A dumped namespace's, not in its dump.
    Missing,
    /// A namespace not dumped, not seen for too long.
    Expired,
}

fn verdict(
    original: &CtKey,
    value: &CtValue,
    dumps: &Dumps,
    alive: &HashSet<CtKey>,
    policy: &SweepPolicy,
    started_ns: u64,
) -> Verdict {
    if value.last_seen_ns >= started_ns {
        return Verdict::Keep;
    }
    if dumps.contains_key(&original.netns) {
        return if alive.contains(original) { Verdict::Keep } else { Verdict::Missing };
    }
    if original.netns == policy.own_netns {
        return Verdict::Keep;
    }
    match policy.stale_after_ns {
        Some(limit) if started_ns - value.last_seen_ns > limit => Verdict::Expired,
        _ => Verdict::Keep,
    }
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

    /// A sweep's dumps when only the own namespace was dumped.
    fn own(entries: &[Entry]) -> Dumps {
        Dumps::from([(OWN, entries.to_vec())])
    }

    fn none() -> HashSet<CtKey> {
        HashSet::new()
    }

    #[test]
    fn own_namespace_entries_missing_from_two_dumps_go_with_both_slots() {
        let (live, dead) = (entry(1, OWN), entry(2, OWN));
        let slots: Vec<_> = [live, dead].iter().flat_map(|e| slots_of(e, 5 * SEC)).collect();
        let first = plan(&slots, &own(&[live]), &policy(), 10 * SEC, &none());
        assert!(first.delete.is_empty(), "one miss only makes a suspect");
        assert_eq!(first.suspects, HashSet::from([keys_of(&dead)[0]]));
        let second = plan(&slots, &own(&[live]), &policy(), 20 * SEC, &first.suspects);
        let mut deleted = second.delete.clone();
        deleted.sort_by_key(|k| k.dport);
        let mut want = keys_of(&dead);
        want.sort_by_key(|k| k.dport);
        assert_eq!(deleted, want);
        assert!(second.insert.is_empty() && second.suspects.is_empty());
    }

    #[test]
    fn connections_the_kernel_still_holds_are_spared_with_both_slots() {
        let (held, dead, other) = (entry(1, OWN), entry(2, OWN), entry(3, OTHER));
        let mut slots: Vec<_> = [held, dead].iter().flat_map(|e| slots_of(e, 5 * SEC)).collect();
        slots.extend(slots_of(&other, SEC));
        let suspects = HashSet::from([keys_of(&held)[0], keys_of(&dead)[0]]);
        // Both missing from two dumps (a dump can skip entries); the other namespace's
        // connection expires by age and is not the kernel's to confirm.
        let mut plan = plan(&slots, &own(&[]), &policy(), 120 * SEC, &suspects);
        let mut asked = dumped_deletions(&plan, &slots, &own(&[]));
        asked.sort_by_key(|k| k.sport);
        assert_eq!(asked, vec![keys_of(&held)[0], keys_of(&dead)[0]]);
        spare(&mut plan, &slots, &HashSet::from([keys_of(&held)[0]]));
        let deleted: HashSet<CtKey> = plan.delete.into_iter().collect();
        let want: HashSet<CtKey> = keys_of(&dead).into_iter().chain(keys_of(&other)).collect();
        assert_eq!(deleted, want);
    }

    #[test]
    fn a_suspect_seen_again_is_cleared() {
        let e = entry(1, OWN);
        let slots = slots_of(&e, SEC);
        let suspects = HashSet::from([keys_of(&e)[0]]);
        let plan = plan(&slots, &own(&[e]), &policy(), 10 * SEC, &suspects);
        assert!(plan.delete.is_empty() && plan.suspects.is_empty());
    }

    #[test]
    fn without_a_dump_the_own_namespace_is_left_alone() {
        let slots = slots_of(&entry(1, OWN), 5 * SEC);
        assert_eq!(plan(&slots, &Dumps::new(), &policy(), 10 * SEC, &none()), SweepPlan::default());
    }

    #[test]
    fn slots_written_after_the_sweep_started_are_kept() {
        let slots = slots_of(&entry(1, OWN), 11 * SEC);
        let suspects = HashSet::from([keys_of(&entry(1, OWN))[0]]);
        let plan = plan(&slots, &own(&[]), &policy(), 10 * SEC, &suspects);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn other_namespaces_expire_by_age_only_when_enabled() {
        let (old, fresh) = (entry(1, OTHER), entry(2, OTHER));
        let mut slots = slots_of(&old, SEC).to_vec();
        slots.extend(slots_of(&fresh, 100 * SEC));
        let now = 120 * SEC;
        let mut deleted = plan(&slots, &own(&[]), &policy(), now, &none()).delete;
        deleted.sort_by_key(|k| k.dport);
        let mut want = keys_of(&old);
        want.sort_by_key(|k| k.dport);
        assert_eq!(deleted, want, "no second miss needed: other namespaces go by age");
        let keep = SweepPolicy { stale_after_ns: None, ..policy() };
        assert!(plan(&slots, &own(&[]), &keep, now, &none()).delete.is_empty());
    }

    #[test]
    fn a_reply_slot_without_its_original_is_dropped() {
        let e = entry(1, OTHER);
        let [_, reply] = slots_of(&e, SEC);
        let plan = plan(
            &[reply],
            &Dumps::new(),
            &SweepPolicy { stale_after_ns: None, ..policy() },
            10 * SEC,
            &none(),
        );
        assert_eq!(plan.delete, vec![reply.0]);
    }

    #[test]
    fn dumped_connections_missing_from_the_map_are_inserted() {
        let (known, missed) = (entry(1, OWN), entry(2, OWN));
        let slots = slots_of(&known, SEC);
        let plan = plan(&slots, &own(&[known, missed]), &policy(), 10 * SEC, &none());
        assert_eq!(plan.insert, vec![missed]);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn a_dumped_other_namespace_is_swept_like_the_own_one_not_by_age() {
        let (live, dead) = (entry(1, OTHER), entry(2, OTHER));
        let slots: Vec<_> = [live, dead].iter().flat_map(|e| slots_of(e, 5 * SEC)).collect();
        let dumps = Dumps::from([(OWN, vec![]), (OTHER, vec![live])]);
        // Ten seconds old only: the age rule would keep both.
        let first = plan(&slots, &dumps, &policy(), 10 * SEC, &none());
        assert!(first.delete.is_empty());
        let second = plan(&slots, &dumps, &policy(), 11 * SEC, &first.suspects);
        let deleted: HashSet<CtKey> = second.delete.iter().copied().collect();
        assert_eq!(deleted, keys_of(&dead).into_iter().collect::<HashSet<_>>());
        assert_eq!(dumped_deletions(&second, &slots, &dumps), vec![keys_of(&dead)[0]]);
    }
}
