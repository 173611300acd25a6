//! Filling a running loader's conntrack map to the brim, for load tests and benchmarks:
//! 65,536 NAT'd connections need minutes of real traffic, so the slots are written
//! directly with `bpf(BPF_MAP_UPDATE_ELEM)` — as the eBPF program would write them, with
//! valid tuples in a namespace of their own (inode `FILL_NETNS`, which no real namespace
//! has), so listings, lookups and the fill level all see them.
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::HarnessError;

/// The namespace inode the filled entries claim.
pub const FILL_NETNS: u32 = 0xF111_0000;
const KEY_SIZE: usize = 44;
const VALUE_SIZE: usize = 56;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// The id of the loader's conntrack map: the LRU hash among the process's BPF map fds
/// whose key is `struct ct_tuple` (44 bytes).
pub fn conntrack_map_id(pid: u32) -> Result<u32, HarnessError> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries =
        std::fs::read_dir(&dir).map_err(|source| HarnessError::Bpf { what: dir.clone(), source })?;
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let is_ct = field("map_type:") == Some(&BPF_MAP_TYPE_LRU_HASH.to_string())
            && field("key_size:") == Some(&KEY_SIZE.to_string());
        if let (true, Some(id)) = (is_ct, field("map_id:").and_then(|v| v.parse().ok())) {
            return Ok(id);
        }
    }
    let what = format!("no conntrack map among the BPF maps of pid {pid}");
    Err(HarnessError::Bpf { what, source: std::io::ErrorKind::NotFound.into() })
}

/// Writes `connections` NAT'd TCP connections (two slots each) into map `map_id`.
pub fn fill(map_id: u32, connections: u32) -> Result<(), HarnessError> {
    let map = map_fd(map_id)?;
    let now = monotonic_ns();
    for i in 0..connections {
        let client = [10, 200, (i >> 8) as u8, i as u8];
        let port = 10_000 + (i >> 16) as u16;
        // A client of the service 10.96.0.10:80, DNAT'd to the backend 10.244.0.7:8080.
        let original = key(client, port, [10, 96, 0, 10], 80);
        let reply = key([10, 244, 0, 7], 8080, client, port);
        for (k, other, dir) in [(&original, &reply, 0u8), (&reply, &original, 1u8)] {
            let mut value = [0u8; VALUE_SIZE];
            value[..KEY_SIZE].copy_from_slice(other);
            value[KEY_SIZE] = dir;
            value[48..56].copy_from_slice(&now.to_ne_bytes());
            update(&map, k, &value)?;
        }
    }
    Ok(())
}

/// The filled connections (indices below `connections`) that lost a slot, either
/// direction, since [`fill`] wrote them: an LRU map evicts its least recently used slots
/// when other traffic fills it, and filled slots, which no packet refreshes, are those.
pub fn lost(map_id: u32, connections: u32) -> Result<BTreeSet<u32>, HarnessError> {
    let map = map_fd(map_id)?;
    let mut lost = BTreeSet::new();
    for i in 0..connections {
        let client = [10, 200, (i >> 8) as u8, i as u8];
        let port = 10_000 + (i >> 16) as u16;
        let original = key(client, port, [10, 96, 0, 10], 80);
        let reply = key([10, 244, 0, 7], 8080, client, port);
        if !(present(&map, &original)? && present(&map, &reply)?) {
            lost.insert(i);
        }
    }
    Ok(lost)
}

/// `struct ct_tuple` of the IPv4 TCP direction `src:sport → dst:dport`.
fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> [u8; KEY_SIZE] {
    let mut k = [0u8; KEY_SIZE];
    k[..4].copy_from_slice(&src);
    k[16..20].copy_from_slice(&dst);
    k[32..34].copy_from_slice(&sport.to_ne_bytes());
    k[34..36].copy_from_slice(&dport.to_ne_bytes());
    k[36..40].copy_from_slice(&FILL_NETNS.to_ne_bytes());
    k[40] = 6;
    k[41] = 4;
    k
}

fn map_fd(map_id: u32) -> Result<OwnedFd, HarnessError> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map_id);
    // SAFETY: BPF_MAP_GET_FD_BY_ID reads `map_id` from the attr buffer, which is valid for
    // its size; the returned fd is ours to own.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_FD_BY_ID, attr.as_mut_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        return Err(HarnessError::Bpf { what: format!("BPF_MAP_GET_FD_BY_ID {map_id}"), source });
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn update(map: &OwnedFd, key: &[u8; KEY_SIZE], value: &[u8; VALUE_SIZE]) -> Result<(), HarnessError> {
    // union bpf_attr for map element commands: map_fd (u32, padded), key, value, flags.
    let attr: [u64; 4] = [map.as_raw_fd() as u64, key.as_ptr() as u64, value.as_ptr() as u64, 0];
    // SAFETY: the attr points at `key` and `value`, which outlive the call and have the
    // map's key and value sizes; the kernel only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, attr.as_ptr(), size_of_val(&attr)) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        return Err(HarnessError::Bpf { what: "BPF_MAP_UPDATE_ELEM on the conntrack map".into(), source });
    }
    Ok(())
}

fn present(map: &OwnedFd, key: &[u8; KEY_SIZE]) -> Result<bool, HarnessError> {
    let mut value = [0u8; VALUE_SIZE];
    let attr: [u64; 4] = [map.as_raw_fd() as u64, key.as_ptr() as u64, value.as_mut_ptr() as u64, 0];
    // SAFETY: the attr points at `key` (read) and `value` (written, the map's value size),
    // both alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, attr.as_ptr(), size_of_val(&attr)) };
    if rc == 0 {
        return Ok(true);
    }
    let source = std::io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ENOENT) {
        return Ok(false);
    }
    Err(HarnessError::Bpf { what: "BPF_MAP_LOOKUP_ELEM on the conntrack map".into(), source })
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
