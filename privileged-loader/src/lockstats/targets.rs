//! Which maps to watch: the loader's own maps always, every other map when
//! `track_all_maps` is on. Watched maps are opened by id and their fds held for the
//! collector's lifetime, so a map cannot be freed (and its memory reused by something
//! else) while contention on its address range is attributed to it.
use aya::maps::{MapFd, MapInfo};
use serde::Serialize;

use super::layout::MapLayout;

/// The owner name of maps the loader did not create.
pub const EXTERNAL: &str = "external";

/// How the caller names one of its maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapSelector {
    Id(u32),
    /// The kernel's name (at most 15 bytes, longer names are compared truncated).
    Name(String),
}

/// A map the loader owns, and the module that owns it (e.g. "conntrack").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnedMap {
    pub selector: MapSelector,
    pub owner: String,
}

impl OwnedMap {
    pub fn by_id(id: u32, owner: impl Into<String>) -> Self {
        Self { selector: MapSelector::Id(id), owner: owner.into() }
    }
    pub fn by_name(name: impl Into<String>, owner: impl Into<String>) -> Self {
        Self { selector: MapSelector::Name(name.into()), owner: owner.into() }
    }

    fn matches(&self, map: &MapLayout) -> bool {
        match &self.selector {
            MapSelector::Id(id) => map.id == *id,
            MapSelector::Name(name) => map.name == truncated(name),
        }
    }
}

/// The kernel keeps BPF_OBJ_NAME_LEN - 1 = 15 bytes of a name.
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A map chosen for watching, with its owner module or [`EXTERNAL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub layout: MapLayout,
    pub owner: String,
}

/// Owned maps first (they get the range budget first), then, with `track_all`, every
/// other map by id. Also returns the selectors that matched no map.
pub fn select(maps: &[MapLayout], owned: &[OwnedMap], track_all: bool) -> (Vec<Target>, Vec<OwnedMap>) {
    let owner_of = |m: &MapLayout| owned.iter().find(|o| o.matches(m)).map(|o| o.owner.clone());
    let mut targets: Vec<Target> =
        maps.iter().filter_map(|m| owner_of(m).map(|owner| Target { layout: m.clone(), owner })).collect();
    if track_all {
        let mut external: Vec<Target> = maps
            .iter()
            .filter(|m| owner_of(m).is_none())
            .map(|m| Target { layout: m.clone(), owner: EXTERNAL.into() })
            .collect();
        external.sort_by_key(|t| t.layout.id);
        targets.extend(external);
    }
    let unmatched = owned.iter().filter(|o| !maps.iter().any(|m| o.matches(m))).cloned().collect();
    (targets, unmatched)
}

/// Fds kept free for the rest of the loader (gRPC connections, other modules).
const FD_RESERVE: u64 = 256;

/// How many more map fds the collector may hold. Raises the soft RLIMIT_NOFILE to the
/// hard limit first: watching every map holds one fd per map, and the common soft limit
/// (1024) is below what a busy system's maps need.
pub fn fd_budget() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised RLIMIT_NOFILE to hold watched maps"
                );
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    soft.saturating_sub(open).saturating_sub(FD_RESERVE)
}

/// A watched map's fd, held open.
pub struct HeldMap {
    pub id: u32,
    _fd: MapFd,
}

/// Opens a target by id and checks it is still the map the iterator saw (same name):
/// ids are not reused while the kernel runs, but a map can vanish in between.
pub fn hold(target: &Target) -> Result<HeldMap, String> {
    let id = target.layout.id;
    let info = MapInfo::from_id(id).map_err(|e| format!("opening map id {id}: {e}"))?;
    if info.name_as_str().unwrap_or_default() != target.layout.name {
        return Err(format!("map id {id} changed between the walk and opening it"));
    }
    let fd = info.fd().map_err(|e| format!("opening map id {id}: {e}"))?;
    Ok(HeldMap { id, _fd: fd })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(id: u32, name: &str) -> MapLayout {
        MapLayout { id, name: name.into(), ..MapLayout::default() }
    }

    #[test]
    fn owned_maps_come_first_with_their_owner() {
        let maps = [map(1, "other"), map(5, "conn_lru"), map(3, "x")];
        let owned = [OwnedMap::by_name("conn_lru", "conntrack")];
        let (targets, unmatched) = select(&maps, &owned, true);
        let got: Vec<_> = targets.iter().map(|t| (t.layout.id, t.owner.as_str())).collect();
        assert_eq!(got, vec![(5, "conntrack"), (1, EXTERNAL), (3, EXTERNAL)]);
        assert!(unmatched.is_empty());
    }

    #[test]
    fn without_track_all_only_owned_maps_are_watched() {
        let maps = [map(1, "other"), map(2, "mine")];
        let (targets, _) = select(&maps, &[OwnedMap::by_id(2, "lockstats-test")], false);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].layout.id, 2);
    }

    #[test]
    fn long_names_match_the_kernels_truncated_name_and_misses_are_reported() {
        let maps = [map(9, "a_very_long_map")];
        let owned = [OwnedMap::by_name("a_very_long_map_name", "m"), OwnedMap::by_id(77, "m")];
        let (targets, unmatched) = select(&maps, &owned, false);
        assert_eq!(targets.len(), 1);
        assert_eq!(unmatched, vec![OwnedMap::by_id(77, "m")]);
    }
}
