//! Calls that read a whole map. A walk takes one syscall per key (~100 ms for a full
//! conntrack map of 131k slots), so walks run on threads of their own, never above
//! normal CPU priority ([`Walkers`]), a bounded number at once, listings stream from
//! there with back-pressure, and the async workers keep answering health checks and
//! lookups meanwhile: a walk only ever has the CPU time they leave. The fill level `GetStatus` shows is the
//! kernel's own element count (`crate::map_count`, Linux 6.6+), exact and O(1); where the
//! kernel keeps none (Debian 12's 6.1), it is walked at most once every `FILL_MAX_AGE`
//! and shared, and `GetStatus` says so.
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock, Weak, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::asset::AssetLoader;
use crate::conntrack::{Conntracker, TableFill};
use crate::map_count::{MapCount, MapCounter};

/// How fill levels were counted, as `GetStatus` shows it.
const COUNTED: &str = "the kernel's element counter (bpf_map_sum_elem_count), exact at the call";
const WALKED: &str = "walking the map, shared for up to 10 s";

/// How old a shared fill level may be: a fill level is for trends and alerts, not
/// for decisions that need the count of this very second.
const FILL_MAX_AGE: Duration = Duration::from_secs(10);

/// Messages a listing may have ready ahead of its client (a message of `ListConntrack`
/// is a batch of up to 512 entries: this is up to 4,096 entries).
const STREAM_AHEAD: usize = 8;

/// The last fill level counted: of which conntracker instance, and when.
type SharedFill = Arc<Mutex<Option<Counted>>>;

struct Counted {
    /// The instance counted: a reload that replaced the conntracker has a new map, with
    /// another size, and its count is never served from the old one's. (A weak reference
    /// keeps the old allocation's address from being reused by a later instance.)
    instance: Weak<dyn Conntracker>,
    at: Instant,
    tables: Vec<TableFill>,
}

/// Work for a walker thread.
type Job = Box<dyn FnOnce() + Send>;

/// The threads walks run on, one per turn, started once at start-up (before the seccomp
/// filter, which has no scheduler calls). Each leaves a real-time policy it inherited
/// (`SCHED_OTHER`, at the loader's nice value) once, as it starts: a loader started
/// with a real-time policy keeps it for its async workers, which then always run before a
/// walk; at the same priority as the workers (the usual case), the kernel's fair
/// scheduler shares the cores and a waking worker (a health check, a lookup) gets one at
/// once, while the walk's entries reach the workers in batches (`ListConntrack`'s 512 per
/// message), so a listing costs them little. Not lower: at nice 19 or `SCHED_IDLE` a walk
/// on a saturated node got almost no CPU, 20 queued listings waited past the connection
/// idle timeout and failed (measured, docs/benchmarks.md), and a worker waiting for
/// something a starved walker held (an allocator arena, a channel's lock) waited up to
/// ~1 s. Going back up, which would need `CAP_SYS_NICE`, is never asked for. The threads
/// end when the last handle is dropped.
struct Walkers {
    jobs: std_mpsc::Sender<Job>,
}

impl Walkers {
    fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let (lowered, each_lowered) = std_mpsc::channel::<()>();
        for n in 0..threads {
            let (queue, lowered) = (Arc::clone(&queue), lowered.clone());
            std::thread::Builder::new().name(format!("map-walk-{n}")).spawn(move || {
                leave_real_time();
                drop(lowered);
                loop {
                    // A poisoned lock only means another walker panicked between two
                    // jobs; the queue itself is intact.
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = next else { return };
                    // A panicking walk ends its call (its answer channel drops), not the thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        }
        // Returns once every thread has set its policy (each drops its sender): the
        // caller installs the seccomp filter next, which would refuse the call.
        drop(lowered);
        let _ = each_lowered.recv();
        Ok(Self { jobs })
    }

    fn submit(&self, job: Job) -> Result<(), Status> {
        self.jobs.send(job).map_err(|_| Status::unavailable("the map-walk threads have ended"))
    }
}

/// Puts the calling thread at `SCHED_OTHER`, leaving a real-time policy it inherited
/// (lowering needs no privilege; at `SCHED_OTHER` already, nothing changes). Where that is
/// refused, the walk still runs, at the priority it had, and the log says so.
fn leave_real_time() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) on the calling thread (0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
        let err = std::io::Error::last_os_error();
        tracing::warn!(%err, "a map-walk thread could not leave its scheduling policy for SCHED_OTHER; walks run at the API's priority");
    }
}

#[derive(Clone)]
pub struct MapWalks {
    turns: Arc<Semaphore>,
    walkers: Arc<Walkers>,
    fill: SharedFill,
    /// The kernel's element counter, loaded at the first count (or why it cannot be).
    counter: Arc<OnceLock<Result<MapCounter, String>>>,
}

impl MapWalks {
    /// `at_once` walks at a time, each on a walker thread of its own (started here).
    pub fn new(at_once: usize) -> std::io::Result<Self> {
        let at_once = at_once.max(1);
        Ok(Self {
            turns: Arc::new(Semaphore::new(at_once)),
            walkers: Arc::new(Walkers::start(at_once)?),
            fill: Arc::default(),
            counter: Arc::default(),
        })
    }

