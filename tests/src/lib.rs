//! Shared harness of the end-to-end tests (`tests/tests/*.rs`): real processes, real
//! network namespaces, the kernel's own conntrack view as the oracle.
pub mod loader;
pub mod process;
