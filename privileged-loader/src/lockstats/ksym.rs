//! Kernel symbol addresses: from the `iter/ksym` BPF iterator (`bpf/lockstat_ksym.bpf.c`),
//! falling back to `/proc/kallsyms` when the iterator cannot run (older kernels, or the
//! object failed to load).
//!
//! A symbol that is missing, or whose address reads as 0 (kptr_restrict), is a named
//! error: the per-CPU lock ranges depend on `__per_cpu_offset`.
use std::collections::BTreeMap;
use std::io::Read;

use aya::programs::Iter;

use super::error::LockStatsError;
use crate::asset::{self, AssetError, AssetLoader};

/// The asset (`bpf/lockstat_ksym.bpf.c`) and its program.
pub const KSYM_ASSET: &str = "lockstat_ksym";
const KSYM_PROGRAM: &str = "lockstat_ksym";
/// Mirrors LOCKSTAT_KSYM_WANTED / LOCKSTAT_KSYM_NAME in the object.
const WANTED_SLOTS: usize = 4;
const NAME_LEN: usize = 64;
const RECORD_SIZE: usize = 8 + NAME_LEN;
const KALLSYMS: &str = "/proc/kallsyms";

/// The per-CPU area offsets array: `per_cpu_ptr(p, cpu) == p + __per_cpu_offset[cpu]`.
pub const PER_CPU_OFFSET: &str = "__per_cpu_offset";

/// Addresses found, and where they came from ("iter/ksym" or "/proc/kallsyms").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSymbols {
    pub source: &'static str,
    pub addresses: BTreeMap<String, u64>,
}

impl KernelSymbols {
    /// The address of `symbol`, or the named error saying why there is none.
    pub fn address(&self, symbol: &str) -> Result<u64, LockStatsError> {
        match self.addresses.get(symbol) {
            None => Err(LockStatsError::SymbolMissing { symbol: symbol.into(), tried: self.source.into() }),
            Some(0) => {
                Err(LockStatsError::SymbolHidden { symbol: symbol.into(), source_name: self.source.into() })
            }
            Some(&addr) => Ok(addr),
        }
    }
}

/// Looks `wanted` up with the iterator, then in `/proc/kallsyms` if the iterator could
/// not run. When it ran, its answer stands even if incomplete: it walks the same symbol
/// table /proc/kallsyms prints, and reading that file costs ~0.2 s. The iterator's error
/// is returned beside the result so the status can say why the fallback was used.
pub fn resolve(assets: &AssetLoader, wanted: &[&str]) -> (KernelSymbols, Option<String>) {
    let iter_error = match from_iterator(assets, wanted) {
        Ok(found) => return (found, None),
        Err(e) => e.to_string(),
    };
    tracing::info!(reason = %iter_error, "kernel symbols: falling back to {KALLSYMS}");
    let from_file = std::fs::read_to_string(KALLSYMS)
        .map(|text| KernelSymbols { source: KALLSYMS, addresses: parse_kallsyms(&text, wanted) })
        .unwrap_or_else(|_| KernelSymbols {
            source: "iter/ksym and /proc/kallsyms",
            addresses: BTreeMap::new(),
        });
    (from_file, Some(iter_error))
}

/// Runs the ksym iterator and decodes its records.
fn from_iterator(assets: &AssetLoader, wanted: &[&str]) -> Result<KernelSymbols, LockStatsError> {
    let slots = wanted_slots(wanted);
    let output = assets.load_core_asset(KSYM_ASSET, |bytes, loader| {
        // Checked by load_core_asset before calling us (and recorded if missing).
        let btf = assets.btf().map_err(|e| AssetError::BtfNotFound(e.to_string()))?;
        loader.global("wanted", &slots);
        let mut ebpf = loader.load(bytes).map_err(|e| AssetError::from_ebpf(KSYM_ASSET, e))?;
        let program: &mut Iter = asset::program_mut(&mut ebpf, KSYM_ASSET, KSYM_PROGRAM)?;
        program
            .load("ksym", &btf.btf)
            .map_err(|e| AssetError::from_program_load(KSYM_ASSET, KSYM_PROGRAM, e))?;
        run_iterator(program, KSYM_ASSET, KSYM_PROGRAM)
    })?;
    let addresses = decode_records(&output).ok_or_else(|| LockStatsError::Decode {
        iterator: KSYM_PROGRAM.into(),
        reason: format!("{} bytes is not a whole number of records", output.len()),
    })?;
    Ok(KernelSymbols { source: "iter/ksym", addresses })
}

