//! The `conntrack` map of a loaded and attached object, CO-RE or prebuilt (both fill it
//! with the layout of `map.rs`), read through [`Conntracker`] and written by the seeding,
//! the destroy listener, the sweep and a reload's handover.
use std::sync::{Mutex, MutexGuard};

use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError};

use super::hook::Strategy;
use super::map::{self, CtKey, CtValue};
use super::removals::Removals;
use super::storm::NewConnections;
use super::{ConntrackError, Conntracker, Entry, MODULE, TableFill, Tuple};
use crate::asset::error_chain;

/// The loaded object and its map.
pub struct CoreConntracker {
    /// Every read — lookups and whole-map walks — goes through this handle with no lock:
    /// the kernel map is safe to read while it is written, and a walk lasts long (131k
    /// slots, two syscalls each), so no lookup or write waits behind another.
    reader: HashMap<MapData, CtKey, CtValue>,
    /// Writes (aya needs `&mut`) through a second handle on the same kernel map, with the
    /// removal generation they keep in step.
    writer: Mutex<Writer>,
    /// Owns the programs and their links: dropping it detaches them.
    _ebpf: Mutex<Ebpf>,
    pub(crate) strategy: Strategy,
    root_netns: u32,
    /// Why the root namespace could not be read, shown in the module's status.
    pub(crate) root_netns_note: Option<String>,
    max_entries: u32,
    /// The programs' count of recorded connections (`storm.rs`); `None` for an object
    /// built without it.
    new_connections: Option<NewConnections>,
}

/// The writing handle on the map.
struct Writer {
    map: HashMap<MapData, CtKey, CtValue>,
    /// The removal generation the programs' per-CPU cache checks; `None` for an object
    /// built without it.
    removals: Option<Removals>,
}

impl CoreConntracker {
    /// Takes the `conntrack` map of a loaded object (CO-RE or prebuilt).
    pub(crate) fn from_loaded(
        mut ebpf: Ebpf,
        strategy: Strategy,
        max_entries: u32,
    ) -> Result<Self, ConntrackError> {
        let missing =
            || ConntrackError::MapRead { map: map::MAP_NAME.into(), reason: "not in the object".into() };
        let map = ebpf.take_map(map::MAP_NAME).ok_or_else(missing)?;
        let map = HashMap::try_from(map).map_err(|e| map_error(&e))?;
        let reader = second_handle(&map)?;
        let (root_netns, root_netns_note) = root_netns();
        let new_connections = NewConnections::take(&mut ebpf);
        let removals = Removals::take(&mut ebpf);
        Ok(Self {
            reader,
            writer: Mutex::new(Writer { map, removals }),
            _ebpf: Mutex::new(ebpf),
            strategy,
            root_netns,
            root_netns_note,
            max_entries,
            new_connections,
        })
    }

    /// Connections the program recorded since it was loaded; `None` when the object has
    /// no counter or it cannot be read.
    pub(crate) fn recorded_connections(&self) -> Option<u64> {
        let counter = self.new_connections.as_ref()?;
        counter
            .total()
            .map_err(|e| tracing::debug!(module = super::MODULE, error = %e, "cannot read conntrack_new"))
            .ok()
    }

    /// Writes both slots of `entry`; false (and a log line) if the kernel refused.
    pub fn insert(&self, entry: &Entry, now_ns: u64) -> bool {
        let mut writer = self.writer();
        let result =
            map::slots_of(entry, now_ns).iter().try_for_each(|(key, value)| writer.map.insert(key, value, 0));
        if let Err(e) = &result {
            tracing::warn!(module = MODULE, ?entry, error = %e, "cannot insert conntrack entry");
        }
        result.is_ok()
    }

    /// Writes `key → value` unless the map already holds `key` (`BPF_NOEXIST`): a
    /// successor's own, newer record of a slot wins over the one handed to it. Returns
    /// whether it was written.
    pub fn insert_absent(&self, key: &CtKey, value: &CtValue) -> bool {
        const BPF_NOEXIST: u64 = 1;
        self.writer().map.insert(key, value, BPF_NOEXIST).is_ok()
    }

    /// The slots of `entry` that still describe it (their value names `entry`'s other
    /// direction): a slot rewritten since, for another connection, is not among them.
    pub fn slots_describing(&self, entry: &Entry) -> Vec<CtKey> {
        map::slots_of(entry, 0)
            .into_iter()
            .filter(|(key, expected)| {
                self.reader.get(key, 0).is_ok_and(|v| v.other == expected.other && v.dir == expected.dir)
            })
            .map(|(key, _)| key)
            .collect()
    }

