//! Other network namespaces' conntrack tables: dumped at start and checked by every sweep.
//!
//! A ctnetlink socket sees the table of the namespace it was opened in, and keeps working
//! there after the thread that opened it leaves. Entering a namespace (`setns`) needs
//! CAP_SYS_ADMIN, which the loader holds (when granted) only while it starts: so a thread
//! of its own — never a runtime worker, whose namespace must stay the loader's — enters
//! every namespace the loader can name (`/run/netns` bind mounts, `/proc/<pid>/ns/net`),
//! opens a dump socket there, goes back and exits. The seeding and the sweeps dump
//! through those sockets. A namespace that appears later is entered the same way when the
//! loader still may (CAP_SYS_ADMIN kept and no seccomp filter); otherwise it is listed as
//! not covered, with why ([`Reach::describe`]).
//!
//! A socket pins its namespace (the kernel keeps a namespace while a socket in it is
//! open), so a socket is closed as soon as the namespace is gone for everyone else: no
//! bind mount and no process the loader can see in it, and none of the processes found in
//! it when it was entered still running.
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use nix::sched::CloneFlags;
use tokio::sync::OwnedMutexGuard;

use super::MODULE;
use super::ctnetlink::{CtNetlink, Parked, current_netns};

/// Where bind-mounted namespaces live (`ip netns`, CNI plugins).
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];
/// Processes remembered per covered namespace, to tell that it still exists when the
/// loader can no longer read their namespace links (after the privilege drop).
const PIDS_KEPT: usize = 8;
/// Namespaces listed by inode in the status note before the rest are counted.
const LISTED: usize = 64;

/// How often namespaces that went are let go (their sockets pin them) and new ones
/// entered, between sweeps.
pub const REFRESH_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Prefix of the status note [`Reach::describe`] writes (replaced when it changes).
pub const NOTE_PREFIX: &str = "network namespaces dumped";

/// The dump sockets of the other namespaces the loader covers, and those it cannot.
pub struct Reach {
    own: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    covered: BTreeMap<u32, Covered>,
    /// Namespaces seen and not entered, with why.
    uncovered: BTreeMap<u32, String>,
}

struct Covered {
    socket: Arc<tokio::sync::Mutex<Option<Parked>>>,
    /// Processes that were in it when it was entered: (pid, start time in ticks).
    pids: Vec<(i32, u64)>,
}

/// What a scan found of one namespace.
#[derive(Clone, Debug, Default)]
pub(crate) struct Found {
    pub(crate) mounts: Vec<PathBuf>,
    pub(crate) pids: Vec<i32>,
}

/// One namespace's socket, taken into the caller's runtime for one use; parked again
/// (with its unfinished requests noted) when dropped.
pub struct Borrowed {
    netns: u32,
    guard: OwnedMutexGuard<Option<Parked>>,
    socket: Option<CtNetlink>,
}

impl Borrowed {
    pub fn netns(&self) -> u32 {
        self.netns
    }

    pub fn socket(&mut self) -> Option<&mut CtNetlink> {
        self.socket.as_mut()
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            *self.guard = Some(socket.park());
        }
    }
}

/// What a [`Reach::refresh`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refreshed {
    /// Coverage changed: the status note must be rewritten.
    pub changed: bool,
    /// Namespaces entered now, whose tables no dump has read yet.
    pub entered: usize,
}

/// Every conntracker of one namespace shares one [`Reach`] (a reload's successor takes
/// over its predecessor's sockets, which it could no longer open after the drop).
static SHARED: Mutex<BTreeMap<u32, Weak<Reach>>> = Mutex::new(BTreeMap::new());

impl Reach {
    /// The reach of the calling thread's namespace: the one a running conntracker
    /// already holds, else a new one, entering every namespace the loader can name now.
    pub async fn of_current_namespace() -> Arc<Reach> {
        let own = current_netns().unwrap_or(0);
        let existing = lock(&SHARED).get(&own).and_then(Weak::upgrade);
        if let Some(reach) = existing {
            return reach;
        }
        let reach = Arc::new(Reach { own, state: Mutex::new(State::default()) });
        reach.refresh().await;
        lock(&SHARED).insert(own, Arc::downgrade(&reach));
        reach
    }

    /// Closes the sockets of namespaces that are gone, and enters namespaces that
    /// appeared (when the loader still may).
    pub async fn refresh(&self) -> Refreshed {
        let visible = visible_namespaces();
        let forgot = self.forget_gone(&visible);
        let new: Vec<(u32, Found)> = {
            let state = lock(&self.state);
            visible
                .into_iter()
                .filter(|(inode, _)| {
                    *inode != self.own
                        && !state.covered.contains_key(inode)
                        && !state.uncovered.contains_key(inode)
                })
                .collect()
        };
        if new.is_empty() {
            return Refreshed { changed: forgot, entered: 0 };
        }
        let entered = match may_enter() {
            Ok(()) => enter_on_own_thread(new).await,
            Err(why) => new.into_iter().map(|(inode, _)| (inode, Err(why.clone()), Vec::new())).collect(),
        };
        let mut state = lock(&self.state);
        let mut count = 0;
        for (inode, result, pids) in entered {
            match result {
                Ok(parked) => {
                    count += 1;
                    let socket = Arc::new(tokio::sync::Mutex::new(Some(parked)));
                    state.covered.insert(inode, Covered { socket, pids });
                }
                Err(why) => {
                    state.uncovered.insert(inode, why);
                }
            }
        }
        Refreshed { changed: true, entered: count }
    }

