//! The privileged loader: the only process that touches the kernel's BPF subsystem.
pub mod api;
pub mod asset;
pub mod btf;
pub mod config;
pub mod conntrack;
pub mod heap;
pub mod lockstats;
pub mod map_count;
pub mod modules;
pub mod objects;
pub mod offsetguess;
pub mod privileges;
pub mod probe;
pub mod remote_config;
pub mod seccomp;
pub mod status;