    /// Runs `walk` on a walker thread once a turn is free.
    pub async fn run<T: Send + 'static>(
        &self,
        walk: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _turn =
            self.turns.acquire().await.map_err(|_| Status::unavailable("the loader is shutting down"))?;
        let (answer, answered) = oneshot::channel();
        self.walkers.submit(Box::new(move || {
            let _ = answer.send(walk());
        }))?;
        answered.await.map_err(|_| Status::internal("a map walk failed: its thread ended without an answer"))
    }

    /// Runs `walk` on a walker thread once a turn is free and streams what it returns
    /// (its iterator runs there too, one message at a time: a listing converts each batch
    /// of entries as it is sent), at most `STREAM_AHEAD` messages ahead of the client: a
    /// listing never holds a whole map's messages on the async workers (whose time the health check and lookups
    /// need), and a slow reader stalls only its own walk. The turn is held until the last
    /// message is taken or the client leaves. A failed walk is the call's status.
    pub async fn stream<I>(
        &self,
        walk: impl FnOnce() -> Result<I, Status> + Send + 'static,
    ) -> Result<ReceiverStream<Result<I::Item, Status>>, Status>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
    {
        let turn = Arc::clone(&self.turns)
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the loader is shutting down"))?;
        let (outcome, walked) = oneshot::channel();
        let (items, received) = mpsc::channel(STREAM_AHEAD);
        self.walkers.submit(Box::new(move || {
            let _turn = turn;
            let found = match walk() {
                Ok(found) => found,
                Err(status) => {
                    let _ = outcome.send(Err(status));
                    return;
                }
            };
            if outcome.send(Ok(())).is_err() {
                return; // the call was cancelled meanwhile
            }
            for item in found {
                if items.blocking_send(Ok(item)).is_err() {
                    return; // the client went away
                }
            }
        }))?;
        match walked.await {
            Ok(Ok(())) => Ok(ReceiverStream::new(received)),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::internal("a map walk failed: its thread ended without an answer")),
        }
    }

    /// The conntracker's fill levels: its eBPF maps' counted by the kernel (exact, at
    /// once), a userspace table's size, or — where the kernel keeps no counter — a walk
    /// shared for `FILL_MAX_AGE` (while the same instance runs), saying why.
    /// The counter loads at the first count, through `assets` (the loader's own).
    pub async fn fill_levels(
        &self,
        tracker: Option<Arc<dyn Conntracker>>,
        assets: Arc<AssetLoader>,
    ) -> Result<Fill, Status> {
        let Some(tracker) = tracker else { return Ok(Fill::default()) };
        let ids = tracker.bpf_map_ids();
        if ids.is_empty() {
            // A userspace table knows its size.
            let tables = self.off_worker(move || tracker.tables()).await?;
            return Ok(Fill { tables, counted_by: "the table's own size".into() });
        }
        let counter = Arc::clone(&self.counter);
        let counted = self
            .off_worker(move || {
                let counter = counter.get_or_init(|| MapCounter::load(&assets).map_err(|e| e.to_string()));
                counter.as_ref().map_err(Clone::clone)?.counts().map_err(|e| e.to_string())
            })
            .await?;
        let why_not = match counted {
            Ok(mut counts) => match ids.iter().map(|id| counts.remove(id)).collect::<Option<Vec<_>>>() {
                Some(found) => return Ok(Fill::counted(found)),
                // Replaced by a reload between the two reads: the walk reads the new one.
                None => "the map was replaced while it was counted".to_string(),
            },
            Err(reason) => reason,
        };
        let tables = self.shared_walk(tracker).await?;
        Ok(Fill { tables, counted_by: format!("{WALKED}: {why_not}") })
    }

    /// Short work off the async workers, without waiting for a walk's turn.
    async fn off_worker<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Status::internal(format!("counting a map failed: {e}")))
    }

    /// The fill levels by walking, counted by one caller and shared for `FILL_MAX_AGE`.
    async fn shared_walk(&self, tracker: Arc<dyn Conntracker>) -> Result<Vec<TableFill>, Status> {
        // Callers arriving during a count wait for it and take its result.
        let mut fill = self.fill.lock().await;
        if let Some(counted) = fill.as_ref()
            && std::ptr::addr_eq(counted.instance.as_ptr(), Arc::as_ptr(&tracker))
            && counted.at.elapsed() < FILL_MAX_AGE
        {
            return Ok(counted.tables.clone());
        }
        let instance = Arc::downgrade(&tracker);
        let tables = self.run(move || tracker.tables()).await?;
        *fill = Some(Counted { instance, at: Instant::now(), tables: tables.clone() });
        Ok(tables)
    }
}

/// Fill levels, and how they were counted (shown beside each in `GetStatus`).
#[derive(Debug, Default)]
pub struct Fill {
    pub tables: Vec<TableFill>,
    pub counted_by: String,
}

impl Fill {
    fn counted(maps: Vec<MapCount>) -> Self {
        let tables = maps
            .into_iter()
            .map(|m| TableFill { name: m.name, entries: m.entries, max_entries: m.max_entries })
            .collect();
        Self { tables, counted_by: COUNTED.into() }
    }
}