    /// Drops what it knows of namespaces that are gone; true when it dropped any.
    fn forget_gone(&self, visible: &BTreeMap<u32, Found>) -> bool {
        let mut state = lock(&self.state);
        let before = (state.covered.len(), state.uncovered.len());
        state.covered.retain(|inode, covered| {
            let alive =
                visible.contains_key(inode) || covered.pids.iter().any(|(pid, t)| still_running(*pid, *t));
            if !alive {
                tracing::info!(
                    module = MODULE,
                    netns = inode,
                    "network namespace gone: its dump socket is closed"
                );
            }
            alive
        });
        state.uncovered.retain(|inode, _| visible.contains_key(inode));
        before != (state.covered.len(), state.uncovered.len())
    }

    /// The sockets of every covered namespace, each taken for the caller's use, in inode
    /// order (so two users never wait on each other crosswise).
    pub async fn borrow_all(&self) -> Vec<Borrowed> {
        let sockets: Vec<(u32, Arc<tokio::sync::Mutex<Option<Parked>>>)> =
            lock(&self.state).covered.iter().map(|(inode, c)| (*inode, c.socket.clone())).collect();
        let mut borrowed = Vec::with_capacity(sockets.len());
        for (netns, socket) in sockets {
            let mut guard = socket.lock_owned().await;
            let socket = match guard.take().map(CtNetlink::unpark) {
                Some(Ok(socket)) => Some(socket),
                Some(Err(e)) => {
                    tracing::warn!(module = MODULE, netns, error = %e, "cannot use the namespace's dump socket");
                    None
                }
                None => None,
            };
            borrowed.push(Borrowed { netns, guard, socket });
        }
        borrowed
    }

    /// Inodes of the namespaces covered now (besides the own one).
    pub fn covered(&self) -> Vec<u32> {
        lock(&self.state).covered.keys().copied().collect()
    }

    /// Why namespace `inode` is not covered; `None` when it is, or was never seen.
    pub fn why_not_covered(&self, inode: u32) -> Option<String> {
        lock(&self.state).uncovered.get(&inode).cloned()
    }

    /// One status line: which namespaces are dumped and swept, which are not and why.
    pub fn describe(&self) -> String {
        let state = lock(&self.state);
        let covered: Vec<u32> = state.covered.keys().copied().collect();
        let mut reasons: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (inode, why) in &state.uncovered {
            reasons.entry(why.as_str()).or_default().push(*inode);
        }
        let not_covered: Vec<String> =
            reasons.iter().map(|(why, inodes)| format!("{} ({why})", listed(inodes))).collect();
        format!(
            "{NOTE_PREFIX} at start and by every sweep: the loader's own ({}) and {} other(s) {}; not \
             covered: {}; a namespace not covered is known only from the eBPF hook and, with a \
             namespace id, its events (the netlink conntracker sees none of its entries without one)",
            self.own,
            covered.len(),
            listed(&covered),
            if not_covered.is_empty() { "none".to_string() } else { not_covered.join("; ") },
        )
    }
}

/// `[a, b, c]`, at most [`LISTED`] of them and a count of the rest.
fn listed(inodes: &[u32]) -> String {
    let shown: Vec<String> = inodes.iter().take(LISTED).map(u32::to_string).collect();
    let rest = inodes.len().saturating_sub(LISTED);
    if rest == 0 {
        format!("[{}]", shown.join(", "))
    } else {
        format!("[{}, and {rest} more]", shown.join(", "))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether this thread may enter other namespaces now; why not otherwise.
fn may_enter() -> Result<(), String> {
    use caps::{CapSet, Capability};
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false) {
        return Err("entering it (setns) needs CAP_SYS_ADMIN, which the loader does not hold now: \
                    granted at start-up it covers the namespaces that exist then, kept \
                    (privileges.keep, without seccomp) the ones created later"
            .into());
    }
    if seccomp_filtered() {
        return Err("the loader's seccomp filter, installed after start-up, does not allow setns".into());
    }
    Ok(())
}

/// Whether a seccomp filter is installed on this thread (`Seccomp: 2`).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/thread-self/status").is_ok_and(|status| {
        status.lines().any(|l| l.strip_prefix("Seccomp:").is_some_and(|v| v.trim() != "0"))
    })
}

/// One result per namespace: its dump socket or why not, and its processes.
type Entered = Vec<(u32, Result<Parked, String>, Vec<(i32, u64)>)>;

