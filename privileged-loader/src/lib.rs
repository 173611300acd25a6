//! The privileged loader: the only process that touches the kernel's BPF subsystem.
pub mod asset;
pub mod btf;
pub mod conntrack;
pub mod lockstats;
pub mod objects;
pub mod probe;
pub mod status;
