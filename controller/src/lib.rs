//! The unprivileged controller: it polls a remote-config service, verifies what it
//! receives with TUF (the `trust` crate), keeps the verified state on disk and hands configs to product
//! listeners. See `docs/controller.md` for how to run it.

pub mod config;
pub mod listeners;
pub mod loader;
pub mod metrics;
pub mod remote;
pub mod status;
pub mod store;
