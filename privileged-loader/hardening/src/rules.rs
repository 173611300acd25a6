//! The rules of `docs/privilege-audit.md`, checked against a [`ProcessAudit`]. Each rule
//! has the id the document uses; a failed rule names the threads or sockets at fault.
use std::fmt::Write as _;

use serde::Serialize;

use crate::capsets::names;
use crate::process::{FileOwner, ProcessAudit, ThreadPrivileges};

/// One rule's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub rule: &'static str,
    pub pass: bool,
    /// What failed (empty when the rule passes).
    pub detail: String,
}

/// Every rule's outcome for one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn all_pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// The ids of the failed rules.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| !c.pass).map(|c| c.id).collect()
    }
}

/// The loader's rules (L1–L7); `kept` is the mask of its steady-state capabilities.
pub fn loader(audit: &ProcessAudit, kept: u64) -> Verdict {
    let threads = &audit.threads;
    Verdict {
        checks: vec![
            every_thread("L1", "effective and permitted are exactly the kept set", threads, |t| {
                t.caps.effective == kept && t.caps.permitted == kept
            }),
            every_thread("L2", "inheritable and ambient are empty", threads, |t| {
                t.caps.inheritable == 0 && t.caps.ambient == 0
            }),
            every_thread("L3", "the bounding set holds nothing beyond the kept set", threads, |t| {
                t.caps.bounding & !kept == 0
            }),
            every_thread("L4", "no_new_privs is set", threads, |t| t.no_new_privs),
            every_thread("L5", "a seccomp filter is installed", threads, |t| t.seccomp_mode == 2),
            no_listening("L6", audit),
            socket_private("L7", audit),
        ],
    }
}

/// The controller's rules (C1–C4).
pub fn controller(audit: &ProcessAudit) -> Verdict {
    let threads = &audit.threads;
    let root = audit.uids.contains(&0);
    Verdict {
        checks: vec![
            Check {
                id: "C1",
                rule: "no user id is 0 (real, effective, saved, filesystem)",
                pass: !root && !audit.uids.is_empty(),
                detail: if root { format!("uids {:?}", audit.uids) } else { String::new() },
            },
            every_thread(
                "C2",
                "no capability in the effective, permitted, inheritable or ambient set",
                threads,
                |t| (t.caps.effective | t.caps.permitted | t.caps.inheritable | t.caps.ambient) == 0,
            ),
            every_thread("C3", "no_new_privs is set", threads, |t| t.no_new_privs),
            every_thread("C4", "a seccomp filter is installed", threads, |t| t.seccomp_mode == 2),
        ],
    }
}

fn every_thread(
    id: &'static str,
    rule: &'static str,
    threads: &[ThreadPrivileges],
    ok: impl Fn(&ThreadPrivileges) -> bool,
) -> Check {
    let bad: Vec<String> =
        threads.iter().filter(|t| !ok(t)).map(|t| format!("{} ({})", t.tid, t.name)).collect();
    let pass = bad.is_empty() && !threads.is_empty();
    let detail = if threads.is_empty() { "no thread was read".to_string() } else { failing("threads", &bad) };
    Check { id, rule, pass, detail }
}

fn no_listening(id: &'static str, audit: &ProcessAudit) -> Check {
    let pass = audit.listening.is_empty();
    Check { id, rule: "no listening network socket", pass, detail: failing("sockets", &audit.listening) }
}

fn socket_private(id: &'static str, audit: &ProcessAudit) -> Check {
    let rule = "the API socket is not reachable by others (mode 0660 or stricter)";
    match &audit.socket {
        None => Check { id, rule, pass: false, detail: "the API socket was not found".into() },
        Some(s) => {
            let pass = s.mode & 0o007 == 0;
            Check {
                id,
                rule,
                pass,
                detail: if pass { String::new() } else { format!("mode {:04o}", s.mode) },
            }
        }
    }
}

fn failing(what: &str, items: &[String]) -> String {
    if items.is_empty() { String::new() } else { format!("{what}: {}", items.join(", ")) }
}

