//! Map fill levels in O(1): the kernel's per-map element counter (Linux 6.6+, kept by
//! every hash map, LRU included), summed by `bpf_map_sum_elem_count` in a tiny
//! `iter/bpf_map` program the loader owns (`bpf/map_count.bpf.c`). One run visits each
//! map of the system once and reads no map's contents, so a full conntrack map costs what
//! an empty one does, where counting its keys costs one syscall per key.
//!
//! aya 0.14 cannot relocate kfunc calls: the object carries the call as a raw instruction
//! with a marker immediate, replaced here by the kfunc's BTF id before the object is
//! parsed. A kernel without the kfunc has no such id, and the caller walks instead.
use std::collections::HashMap;
use std::sync::Mutex;

use aya::Ebpf;
use aya::programs::Iter;
use aya_obj::btf::BtfKind;

use crate::asset::{AssetError, AssetLoader};

pub const ASSET: &str = "map_count";
const PROGRAM: &str = "map_count";
const KFUNC: &str = "bpf_map_sum_elem_count";
/// `call` with src_reg BPF_PSEUDO_KFUNC_CALL and the marker immediate (map_count_kernel.h).
const MARKED_CALL: [u8; 8] = [0x85, 0x20, 0x00, 0x00, 0x31, 0x43, 0x4d, 0x7f];
/// `struct map_count_record`: id, max_entries, entries, name[16].
const RECORD_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MapCountError {
    #[error("the kernel has no {KFUNC} kfunc (Linux 6.6+)")]
    NoKfunc,
    #[error("kernel BTF (/sys/kernel/btf/vmlinux) is needed to count map elements: {0}")]
    Btf(String),
    #[error("the {ASSET} eBPF object: {0}; rebuild the eBPF objects with this loader")]
    Object(String),
    #[error("loading the {ASSET} iterator: {0}")]
    Load(String),
    #[error("running the {ASSET} iterator: {0}")]
    Run(String),
}

/// One map's fill level as the kernel counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCount {
    pub name: String,
    pub entries: u64,
    pub max_entries: u64,
}

/// The loaded iterator; each [`MapCounter::counts`] runs it once.
pub struct MapCounter {
    ebpf: Mutex<Ebpf>,
}

impl MapCounter {
    /// Loads the iterator through `assets`, like every other object: its one aya loader
    /// (no BTF parse of its own) and one recorded outcome. A kernel without the kfunc
    /// records none: the caller walks instead, which is not a failure.
    pub fn load(assets: &AssetLoader) -> Result<Self, MapCountError> {
        let btf = &assets.btf().map_err(|e| MapCountError::Btf(e.to_string()))?.btf;
        let kfunc = btf.id_by_type_name_kind(KFUNC, BtfKind::Func).map_err(|_| MapCountError::NoKfunc)?;
        let ebpf = assets.load_core_asset(ASSET, |bytes, loader| {
            let object = with_kfunc_id(bytes, kfunc).map_err(object_error)?;
            let mut ebpf = loader.load(object.bytes()).map_err(|e| AssetError::from_ebpf(ASSET, e))?;
            let program: &mut Iter = crate::asset::program_mut(&mut ebpf, ASSET, PROGRAM)?;
            program.load("bpf_map", btf).map_err(|e| AssetError::from_program_load(ASSET, PROGRAM, e))?;
            Ok(ebpf)
        });
        let ebpf = ebpf.map_err(|e| MapCountError::Load(e.to_string()))?;
        Ok(Self { ebpf: Mutex::new(ebpf) })
    }

    /// The fill level of every map that keeps the counter, by map id.
    pub fn counts(&self) -> Result<HashMap<u32, MapCount>, MapCountError> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let output = crate::lockstats::ksym::run_iterator(iterator(&mut ebpf)?, ASSET, PROGRAM)
            .map_err(|e| MapCountError::Run(e.to_string()))?;
        decode(&output).ok_or_else(|| {
            MapCountError::Run(format!("{} bytes is not a whole number of records", output.len()))
        })
    }
}

fn iterator(ebpf: &mut Ebpf) -> Result<&mut Iter, MapCountError> {
    ebpf.program_mut(PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| MapCountError::Object(format!("no iterator program {PROGRAM}")))
}

/// The object is not the one this loader was built with.
fn object_error(reason: String) -> AssetError {
    AssetError::Read { asset: ASSET.into(), path: String::new(), reason }
}

/// An object's bytes in 8-byte aligned storage, as aya's ELF parser wants them.
struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment
        // or validity requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `object` whose one marked kfunc call names `kfunc` (a vmlinux BTF id).
fn with_kfunc_id(object: &[u8], kfunc: u32) -> Result<AlignedObject, String> {
    let mut copy = AlignedObject { words: vec![0; object.len().div_ceil(8)], len: object.len() };
    copy.bytes_mut().copy_from_slice(object);
    let bytes = copy.bytes_mut();
    let marked: Vec<usize> =
        bytes.windows(8).enumerate().filter(|(_, w)| *w == MARKED_CALL).map(|(i, _)| i).collect();
    let [at] = marked[..] else {
        return Err(format!("{} marked kfunc calls, expected exactly 1", marked.len()));
    };
    bytes[at + 4..at + 8].copy_from_slice(&kfunc.to_le_bytes());
    Ok(copy)
}

/// `struct map_count_record` × n; None if the length is not a multiple.
fn decode(bytes: &[u8]) -> Option<HashMap<u32, MapCount>> {
    if !bytes.len().is_multiple_of(RECORD_SIZE) {
        return None;
    }
    let records = bytes.chunks_exact(RECORD_SIZE).map(|rec| {
        let u32_at = |i: usize| u32::from_ne_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        let mut entries = [0u8; 8];
        entries.copy_from_slice(&rec[8..16]);
        let name = &rec[16..];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let count = MapCount {
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            // The per-CPU sum can dip below 0 for a moment while an element moves CPUs.
            entries: i64::from_ne_bytes(entries).max(0) as u64,
            max_entries: u64::from(u32_at(4)),
        };
        (u32_at(0), count)
    });
    Some(records.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_has_exactly_one_marked_call_and_it_is_replaced() {
        let object = crate::objects::embedded(ASSET).expect("embedded");
        let patched = with_kfunc_id(object, 0x1234).expect("one marked call");
        assert!(!patched.bytes().windows(8).any(|w| w == MARKED_CALL));
        assert!(patched.bytes().windows(8).any(|w| w == [0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]));
    }

    #[test]
    fn records_decode_by_map_id_and_a_torn_buffer_is_refused() {
        let mut rec = Vec::new();
        rec.extend_from_slice(&7u32.to_ne_bytes());
        rec.extend_from_slice(&131_072u32.to_ne_bytes());
        rec.extend_from_slice(&5i64.to_ne_bytes());
        rec.extend_from_slice(b"conntrack\0\0\0\0\0\0\0");
        let counts = decode(&rec).expect("one record");
        assert_eq!(counts[&7], MapCount { name: "conntrack".into(), entries: 5, max_entries: 131_072 });
        assert!(decode(&rec[..20]).is_none());
    }
}
