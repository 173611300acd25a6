//! TUF verification of remote-config updates.
//!
//! The service sends raw TUF 1.0 documents (roots, a signed targets document) and the
//! config files a client lacks. Nothing from a response is trusted until [`apply_update`]
//! has walked the root chain, checked the targets signatures, versions and expiry, and
//! matched every config file against its signed length and hashes. The `tough` crate
//! provides the schema types, canonical JSON and the key/threshold checks; this module
//! adds the remote-config rules on top (config paths, `custom.v`, rollback, cached files).
//!
//! Everything here is pure: no clock, no I/O. The caller passes the current time in.

mod config_path;
mod error;
mod state;
mod verify;

pub use config_path::ConfigPath;
pub use error::VerifyError;
pub use state::{ApplyState, ConfigEntry, TargetsMeta, TrustedState};
pub use verify::{Applied, ExpiryCheck, Update, apply_update};
