//! The unprivileged controller: it polls a remote-config service, verifies what it
//! receives with TUF, keeps the verified state on disk and hands configs to product
//! listeners. See `docs/controller.md` for how to run it.

pub mod config;
pub mod health;
pub mod listeners;
pub mod privileges;
pub mod remote;
pub mod status;
pub mod store;
pub mod tuf;

/// Signed test metadata, shared with the integration tests and the benchmark.
#[cfg(test)]
#[path = "../tests/support/repo.rs"]
pub(crate) mod test_repo;
