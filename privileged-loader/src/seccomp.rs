//! The loader's seccomp allow-list: the calls its serving work makes (every RPC, the
//! conntracker's netlink events and a reload, the lock-statistics collector, runtime
//! threads starting and dropping their capabilities), found by tracing it with `strace -f`
//! through each of them. Installed once start-up is done; `deploy/seccomp/` holds the
//! container profile made from the same lists (`privileged-loader seccomp-profile`).
use hardening::seccomp::Policy;
use hardening::syscalls;

// One group per line, each under what it serves: rustfmt would put one call per line.
#[rustfmt::skip]
pub const POLICY: Policy = Policy {
    allowed: syscalls![
        // files, /proc and /sys (status, audit, BTF and objects on a reload)
        SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_close, SYS_openat, SYS_statx,
        SYS_newfstatat, SYS_fstat, SYS_lseek, SYS_getdents64, SYS_readlink, SYS_readlinkat, SYS_fcntl,
        SYS_ioctl, SYS_unlink, SYS_uname,
        // memory
        SYS_mmap, SYS_munmap, SYS_mprotect, SYS_mremap, SYS_madvise, SYS_brk,
        // the async runtime and its threads
        SYS_futex, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_ctl, SYS_epoll_create1, SYS_eventfd2, SYS_pipe2,
        SYS_poll, SYS_ppoll, SYS_clone, SYS_clone3, SYS_set_robust_list, SYS_rseq, SYS_exit, SYS_exit_group,
        SYS_sigaltstack, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sched_getaffinity,
        SYS_sched_yield, SYS_getrandom, SYS_gettid, SYS_getpid, SYS_tgkill, SYS_nanosleep, SYS_clock_nanosleep,
        SYS_clock_gettime, SYS_prlimit64,
        // the API socket (accepting, peer credentials) and conntrack netlink
        SYS_accept4, SYS_recvfrom, SYS_recvmsg, SYS_sendto, SYS_sendmsg, SYS_getsockopt, SYS_setsockopt,
        SYS_getpeername, SYS_getsockname, SYS_shutdown, SYS_bind,
        // a new runtime thread drops its capabilities and sets no_new_privs
        SYS_prctl, SYS_capget, SYS_capset,
        // eBPF maps, programs and links; perf events for kprobe attachment on a reload
        SYS_bpf, SYS_perf_event_open,
    ],
    // The API socket and netlink only: the loader never talks to the network.
    socket_families: &[libc::AF_UNIX, libc::AF_NETLINK],
    startup_only: syscalls![
        SYS_mkdir, SYS_chmod, SYS_fchmodat, SYS_chown, SYS_fchownat, SYS_listen, SYS_socketpair, SYS_seccomp,
        // the API socket is bound under umask 0177, so it is never open to others
        SYS_umask,
        // loaderctl, run in the container by the probes and `loaderctl audit`
        SYS_connect,
        // entering other network namespaces to open their conntrack dump sockets (needs
        // CAP_SYS_ADMIN too; docs/conntrack.md, "Dumps and sweeps of other namespaces")
        SYS_setns,
    ],
};

/// Environment switch for the tests only: after installing the filter, try a call it
/// forbids (an AF_INET socket) and log the outcome, so a test can see the refusal.
pub const TEST_FORBIDDEN_CALL_ENV: &str = "PRIVILEGED_LOADER_TEST_FORBIDDEN_CALL";

/// Tries `socket(AF_INET, SOCK_STREAM)`; `Err` is the refusal the filter must produce.
pub fn try_forbidden_call() -> std::io::Result<()> {
    // SAFETY: socket(2) with integer arguments; a descriptor we get is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor socket(2) just returned.
    unsafe { libc::close(fd) };
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_container_profile_is_made_from_this_policy() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/seccomp/ebpf-agent-privileged-loader.json");
        let shipped: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("shipped profile")).expect("JSON");
        assert_eq!(
            shipped,
            super::POLICY.container_profile(),
            "{path} is stale: regenerate it with `privileged-loader seccomp-profile > {path}`"
        );
    }
}
