//! Dropping to the steady-state privilege set once every object is loaded.
//!
//! Loading needs more than serving: walking other processes' maps needs CAP_SYS_ADMIN,
//! creating programs needs CAP_BPF/CAP_PERFMON, subscribing to conntrack events needs
//! CAP_NET_ADMIN. After start-up the loader keeps only what its running work needs
//! (reading its own maps, netlink conntrack events) and sets `no_new_privs`, so nothing it
//! executes could regain the rest.
use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities the loader keeps after start-up unless configured otherwise.
pub const STEADY_STATE: &[&str] = &["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("unknown capability {0:?} in privileges.keep: use names like CAP_BPF")]
    UnknownCapability(String),
    #[error("cannot drop capabilities from the {set} set: {reason}")]
    Drop { set: &'static str, reason: String },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Parses capability names (`CAP_BPF`, case-insensitive) into a set.
pub fn parse_caps(names: &[String]) -> Result<CapsHashSet, PrivilegeError> {
    names
        .iter()
        .map(|name| {
            name.to_ascii_uppercase()
                .parse::<Capability>()
                .map_err(|_| PrivilegeError::UnknownCapability(name.clone()))
        })
        .collect()
}

/// Drops every capability not in `keep` from the bounding, inheritable, ambient,
/// permitted and effective sets, then sets `no_new_privs`.
pub fn drop_to(keep: &CapsHashSet) -> Result<(), PrivilegeError> {
    let held = caps::read(None, CapSet::Permitted).map_err(|e| drop_err("permitted", e))?;
    // The bounding set can only shrink while CAP_SETPCAP is still held: do it first.
    for cap in caps::all().difference(keep) {
        if caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|e| PrivilegeError::Drop {
                set: "bounding",
                reason: format!("{e} (grant CAP_SETPCAP for start-up: capabilities.add in the pod)"),
            })?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| drop_err("ambient", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| drop_err("inheritable", e))?;
    let kept: CapsHashSet = held.intersection(keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(|e| drop_err("effective", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| drop_err("permitted", e))?;
    set_no_new_privs()
}

/// The capabilities the loader needs only while starting, each with what it is for (shown
/// in status and in the audit). The container must grant these on top of `keep`; they are
/// gone from every set once start-up ends.
/// `sys_admin_held`: whether the loader started with CAP_SYS_ADMIN, which
/// `lockstats.track_all_maps` needs, and the dumps of other network namespaces use.
pub fn startup_uses(socket_group: Option<u32>, track_all_maps: bool, sys_admin_held: bool) -> Vec<String> {
    let mut uses = vec![
        "CAP_SETPCAP: shrinking the bounding set to the kept capabilities".to_string(),
        NET_BROADCAST_USE.to_string(),
    ];
    if socket_group.is_some() {
        uses.push("CAP_CHOWN: giving the API socket to api.socket_group".into());
    }
    match (track_all_maps, sys_admin_held) {
        (true, _) => {
            uses.push("CAP_SYS_ADMIN: walking other processes' BPF maps (lockstats.track_all_maps)".into())
        }
        (false, true) => uses.push(SYS_ADMIN_WITHOUT_MAPS.into()),
        (false, false) => {}
    }
    uses
}

/// The conntrack event socket is opened while it is held; the kernel checks the
/// socket's opener, so the events keep coming after the drop (docs/conntrack.md).
pub const NET_BROADCAST_USE: &str = "CAP_NET_BROADCAST: conntrack events of every network namespace with an id \
     (NETLINK_LISTEN_ALL_NSID); without it only the loader's own namespace is heard";

/// Said in status and logged when CAP_SYS_ADMIN was granted without `track_all_maps`.
pub const SYS_ADMIN_WITHOUT_MAPS: &str = "CAP_SYS_ADMIN: entering the other network namespaces at start-up to \
     dump their conntrack tables (docs/conntrack.md), and the prebuilt conntracker's offset guessing; \
     lockstats.track_all_maps is off: remove it from the container if you need neither";

/// Whether the calling thread holds CAP_SYS_ADMIN (read before the drop).
pub fn holds_sys_admin() -> bool {
    caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).unwrap_or(false)
}

/// The mask of a capability set (bit n = capability n), as `/proc` prints it.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Names of the capabilities that any thread of this process holds in its effective set,
/// sorted. Capabilities are per thread on Linux, so a drop that missed one thread would
/// show here: the union over `/proc/self/task/*/status` is the honest answer.
pub fn effective() -> Vec<String> {
    let mut mask = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                mask |= cap_eff(&status).unwrap_or(0);
            }
        }
    }
    names_of(mask)
}

/// The `CapEff:` mask of a `/proc/<pid>/status` document.
fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn names_of(mask: u64) -> Vec<String> {
    let mut names: Vec<String> =
        caps::all().into_iter().filter(|c| mask & c.bitmask() != 0).map(|c| c.to_string()).collect();
    names.sort();
    names
}

fn drop_err(set: &'static str, err: caps::errors::CapsError) -> PrivilegeError {
    PrivilegeError::Drop { set, reason: err.to_string() }
}

fn set_no_new_privs() -> Result<(), PrivilegeError> {
    hardening::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_mask_of_a_status_document() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let mask = cap_eff(status).expect("CapEff line");
        assert_eq!(names_of(mask), vec!["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    }

    #[test]
    fn sys_admin_is_explained_with_or_without_the_map_walk() {
        let with_maps = startup_uses(Some(65532), true, true);
        assert!(with_maps.iter().any(|u| u.contains("lockstats.track_all_maps)")), "{with_maps:?}");
        assert!(with_maps.iter().any(|u| u.starts_with("CAP_CHOWN")));
        assert!(startup_uses(None, false, true).contains(&SYS_ADMIN_WITHOUT_MAPS.to_string()));
        assert_eq!(startup_uses(None, false, false).len(), 2, "only CAP_SETPCAP and CAP_NET_BROADCAST");
    }

    #[test]
    fn parses_names_and_rejects_unknown_ones() {
        let set = parse_caps(&["cap_bpf".into(), "CAP_PERFMON".into()]).expect("valid names");
        assert!(set.contains(&Capability::CAP_BPF));
        assert!(set.contains(&Capability::CAP_PERFMON));
        assert!(
            matches!(parse_caps(&["CAP_FLY".into()]), Err(PrivilegeError::UnknownCapability(n)) if n == "CAP_FLY")
        );
    }
}
