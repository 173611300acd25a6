//! Least privilege, checked: what a process may do, read from `/proc` rather than trusted
//! from its configuration, the rules of `docs/privilege-audit.md` checked against it, and
//! the seccomp allow-lists the loader and the controller install ([`seccomp`]).
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

/// Sets `no_new_privs` on the calling thread (threads started later inherit it): nothing
/// the process executes can gain privileges, through setuid or file capabilities.
pub fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers and only changes
    // this process's own flags.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
