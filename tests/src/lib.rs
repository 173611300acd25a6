//! The end-to-end test harness: throwaway network namespaces, NAT'd traffic inside them,
//! and `conntrack -L` as an independent oracle.
//!
//! Everything here touches only namespaces it created and the addresses inside them.
//! Every resource is a guard that cleans up on `Drop`, so a failing test leaves no
//! namespace, thread or listener behind. Typical use:
//!
//! ```no_run
//! use e2e_tests::{NatLab, oracle};
//!
//! let lab = NatLab::new("doc").unwrap();              // netns + addresses + DNAT rules
//! let _conn = lab.tcp_connect_v4().unwrap();          // one DNAT'd TCP connection
//! let entries = oracle::nat_entries(&lab.netns).unwrap(); // what the kernel says
//! assert!(!entries.is_empty());
//! ```
//!
//! The tests of this crate (`tests/*.rs`) run the real binaries ([`loader`], [`process`]); the loader's own kernel
//! tests (`privileged-loader/tests/conntrack_core.rs`) use the same harness.
pub mod api_load;
pub mod compare;
mod error;
pub mod loader;
pub mod map_fill;
pub mod nat;
pub mod netns;
pub mod oracle;
pub mod podman;
pub mod process;
pub mod procfs;
pub mod traffic;
pub mod workload;

pub use error::HarnessError;
pub use nat::{Dnat, NatLab};
pub use netns::Netns;
pub use oracle::{Entry, L4, Tuple};