    /// Deletes `keys`; returns how many were present. Bracketed by the removal
    /// generation's bumps (`removals.rs`).
    pub fn remove_keys(&self, keys: &[CtKey]) -> usize {
        if keys.is_empty() {
            return 0;
        }
        let Writer { map, removals } = &mut *self.writer();
        let mut remove = || keys.iter().filter(|key| map.remove(key).is_ok()).count();
        match removals {
            Some(removals) => removals.around(remove),
            None => remove(),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every slot of the map. Slots deleted while iterating are skipped.
    pub fn snapshot(&self) -> Result<Vec<(CtKey, CtValue)>, ConntrackError> {
        let mut slots = Vec::new();
        self.for_each_slot(|key, value| slots.push((key, value)))?;
        Ok(slots)
    }

    /// Hands every slot of the map to `each` as it is read, skipping slots deleted while
    /// iterating.
    fn for_each_slot(&self, mut each: impl FnMut(CtKey, CtValue)) -> Result<(), ConntrackError> {
        for item in self.reader.iter() {
            match item {
                Ok((key, value)) => each(key, value),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_error(&e)),
            }
        }
        Ok(())
    }
}

impl Conntracker for CoreConntracker {
    fn strategy(&self) -> String {
        self.strategy.name().to_string()
    }

    fn entries(&self) -> Result<Vec<Entry>, ConntrackError> {
        // Converted as it walks: a snapshot of the slots first would hold the whole map
        // twice at the peak.
        let mut entries = Vec::new();
        self.for_each_slot(|key, value| match map::entry_of(&key, &value) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(e) => tracing::debug!(module = MODULE, error = %e, "skipping malformed map slot"),
        })?;
        Ok(entries)
    }

    fn lookup(&self, tuple: &Tuple, netns: u32) -> Result<Option<(Tuple, u32)>, ConntrackError> {
        let namespaces = if netns == self.root_netns { vec![netns] } else { vec![self.root_netns, netns] };
        for ns in namespaces {
            match self.reader.get(&CtKey::from_tuple(tuple, ns), 0) {
                Ok(value) => {
                    let other = value.other.to_tuple().map_err(|e| ConntrackError::MapRead {
                        map: map::MAP_NAME.into(),
                        reason: e.to_string(),
                    })?;
                    return Ok(Some((other, ns)));
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(&e)),
            }
        }
        Ok(None)
    }

    fn tables(&self) -> Vec<TableFill> {
        let entries = self.reader.keys().filter(Result::is_ok).count() as u64;
        vec![TableFill { name: map::MAP_NAME.into(), entries, max_entries: u64::from(self.max_entries) }]
    }

    fn bpf_map_ids(&self) -> Vec<u32> {
        use aya::maps::IterableMap;
        self.reader.map().info().map(|info| vec![info.id()]).unwrap_or_default()
    }
}

/// Another handle on `map`'s kernel map (a duplicated descriptor).
fn second_handle(
    map: &HashMap<MapData, CtKey, CtValue>,
) -> Result<HashMap<MapData, CtKey, CtValue>, ConntrackError> {
    use aya::maps::{IterableMap, Map};
    use std::os::fd::AsFd;
    let fd = map.map().fd().as_fd().try_clone_to_owned().map_err(|e| ConntrackError::MapRead {
        map: map::MAP_NAME.into(),
        reason: format!("duplicating its descriptor: {e}"),
    })?;
    let data = MapData::from_fd(fd).map_err(|e| map_error(&e))?;
    HashMap::try_from(Map::LruHashMap(data)).map_err(|e| map_error(&e))
}

fn map_error(err: &MapError) -> ConntrackError {
    ConntrackError::MapRead { map: map::MAP_NAME.into(), reason: error_chain(err) }
}

/// Inode of the root network namespace (that of pid 1), where the original system looks
/// first; when /proc/1 is not readable, the calling thread's namespace, and a note saying
/// so (lookups of the real root namespace's entries then miss).
fn root_netns() -> (u32, Option<String>) {
    // readlink, not stat: stat of another process's namespace file needs ptrace access,
    // which sandboxes deny even to root; the link text `net:[<inode>]` does not — unless
    // the loader lacks one of PID 1's capabilities, which a root shell in a container may.
    let link = std::fs::read_link("/proc/1/ns/net").map(|l| l.to_string_lossy().into_owned());
    let why = match link.as_deref().map(super::reach::parse_ns_link) {
        Ok(Some(inode)) => return (inode, None),
        Ok(None) => format!("unexpected link text {link:?}"),
        Err(e) => e.to_string(),
    };
    let own = super::ctnetlink::current_netns().unwrap_or(0);
    let note = format!(
        "cannot read /proc/1/ns/net ({why}): the loader's own network namespace ({own}) stands in for the root one; give the loader CAP_SYS_PTRACE or every capability PID 1 has to fix it"
    );
    tracing::warn!(module = MODULE, %note, "root network namespace unknown");
    (own, Some(note))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::super::reach::parse_ns_link;

    #[test]
    fn namespace_links_give_their_inode() {
        assert_eq!(parse_ns_link("net:[4026531833]"), Some(4026531833));
        assert_eq!(parse_ns_link("mnt:[1]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }
}