/// Attaches an iterator program, reads everything it writes, and detaches it.
pub(crate) fn run_iterator(program: &mut Iter, asset: &str, name: &str) -> Result<Vec<u8>, AssetError> {
    let attach_error =
        |reason: String| AssetError::Attach { asset: asset.into(), program: name.into(), reason };
    let link_id = program.attach().map_err(|e| AssetError::from_program_attach(asset, name, e))?;
    let link = program.take_link(link_id).map_err(|e| attach_error(e.to_string()))?;
    let mut file = link.into_file().map_err(|e| attach_error(format!("bpf_iter_create: {e}")))?;
    let mut output = Vec::new();
    file.read_to_end(&mut output).map_err(|e| attach_error(format!("reading the iterator: {e}")))?;
    Ok(output)
}

/// The object lacks a program or map this loader expects: built from other sources.
pub(super) fn missing_in_object(asset: &str, what: &str) -> AssetError {
    AssetError::Read {
        asset: asset.into(),
        path: String::new(),
        reason: format!("{what} is not in the object; rebuild the eBPF objects with this loader"),
    }
}

/// The `wanted` array of the object: NUL-padded names, one per slot. Names that do not
/// fit a slot are left out (no kernel symbol we need is that long).
fn wanted_slots(wanted: &[&str]) -> Vec<u8> {
    let mut slots = vec![0u8; WANTED_SLOTS * NAME_LEN];
    for (slot, name) in wanted.iter().filter(|n| n.len() < NAME_LEN).take(WANTED_SLOTS).enumerate() {
        slots[slot * NAME_LEN..slot * NAME_LEN + name.len()].copy_from_slice(name.as_bytes());
    }
    slots
}

/// `struct lockstat_ksym_record` × n; None if the length is not a multiple.
fn decode_records(bytes: &[u8]) -> Option<BTreeMap<String, u64>> {
    if !bytes.len().is_multiple_of(RECORD_SIZE) {
        return None;
    }
    let records = bytes.chunks_exact(RECORD_SIZE).map(|rec| {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&rec[..8]);
        let name = &rec[8..];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        (String::from_utf8_lossy(&name[..end]).into_owned(), u64::from_ne_bytes(addr))
    });
    Some(records.collect())
}

/// The addresses of `wanted` in `/proc/kallsyms` text (`<hex addr> <type> <name> [module]`).
/// The first occurrence of a name wins, like the kernel's own lookup.
pub fn parse_kallsyms(text: &str, wanted: &[&str]) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if !wanted.contains(&name) || found.contains_key(name) {
            continue;
        }
        if let Ok(addr) = u64::from_str_radix(addr, 16) {
            found.insert(name.to_string(), addr);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff82e1c9a0 R __per_cpu_offset
ffffffffc0a01000 t helper_fn\t[nf_conntrack]
ffffffff82e1c9a0 D __per_cpu_offset_later_dup
";

    #[test]
    fn kallsyms_lines_give_addresses_of_wanted_names_only() {
        let found = parse_kallsyms(SAMPLE, &[PER_CPU_OFFSET, "helper_fn"]);
        assert_eq!(found.get(PER_CPU_OFFSET), Some(&0xffff_ffff_82e1_c9a0));
        assert_eq!(found.get("helper_fn"), Some(&0xffff_ffff_c0a0_1000));
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn hidden_addresses_are_a_named_error() {
        let found = parse_kallsyms("0000000000000000 R __per_cpu_offset\n", &[PER_CPU_OFFSET]);
        let symbols = KernelSymbols { source: KALLSYMS, addresses: found };
        let err = symbols.address(PER_CPU_OFFSET).expect_err("zero address");
        assert!(matches!(err, LockStatsError::SymbolHidden { .. }));
        assert!(err.to_string().contains("kptr_restrict"), "{err}");
    }

    #[test]
    fn missing_symbol_is_a_named_error() {
        let symbols = KernelSymbols { source: KALLSYMS, addresses: BTreeMap::new() };
        let err = symbols.address(PER_CPU_OFFSET).expect_err("absent");
        assert!(err.to_string().contains(PER_CPU_OFFSET), "{err}");
    }

    #[test]
    fn iterator_records_decode_and_slots_are_nul_padded() {
        let mut rec = 0xffff_ffff_8200_0000u64.to_ne_bytes().to_vec();
        let mut name = [0u8; NAME_LEN];
        name[..PER_CPU_OFFSET.len()].copy_from_slice(PER_CPU_OFFSET.as_bytes());
        rec.extend_from_slice(&name);
        let found = decode_records(&rec).expect("one record");
        assert_eq!(found.get(PER_CPU_OFFSET), Some(&0xffff_ffff_8200_0000));
        assert!(decode_records(&rec[..10]).is_none());
        let slots = wanted_slots(&[PER_CPU_OFFSET]);
        assert_eq!(&slots[..PER_CPU_OFFSET.len()], PER_CPU_OFFSET.as_bytes());
        assert!(slots[PER_CPU_OFFSET.len()..].iter().all(|&b| b == 0));
    }
}
