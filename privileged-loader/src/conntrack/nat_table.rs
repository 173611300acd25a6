//! The netlink conntracker's table: NAT'd entries in userspace, bounded, answerable both
//! ways (original → reply and reply → original) like the eBPF map. Pure, unit-tested.
use std::collections::{BTreeMap, HashMap};

use super::{Entry, Tuple};

type Key = (Tuple, u32);

/// At most `capacity` connections; when full, the oldest insertion goes first (the
/// userspace counterpart of the eBPF map's LRU bound). Evictions are counted.
pub struct NatTable {
    capacity: usize,
    /// Original tuple → (reply tuple, generation).
    originals: HashMap<Key, (Tuple, u64)>,
    /// Reply tuple → original tuple.
    replies: HashMap<Key, Tuple>,
    /// Generation → original key: insertion order, for eviction.
    age: BTreeMap<u64, Key>,
    next_generation: u64,
    evicted: u64,
}

impl NatTable {
    pub fn new(capacity: usize) -> Self {
        NatTable {
            capacity: capacity.max(1),
            originals: HashMap::new(),
            replies: HashMap::new(),
            age: BTreeMap::new(),
            next_generation: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.originals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records `entry` (replacing an entry with the same original tuple).
    pub fn insert(&mut self, entry: Entry) {
        self.remove(&entry.original, entry.netns);
        while self.originals.len() >= self.capacity {
            let Some((_, (tuple, netns))) = self.age.pop_first() else { break };
            self.remove(&tuple, netns);
            self.evicted += 1;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.originals.insert((entry.original, entry.netns), (entry.reply, generation));
        self.replies.insert((entry.reply, entry.netns), entry.original);
        self.age.insert(generation, (entry.original, entry.netns));
    }

    /// Forgets the connection whose original tuple is `original`.
    pub fn remove(&mut self, original: &Tuple, netns: u32) {
        if let Some((reply, generation)) = self.originals.remove(&(*original, netns)) {
            self.replies.remove(&(reply, netns));
            self.age.remove(&generation);
        }
    }

    /// Replaces the connections of namespace `netns` with `entries` (a resync from a
    /// fresh dump of that namespace); other namespaces' connections stay.
    pub fn replace_namespace(&mut self, netns: u32, entries: impl IntoIterator<Item = Entry>) {
        let stale: Vec<Tuple> =
            self.originals.keys().filter(|(_, ns)| *ns == netns).map(|(original, _)| *original).collect();
        for original in &stale {
            self.remove(original, netns);
        }
        for entry in entries.into_iter().filter(|e| e.netns == netns) {
            self.insert(entry);
        }
    }

    /// The other direction of `tuple` in `netns`, whichever direction `tuple` is.
    pub fn translate(&self, tuple: &Tuple, netns: u32) -> Option<Tuple> {
        let key = (*tuple, netns);
        self.originals.get(&key).map(|(reply, _)| *reply).or_else(|| self.replies.get(&key).copied())
    }

    pub fn entries(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self
            .originals
            .iter()
            .map(|((original, netns), (reply, _))| Entry {
                original: *original,
                reply: *reply,
                netns: *netns,
            })
            .collect();
        entries.sort();
        entries
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;
    use crate::conntrack::Protocol;

    fn entry(port: u16) -> Entry {
        let t = |src: &str, sp, dst: &str, dp| Tuple {
            src: src.parse().unwrap(),
            src_port: sp,
            dst: dst.parse().unwrap(),
            dst_port: dp,
            protocol: Protocol::Tcp,
        };
        Entry {
            original: t("10.0.0.1", port, "10.99.0.1", 80),
            reply: t("127.0.0.1", 8080, "10.0.0.1", port),
            netns: 7,
        }
    }

    #[test]
    fn translates_both_ways_within_the_namespace_only() {
        let mut table = NatTable::new(8);
        let e = entry(1000);
        table.insert(e);
        assert_eq!(table.translate(&e.original, 7), Some(e.reply));
        assert_eq!(table.translate(&e.reply, 7), Some(e.original));
        assert_eq!(table.translate(&e.original, 8), None);
        table.remove(&e.original, 7);
        assert!(table.is_empty());
        assert_eq!(table.translate(&e.reply, 7), None, "both directions go together");
    }

    #[test]
    fn a_full_table_evicts_the_oldest_and_counts_it() {
        let mut table = NatTable::new(2);
        for port in [1, 2, 3] {
            table.insert(entry(port));
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.evicted(), 1);
        assert_eq!(table.translate(&entry(1).original, 7), None);
        assert!(table.translate(&entry(3).original, 7).is_some());
    }

    #[test]
    fn reinserting_refreshes_instead_of_duplicating() {
        let mut table = NatTable::new(2);
        table.insert(entry(1));
        table.insert(entry(2));
        table.insert(entry(1)); // now the youngest
        table.insert(entry(3));
        assert_eq!(table.entries().iter().map(|e| e.original.src_port).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn a_resync_replaces_its_namespace_and_keeps_the_others() {
        let mut table = NatTable::new(8);
        let other = Entry { netns: 9, ..entry(4) };
        table.insert(entry(1));
        table.insert(other);
        table.replace_namespace(7, [entry(2), entry(3)]);
        assert_eq!(table.entries(), vec![entry(2), entry(3), other]);
        table.replace_namespace(9, []);
        assert_eq!(table.entries(), vec![entry(2), entry(3)]);
    }
}
