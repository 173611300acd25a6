//! TUF verification of remote-config updates, shared by the controller (which verifies
//! every response before it forwards anything) and the loader (which re-verifies every
//! proof it is asked to apply, against its own pinned root).
//!
//! The service sends raw TUF 1.0 documents (roots, a signed targets document) and the
//! config files a client lacks. Nothing from a response is trusted until [`apply_update`]
//! has walked the root chain, checked the targets signatures, versions and expiry, and
//! matched every config file against its signed length and hashes. The `tough` crate
//! provides the schema types, canonical JSON and the key/threshold checks; this crate
//! adds the remote-config rules on top (config paths, `custom.v`, rollback, cached files).
//!
//! Everything here is pure: no clock, no I/O, no network. The caller passes the time in.
//! [`products`] holds the schemas of the payloads the loader accepts, so both sides check
//! a config the same way.

mod btf;
mod config_path;
mod error;
pub mod products;
mod state;
mod verify;

#[cfg(any(test, feature = "test-repo"))]
pub mod test_repo;

pub use config_path::ConfigPath;
pub use error::VerifyError;
pub use state::{ApplyState, ConfigEntry, TargetsMeta, TrustedState};
pub use verify::{Applied, ExpiryCheck, Update, apply_update, root_version};
