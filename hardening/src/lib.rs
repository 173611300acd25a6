//! What a process may do, read from `/proc` rather than trusted from its configuration,
//! and the rules of `docs/privilege-audit.md` checked against it.
//!
//! Reading is split from checking: [`ProcessAudit::read`] touches `/proc`; the parsers
//! and [`rules`] are pure and unit-tested. The loader answers its audit RPC with a
//! [`ProcessAudit`] of itself; `loaderctl audit` and `controller audit` run the rules.
mod capsets;
mod process;
pub mod rules;
pub mod seccomp;
mod sockets;
pub mod wire;

pub use capsets::{CapSets, mask_of, names};
pub use process::{AuditError, FileOwner, ProcessAudit, ThreadPrivileges};
pub use rules::{Check, Verdict};
pub use sockets::listening_sockets;
