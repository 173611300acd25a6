//! [`ProcessAudit`] as the loader's `GetAudit` answer, and back: the loader sends the facts,
//! `loaderctl` checks the rules, so both sides go through this one mapping.
use shared_proto::loader::v1 as pb;

use crate::capsets::CapSets;
use crate::process::{FileOwner, ProcessAudit, ThreadPrivileges};

/// The answer for `audit`, with the loader's kept mask and start-up capability uses.
pub fn to_response(audit: &ProcessAudit, kept: u64, startup: &[String]) -> pb::GetAuditResponse {
    pb::GetAuditResponse {
        pid: audit.pid,
        uids: audit.uids.clone(),
        gids: audit.gids.clone(),
        threads: audit.threads.iter().map(thread_to).collect(),
        listening: audit.listening.clone(),
        socket: audit.socket.as_ref().map(owner_to),
        socket_dir: audit.socket_dir.as_ref().map(owner_to),
        kept_capabilities: kept,
        startup_capabilities: startup.to_vec(),
    }
}

/// The audit in an answer (the kept mask and start-up uses are read from it directly).
pub fn from_response(r: &pb::GetAuditResponse) -> ProcessAudit {
    ProcessAudit {
        pid: r.pid,
        uids: r.uids.clone(),
        gids: r.gids.clone(),
        threads: r.threads.iter().map(thread_from).collect(),
        listening: r.listening.clone(),
        socket: r.socket.as_ref().map(owner_from),
        socket_dir: r.socket_dir.as_ref().map(owner_from),
    }
}

fn thread_to(t: &ThreadPrivileges) -> pb::ThreadPrivileges {
    pb::ThreadPrivileges {
        tid: t.tid,
        name: t.name.clone(),
        effective: t.caps.effective,
        permitted: t.caps.permitted,
        inheritable: t.caps.inheritable,
        ambient: t.caps.ambient,
        bounding: t.caps.bounding,
        no_new_privs: t.no_new_privs,
        seccomp_mode: t.seccomp_mode,
    }
}

fn thread_from(t: &pb::ThreadPrivileges) -> ThreadPrivileges {
    ThreadPrivileges {
        tid: t.tid,
        name: t.name.clone(),
        caps: CapSets {
            effective: t.effective,
            permitted: t.permitted,
            inheritable: t.inheritable,
            ambient: t.ambient,
            bounding: t.bounding,
        },
        no_new_privs: t.no_new_privs,
        seccomp_mode: t.seccomp_mode,
    }
}

fn owner_to(o: &FileOwner) -> pb::FileOwner {
    pb::FileOwner { path: o.path.to_string_lossy().into_owned(), uid: o.uid, gid: o.gid, mode: o.mode }
}

fn owner_from(o: &pb::FileOwner) -> FileOwner {
    FileOwner { path: o.path.clone().into(), uid: o.uid, gid: o.gid, mode: o.mode }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_survives_the_wire() {
        let mut audit = ProcessAudit::read(None).expect("/proc/self");
        audit.socket = Some(FileOwner { path: "/run/x.sock".into(), uid: 0, gid: 5, mode: 0o660 });
        let answer = to_response(&audit, 7, &["CAP_CHOWN: the socket's group".into()]);
        assert_eq!(from_response(&answer), audit);
        assert_eq!(answer.kept_capabilities, 7);
    }
}
