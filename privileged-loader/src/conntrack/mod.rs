//! Conntrackers: where the loader learns the NAT translations the kernel's conntrack made.
//!
//! Every implementation (CO-RE eBPF, prebuilt eBPF with guessed offsets, netlink) answers
//! through the same [`Conntracker`] trait, so the API, the CLI and the sweep are shared.
pub mod chain;
pub mod config;
pub mod core;
pub mod ctnetlink;
mod destroy_listener;
pub mod handover;
pub mod hook;
pub mod implementation;
pub mod map;
pub mod map_tracker;
pub mod nat_table;
pub mod netlink_tracker;
pub mod prebuilt;
pub mod reach;
mod removals;
pub mod serve;
pub mod storm;
pub mod sweep;
mod sweeper;
mod tuple;

use std::sync::atomic::{AtomicBool, AtomicU64};

pub use self::chain::start_core as start;
pub use self::config::ConntrackConfig;
pub use self::serve::RunningConntracker;
pub use tuple::{Entry, Protocol, Tuple, TupleError};

/// Name of the conntracker's module in the status registry, whichever implementation runs.
pub const MODULE: &str = "conntrack";

/// Counters of the netlink side, for status and tests.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    /// NAT'd entries inserted from the initial dump.
    pub initial_entries: AtomicU64,
    /// DESTROY events received.
    pub destroy_events: AtomicU64,
    /// ctnetlink GETs the DESTROY listener made (one per destroyed own-namespace NAT'd
    /// connection still in the map: is a newer entry holding its tuple?).
    pub destroy_gets: AtomicU64,
    /// Time those GETs took, in nanoseconds (round trip, wall clock).
    pub destroy_get_ns: AtomicU64,
    /// Times the kernel dropped events (ENOBUFS) on the event socket.
    pub enobufs: AtomicU64,
    /// Sweeps run (periodic and after an overrun).
    pub sweeps: AtomicU64,
    /// Map slots the sweeps deleted.
    pub swept_slots: AtomicU64,
    /// The DESTROY subscription is shed now (a connection storm, `storm.rs`).
    pub destroy_shed: AtomicBool,
    /// Times it was shed.
    pub storm_sheds: AtomicU64,
    /// Connections the eBPF program recorded per second, at the last one-second sample.
    pub recorded_per_sec: AtomicU64,
    /// Set when the subscription is restored: the next sweep deletes own-namespace
    /// connections missing from its dump at once (each still confirmed with the kernel),
    /// not at the second miss, since every DESTROY of the storm was missed.
    pub resync_after_shed: AtomicBool,
}

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