/// Runs [`enter_each`] on a thread of its own (spawned from the caller's thread, so with
/// its capabilities) and awaits it without blocking the runtime.
async fn enter_on_own_thread(namespaces: Vec<(u32, Found)>) -> Entered {
    let inodes: Vec<u32> = namespaces.iter().map(|(inode, _)| *inode).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("netns-enter".into()).spawn(move || {
        let _ = tx.send(enter_each(namespaces));
    });
    let failed = |why: String| inodes.iter().map(|inode| (*inode, Err(why.clone()), Vec::new())).collect();
    let thread = match spawned {
        Ok(thread) => thread,
        Err(e) => return failed(format!("cannot start the thread that enters namespaces: {e}")),
    };
    let entered = rx.await;
    // It has answered and is ending: joined, so no thread holding the start-up
    // privileges outlives start-up (the caller drops them next).
    let _ = thread.join();
    entered.unwrap_or_else(|_| failed("the thread that enters namespaces ended without an answer".into()))
}

/// Enters each namespace in turn and opens a dump socket there; then goes back to the
/// thread's own namespace (the thread exits right after, but leaves as it came).
fn enter_each(namespaces: Vec<(u32, Found)>) -> Entered {
    let home = match File::open("/proc/thread-self/ns/net") {
        Ok(home) => home,
        Err(e) => {
            let why = format!("cannot open the loader's own namespace to come back to: {e}");
            return namespaces.into_iter().map(|(inode, _)| (inode, Err(why.clone()), Vec::new())).collect();
        }
    };
    let mut entered = Vec::with_capacity(namespaces.len());
    for (inode, found) in namespaces {
        let pids =
            found.pids.iter().take(PIDS_KEPT).filter_map(|pid| Some((*pid, start_time(*pid)?))).collect();
        entered.push((inode, open_inside(inode, &found), pids));
    }
    if let Err(errno) = nix::sched::setns(&home, CloneFlags::CLONE_NEWNET) {
        // The thread exits now: nothing else runs in the namespace it is left in.
        tracing::warn!(module = MODULE, %errno, "could not go back to the loader's namespace");
    }
    entered
}

/// A dump socket opened inside namespace `inode`.
fn open_inside(inode: u32, found: &Found) -> Result<Parked, String> {
    let file = open_namespace(inode, found)?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| format!("setns refused: {errno}"))?;
    let parked = Parked::open(0).map_err(|e| e.to_string())?;
    if parked.netns() != inode {
        return Err(format!("the socket landed in namespace {}, not {inode}", parked.netns()));
    }
    Ok(parked)
}

/// An open handle of namespace `inode`: a bind mount, else a process's link (which needs
/// ptrace access to that process).
fn open_namespace(inode: u32, found: &Found) -> Result<File, String> {
    let paths =
        found.mounts.iter().cloned().chain(found.pids.iter().map(|p| format!("/proc/{p}/ns/net").into()));
    let mut last = String::from("no handle found");
    for path in paths {
        match File::open(&path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.ino() as u32 == inode) => return Ok(file),
            Ok(_) => last = format!("{} names another namespace now", path.display()),
            Err(e) => last = format!("cannot open {}: {e}", path.display()),
        }
    }
    Err(last)
}

/// Every network namespace the loader can name now, by inode: bind mounts, then the
/// links of the processes whose namespace it may read.
pub(crate) fn visible_namespaces() -> BTreeMap<u32, Found> {
    let mut found: BTreeMap<u32, Found> = BTreeMap::new();
    // /var/run is usually a link to /run: the same mounts twice, kept once.
    let mut seen = HashSet::new();
    for dir in NETNS_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for path in entries.flatten().map(|e| e.path()) {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if seen.insert((meta.ino(), path.file_name().map(ToOwned::to_owned))) {
                found.entry(meta.ino() as u32).or_default().mounts.push(path);
            }
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for pid in procs.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else { continue };
        if let Some(inode) = link.to_str().and_then(parse_ns_link) {
            found.entry(inode).or_default().pids.push(pid);
        }
    }
    found
}

/// The inode in a namespace link's text, `net:[4026531840]`.
pub(crate) fn parse_ns_link(text: &str) -> Option<u32> {
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Start time of process `pid` (field 22 of `/proc/<pid>/stat`, readable by anyone),
/// which tells a running process from a later one that got its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn still_running(pid: i32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn a_process_is_told_from_a_later_one_with_its_pid() {
        let me = std::process::id() as i32;
        let started = start_time(me).unwrap();
        assert!(still_running(me, started));
        assert!(!still_running(me, started + 1));
    }

    #[test]
    fn long_lists_are_cut_with_a_count() {
        assert_eq!(listed(&[1, 2]), "[1, 2]");
        let many: Vec<u32> = (0..70).collect();
        assert!(listed(&many).ends_with(", 63, and 6 more]"));
    }
}