/// The report `loaderctl audit` and `controller audit` print: the facts, then one
/// PASS/FAIL line per rule.
pub fn render(audit: &ProcessAudit, verdict: &Verdict) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "process {}: uids {:?} gids {:?}", audit.pid, audit.uids, audit.gids);
    for t in &audit.threads {
        let _ = write!(out, "thread {} ({}):", t.tid, t.name);
        for (set, mask) in t.caps.named() {
            let listed = names(mask);
            let _ = write!(out, " {set}={}", if listed.is_empty() { "-".into() } else { listed.join(",") });
        }
        let seccomp =
            ["disabled", "strict", "filter"].get(t.seccomp_mode as usize).copied().unwrap_or("unknown");
        let _ = writeln!(out, " no_new_privs={} seccomp={seccomp}", u8::from(t.no_new_privs));
    }
    for (what, file) in [("API socket", &audit.socket), ("its directory", &audit.socket_dir)] {
        if let Some(FileOwner { path, uid, gid, mode }) = file {
            let _ = writeln!(out, "{what} {}: uid {uid} gid {gid} mode {mode:04o}", path.display());
        }
    }
    let listening = if audit.listening.is_empty() { "none".to_string() } else { audit.listening.join(", ") };
    let _ = writeln!(out, "listening network sockets: {listening}");
    for c in &verdict.checks {
        let mark = if c.pass { "PASS" } else { "FAIL" };
        let detail = if c.detail.is_empty() { String::new() } else { format!(" — {}", c.detail) };
        let _ = writeln!(out, "{mark} {} {}{detail}", c.id, c.rule);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capsets::CapSets;

    const KEPT: u64 = 0x0000_00c0_0000_1000;

    fn steady_thread(tid: u32) -> ThreadPrivileges {
        let caps = CapSets { effective: KEPT, permitted: KEPT, bounding: KEPT, ..Default::default() };
        ThreadPrivileges { tid, name: "t".into(), caps, no_new_privs: true, seccomp_mode: 2 }
    }

    fn loader_audit() -> ProcessAudit {
        let socket = FileOwner { path: "/run/x.sock".into(), uid: 0, gid: 65532, mode: 0o660 };
        ProcessAudit {
            pid: 1,
            uids: vec![0; 4],
            threads: vec![steady_thread(1), steady_thread(2)],
            socket: Some(socket),
            ..Default::default()
        }
    }

    #[test]
    fn a_dropped_loader_passes_every_rule() {
        let verdict = loader(&loader_audit(), KEPT);
        assert!(verdict.all_pass(), "{verdict:#?}");
    }

    #[test]
    fn one_thread_that_kept_more_fails_and_is_named() {
        let mut audit = loader_audit();
        audit.threads[1].caps.effective |= 1 << 21; // CAP_SYS_ADMIN
        let verdict = loader(&audit, KEPT);
        let l1 = &verdict.checks[0];
        assert!(!l1.pass && l1.detail.contains("2 (t)"), "{l1:?}");
        assert!(render(&audit, &verdict).contains("FAIL L1"));
    }

    #[test]
    fn a_listening_socket_or_open_api_socket_fails() {
        let mut audit = loader_audit();
        audit.listening.push("tcp 0.0.0.0:80".into());
        audit.socket.as_mut().expect("socket").mode = 0o666;
        let failed: Vec<&str> =
            loader(&audit, KEPT).checks.iter().filter(|c| !c.pass).map(|c| c.id).collect();
        assert_eq!(failed, vec!["L6", "L7"]);
    }

    #[test]
    fn the_controller_fails_as_root_or_with_a_capability() {
        let clean = ThreadPrivileges { tid: 7, no_new_privs: true, seccomp_mode: 2, ..Default::default() };
        let audit = ProcessAudit { uids: vec![65532; 4], threads: vec![clean.clone()], ..Default::default() };
        assert!(controller(&audit).all_pass());
        let root = ProcessAudit { uids: vec![0; 4], ..audit.clone() };
        assert!(!controller(&root).checks[0].pass);
        let mut capable = audit;
        capable.threads[0].caps.ambient = 1 << 13;
        assert!(!controller(&capable).checks[1].pass);
    }
}
