//! Conntrackers: where the loader learns the NAT translations the kernel's conntrack made.
//!
//! Every implementation (CO-RE eBPF, prebuilt eBPF with guessed offsets, netlink) answers
//! through the same [`Conntracker`] trait, so the API, the CLI and the sweep are shared.
pub mod chain;
pub mod config;
pub mod core;
pub mod ctnetlink;
pub mod handover;
pub mod map;
pub mod nat_table;
pub mod netlink_tracker;
pub mod prebuilt;
pub mod storm;
pub mod sweep;
mod tuple;

pub use self::config::ConntrackConfig;
pub use self::core::{ConntrackStats, RunningConntracker, start};
pub use tuple::{Entry, Protocol, Tuple, TupleError};

/// Fill level of one map or table a conntracker owns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableFill {
    pub name: String,
    pub entries: u64,
    pub max_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("reading conntrack map {map}: {reason}")]
    MapRead { map: String, reason: String },
    #[error("the conntracker is disabled by configuration (conntrack.enabled = false)")]
    Disabled,
    #[error(transparent)]
    Config(#[from] config::ConntrackConfigError),
    #[error("loading the conntrack eBPF asset: {0}")]
    Load(#[from] crate::asset::AssetError),
}

/// The read side of a running conntracker.
pub trait Conntracker: Send + Sync {
    /// Short name of the implementation in use, e.g. `core/tp_btf`.
    fn strategy(&self) -> String;
    /// One entry per NAT'd connection: its original tuple, reply tuple and netns.
    fn entries(&self) -> Result<Vec<Entry>, ConntrackError>;
    /// The translation of `tuple` in network namespace `netns`: the reply tuple for an
    /// original tuple and the original for a reply tuple. Returns the tuple and the
    /// namespace it was found in.
    fn lookup(&self, tuple: &Tuple, netns: u32) -> Result<Option<(Tuple, u32)>, ConntrackError>;
    /// Fill levels of the maps/tables behind this conntracker.
    fn tables(&self) -> Vec<TableFill>;
    /// Kernel ids of the BPF maps it owns (none for a userspace table), so the lock
    /// statistics can attribute them to this module.
    fn bpf_map_ids(&self) -> Vec<u32> {
        Vec::new()
    }
}
