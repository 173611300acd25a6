//! Calls that walk a whole map. A walk takes one syscall per key (~100 ms for a full
//! conntrack map of 131k slots), so walks run on the blocking pool, a bounded number at
//! once, and the async workers keep answering health checks and lookups meanwhile. The
//! fill level `GetStatus` shows is counted at most once every `FILL_MAX_AGE` and shared:
//! any number of callers cost one walk per period (≤ 1 % of a core for a full map), and
//! `GetStatus` itself reads a stored number. (An exact O(1) count needs the kernel's
//! per-map element counter, read by an eBPF iterator: not done yet.)
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore};
use tonic::Status;

use crate::conntrack::{Conntracker, TableFill};

/// How old a shared fill level may be: a fill level is for trends and alerts, not
/// for decisions that need the count of this very second.
const FILL_MAX_AGE: Duration = Duration::from_secs(10);

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

#[derive(Clone)]
pub struct MapWalks {
    turns: Arc<Semaphore>,
    fill: SharedFill,
}

impl MapWalks {
    pub fn new(at_once: usize) -> Self {
        Self { turns: Arc::new(Semaphore::new(at_once.max(1))), fill: Arc::default() }
    }

    /// Runs `walk` on the blocking pool once a turn is free.
    pub async fn run<T: Send + 'static>(
        &self,
        walk: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _turn =
            self.turns.acquire().await.map_err(|_| Status::unavailable("the loader is shutting down"))?;
        tokio::task::spawn_blocking(walk)
            .await
            .map_err(|e| Status::internal(format!("a map walk failed: {e}")))
    }

    /// The conntracker's fill levels, counted by one caller and shared for `FILL_MAX_AGE`
    /// (while the same instance runs).
    pub async fn fill_levels(&self, tracker: Option<Arc<dyn Conntracker>>) -> Result<Vec<TableFill>, Status> {
        let Some(tracker) = tracker else { return Ok(Vec::new()) };
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

impl Default for MapWalks {
    fn default() -> Self {
        Self::new(super::limits::Limits::default().max_concurrent_map_walks)
    }
}
