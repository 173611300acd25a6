//! Shared by tests/lockstats.rs and examples/bench_lockstats.rs: real BPF maps made with
//! raw bpf(2) calls (aya 0.14 has no public "create a bare map" API), and the hammer
//! workload that makes their bucket locks contend.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;
/// LRU maps: one LRU list per CPU instead of a global one with per-CPU local lists.
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// Hash with seed 0 (root only): lets the test compute which bucket a key lands in.
pub const BPF_F_ZERO_SEED: u32 = 1 << 6;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Updates per BPF_MAP_UPDATE_BATCH call in the hammer.
pub const BATCH: usize = 64;

/// A map created by this process; closed (and freed by the kernel) on drop.
pub struct RawMap {
    pub fd: OwnedFd,
    pub id: u32,
    pub name: String,
    pub value_size: u32,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-initialised, 128-byte bpf_attr; the kernel reads/writes within it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

impl RawMap {
    /// A map with u32 keys and u64 values.
    pub fn create(map_type: u32, max_entries: u32, flags: u32, name: &str) -> std::io::Result<Self> {
        Self::create_sized(map_type, max_entries, flags, name, 8)
    }

    /// A map with u32 keys and `value_size`-byte values. Large values make a hash map
    /// update hold its bucket lock longer (the value is copied under it), which makes
    /// contention likely enough to observe on a small, busy machine.
    pub fn create_sized(
        map_type: u32,
        max_entries: u32,
        flags: u32,
        name: &str,
        value_size: u32,
    ) -> std::io::Result<Self> {
        Self::create_raw(map_type, 4, value_size, max_entries, flags, name)
    }

    /// Any map type: a ring buffer wants key and value size 0 and a power-of-2 page
    /// multiple as max_entries.
    pub fn create_raw(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
        name: &str,
    ) -> std::io::Result<Self> {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, map_type);
        put_u32(&mut attr, 4, key_size);
        put_u32(&mut attr, 8, value_size);
        put_u32(&mut attr, 12, max_entries);
        put_u32(&mut attr, 16, flags);
        let bytes = name.as_bytes();
        attr[28..28 + bytes.len().min(15)].copy_from_slice(&bytes[..bytes.len().min(15)]);
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let id = map_id(&fd)?;
        Ok(Self { fd, id, name: name.to_string(), value_size })
    }

    /// Sets `key` to `value` (at least `value_size` bytes).
    pub fn update(&self, key: u32, value: &[u8]) -> std::io::Result<()> {
        assert!(value.len() >= self.value_size as usize, "value shorter than the map's value_size");
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, self.fd.as_raw_fd() as u32);
        put_u64(&mut attr, 8, &key as *const u32 as u64);
        put_u64(&mut attr, 16, value.as_ptr() as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

impl RawMap {
    /// Sets `key` to `value` `BATCH` times in one BPF_MAP_UPDATE_BATCH call. In the
    /// kernel the updates run back to back, re-taking the same bucket lock with no
    /// syscall in between: the lock tracepoints report only *queued* waiters (a CPU
    /// finding the lock held and another CPU already spinning on it), and on 2 CPUs that
    /// happens mostly when a holder re-takes the lock at once.
    pub fn update_batch(&self, key: u32, value: &[u8]) -> std::io::Result<()> {
        let vs = self.value_size as usize;
        let keys = vec![key; BATCH];
        let mut values = Vec::with_capacity(BATCH * vs);
        (0..BATCH).for_each(|_| values.extend_from_slice(&value[..vs]));
        let mut attr = [0u8; 128];
        put_u64(&mut attr, 16, keys.as_ptr() as u64);
        put_u64(&mut attr, 24, values.as_ptr() as u64);
        put_u32(&mut attr, 32, BATCH as u32);
        put_u32(&mut attr, 36, self.fd.as_raw_fd() as u32);
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map(|_| ())
    }
}

/// The id from bpf_map_info (second u32 of the struct).
fn map_id(fd: &OwnedFd) -> std::io::Result<u32> {
    let mut info = [0u8; 96];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes([info[4], info[5], info[6], info[7]]))
}

/// Threads updating key 0 of every map in `maps` as fast as they can until dropped.
pub struct Hammer {
    stop: Arc<AtomicBool>,
    pub updates: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Hammer {
    pub fn start(maps: Vec<Arc<RawMap>>, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, updates, maps) = (stop.clone(), updates.clone(), maps.clone());
                let largest = maps.iter().map(|m| m.value_size as usize).max().unwrap_or(8);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let mut value = vec![t as u8; largest];
                    while !stop.load(Ordering::Relaxed) {
                        value[0] = n as u8;
                        for m in &maps {
                            let _ = m.update_batch(0, &value);
                        }
                        n += 1;
                        if n.is_multiple_of(64) {
                            updates.fetch_add((64 * BATCH * maps.len()) as u64, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self { stop, updates, threads }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
        self.updates.load(Ordering::Relaxed)
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
    }
}

/// A unique map name per test process and call (maps are system-wide).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}_{n}", std::process::id() % 10_000)
}

/// The kernel's `jhash2()` (lookup3) of one 32-bit word, as `htab_map_hash()` computes it
/// for a 4-byte key.
pub fn jhash_word(key: u32, seed: u32) -> u32 {
    let init = 0xdead_beef_u32.wrapping_add(4).wrapping_add(seed);
    let (mut a, mut b, mut c) = (init.wrapping_add(key), init, init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// `count` keys that all hash to bucket 0 of a zero-seed map with `n_buckets` buckets.
pub fn colliding_keys(n_buckets: u32, count: usize) -> Vec<u32> {
    (0u32..).filter(|k| jhash_word(*k, 0) & (n_buckets - 1) == 0).take(count).collect()
}

/// Threads updating, in turn, `keys` that all share one bucket of a full map. For a
/// full hash map and an absent key, each call walks the whole chain under the bucket lock
/// and fails (E2BIG); for an LRU map cycling through more keys than it holds, each call
/// walks the chain, inserts and evicts. Either way the bucket lock is held most of the
/// time, so waiters queue on it — the only waiters the lock tracepoints report.
pub struct ChainHammer {
    stop: Arc<AtomicBool>,
    pub calls: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl ChainHammer {
    pub fn start(map: Arc<RawMap>, keys: Vec<u32>, threads: usize) -> Self {
        let keys = Arc::new(keys);
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, calls, map, keys) = (stop.clone(), calls.clone(), map.clone(), keys.clone());
                std::thread::spawn(move || {
                    let value = vec![0u8; map.value_size as usize];
                    let mut next = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            let _ = map.update(keys[next % keys.len()], &value);
                            next = next.wrapping_add(1);
                        }
                        calls.fetch_add(256, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self { stop, calls, threads }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for ChainHammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
    }
}
