//! The controller holds no privilege: it refuses to start as uid 0 or with any capability,
//! sets `no_new_privs`, and installs its own seccomp filter before its first poll.
use hardening::seccomp::Policy;
use hardening::{ProcessAudit, names, syscalls};

/// The calls the controller makes (traced with `strace -f` through polls, TLS and
/// plaintext, state commits, the loader socket), plus what name resolution needs for an
/// https endpoint given by host name.
// One group per line, each under what it serves: rustfmt would put one call per line.
#[rustfmt::skip]
pub const SECCOMP: Policy = Policy {
    allowed: syscalls![
        // files: configuration, token, trusted root, the state directory's transactions
        SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_close, SYS_openat,
        SYS_statx, SYS_newfstatat, SYS_fstat, SYS_lseek, SYS_getdents64, SYS_readlink, SYS_fcntl, SYS_flock,
        SYS_fsync, SYS_fdatasync, SYS_rename, SYS_renameat, SYS_renameat2, SYS_mkdir, SYS_mkdirat, SYS_unlink,
        SYS_unlinkat, SYS_ftruncate, SYS_fchmod, SYS_fstatfs, SYS_ioctl, SYS_uname,
        // memory
        SYS_mmap, SYS_munmap, SYS_mprotect, SYS_mremap, SYS_madvise, SYS_brk,
        // the async runtime and its blocking threads
        SYS_futex, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_ctl, SYS_epoll_create1, SYS_eventfd2, SYS_pipe2,
        SYS_poll, SYS_ppoll, SYS_clone, SYS_clone3, SYS_set_robust_list, SYS_rseq, SYS_exit, SYS_exit_group,
        SYS_sigaltstack, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sched_getaffinity,
        SYS_sched_yield, SYS_getrandom, SYS_gettid, SYS_getpid, SYS_tgkill, SYS_nanosleep, SYS_clock_nanosleep,
        SYS_clock_gettime, SYS_prlimit64, SYS_prctl, SYS_capget, SYS_geteuid, SYS_getuid, SYS_getresuid,
        SYS_getresgid,
        // network: the service (TCP, DNS over UDP), the loader's unix socket, a metrics listener
        SYS_connect, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg, SYS_getsockopt,
        SYS_setsockopt, SYS_getsockname, SYS_getpeername, SYS_shutdown, SYS_bind, SYS_listen, SYS_accept4,
    ],
    socket_families: &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK],
    startup_only: syscalls![SYS_socketpair, SYS_seccomp],
};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "refusing to run as uid 0: the controller is the network-facing half and must run unprivileged \
         (runAsUser in the pod; allow_root = true only for development)"
    )]
    Root,
    #[error(
        "refusing to run holding {0}: the controller needs no capability; drop them \
         (capabilities.drop: [ALL] in the pod; allow_root = true only for development)"
    )]
    Capabilities(String),
    #[error("cannot read this process's privileges: {0}")]
    Read(#[from] hardening::AuditError),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Refuses uid 0 and any capability in the effective, permitted, inheritable or ambient
/// set, naming each. The bounding set is not checked: with `no_new_privs` it cannot give
/// anything back (no exec gains a capability), and an unprivileged parent cannot empty it.
pub fn refuse_privileges(audit: &ProcessAudit) -> Result<(), PrivilegeError> {
    if audit.uids.contains(&0) {
        return Err(PrivilegeError::Root);
    }
    let held: Vec<String> = audit
        .threads
        .iter()
        .flat_map(|t| t.caps.named().into_iter().take(4))
        .filter(|(_, mask)| *mask != 0)
        .map(|(set, mask)| format!("{} ({set})", names(mask).join(",")))
        .collect();
    if held.is_empty() { Ok(()) } else { Err(PrivilegeError::Capabilities(held.join("; "))) }
}

/// Sets `no_new_privs`: nothing the controller could exec would gain privileges.
pub fn set_no_new_privs() -> Result<(), PrivilegeError> {
    hardening::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hardening::{CapSets, ThreadPrivileges};

    fn audit(uid: u32, caps: CapSets) -> ProcessAudit {
        ProcessAudit {
            uids: vec![uid; 4],
            threads: vec![ThreadPrivileges { tid: 1, caps, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn refuses_root_and_names_each_held_capability() {
        assert!(matches!(refuse_privileges(&audit(0, CapSets::default())), Err(PrivilegeError::Root)));
        let raw = 1u64 << 13; // CAP_NET_RAW
        let err =
            refuse_privileges(&audit(65532, CapSets { ambient: raw, permitted: raw, ..Default::default() }))
                .expect_err("a capability must be refused");
        let text = err.to_string();
        assert!(text.contains("CAP_NET_RAW (permitted)") && text.contains("CAP_NET_RAW (ambient)"), "{text}");
        let bounding_only = CapSets { bounding: u64::MAX >> 23, ..Default::default() };
        assert!(refuse_privileges(&audit(65532, bounding_only)).is_ok(), "the bounding set alone is inert");
    }

    #[test]
    fn the_shipped_container_profile_is_made_from_this_policy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/seccomp/ebpf-agent-controller.json");
        let shipped: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("shipped profile")).expect("JSON");
        assert_eq!(
            shipped,
            SECCOMP.container_profile(),
            "{path} is stale: regenerate it with `controller seccomp-profile > {path}`"
        );
    }
}
