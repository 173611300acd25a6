//! The relocation BTF: the part of the kernel's BTF that CO-RE relocation of the loader's
//! objects reads, built once per BTF found.
//!
//! aya relocates an object by scanning every type of the target BTF for each local type
//! a relocation starts from (its *root*), comparing kinds and then names: ~130,000 types
//! and a string conversion per same-kind type, per root, per object. Profiled, that was
//! half of the loader's start-up CPU (`docs/benchmarks.md`, start-up).
//!
//! Relocation reads little of what it scans. A root is matched by (flavorless) name; a
//! field access then walks members, array elements, typedefs and modifiers, and never
//! through a pointer (each dereference is a relocation of its own, with its own root).
//! So the relocation BTF holds the kernel types named like a root of one of the loader's
//! objects, and every type reachable from them without crossing a pointer; a pointer is
//! kept as a pointer to `void` (aya holds any two pointers compatible as fields). Every
//! candidate aya would find in the full BTF is in it, with the same layout, so the
//! relocated instructions are the same (tested for every embedded object).
//!
//! What it cannot answer, the full BTF does: an object whose roots it does not cover (a
//! `--bpf-dir` object with other types), and relocations that need the kernel's type ids
//! or look behind pointers (`TYPE_ID_TARGET`; a type relocation on a pointer or function
//! prototype). Attach-point lookups always use the full BTF: the kernel checks those ids.
use std::collections::{BTreeSet, HashMap, HashSet};

use aya::{Btf, Endianness};

/// BTF's magic number (uapi btf.h), in the native byte order.
const BTF_MAGIC: u16 = 0xEB9F;
const HEADER_LEN: usize = 24;

/// Type kinds (uapi btf.h).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// CO-RE relocation kinds (uapi bpf.h, `enum bpf_core_relo_kind`) this BTF serves without
/// conditions: field relocations (0–5) and enum value relocations (10, 11).
const FIELD_KINDS: std::ops::RangeInclusive<u32> = 0..=5;
const ENUMVAL_KINDS: std::ops::RangeInclusive<u32> = 10..=11;
/// `BPF_CORE_TYPE_ID_LOCAL`: answered from the object's own BTF.
const TYPE_ID_LOCAL: u32 = 6;
/// Type relocations (`TYPE_EXISTS`, `TYPE_SIZE`, `TYPE_MATCHES`): served unless the root
/// resolves to a pointer or function prototype (their compatibility check follows it).
const TYPE_KINDS: [u32; 3] = [8, 9, 12];

/// Why a BTF could not be read or a relocation BTF not built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelocationBtfError {
    #[error("not BTF in this machine's byte order (magic {0:#06x})")]
    Magic(u16),
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type {id} has unknown kind {kind}")]
    Kind { id: u32, kind: u32 },
    #[error("BTF type {id} refers to type {target}, which does not exist")]
    Dangling { id: u32, target: u32 },
    #[error("the object's relocations need the full BTF: {0}")]
    NotCovered(String),
    #[error("the object is not a readable ELF file: {0}")]
    Elf(String),
    #[error("aya refused the relocation BTF: {0}")]
    Aya(String),
}

/// A BTF of the types the relocations of a set of roots read; see the module docs.
pub struct RelocationBtf {
    pub btf: Btf,
    /// The root names it was built for (flavorless).
    pub roots: BTreeSet<String>,
    /// Its types, of how many in the kernel's BTF.
    pub types: usize,
    pub kernel_types: usize,
}

impl std::fmt::Debug for RelocationBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelocationBtf")
            .field("roots", &self.roots)
            .field("types", &self.types)
            .field("kernel_types", &self.kernel_types)
            .finish()
    }
}

impl RelocationBtf {
    /// The relocation BTF of kernel BTF `raw` for the CO-RE roots of every object in
    /// `objects` that it can serve.
    pub fn build<'o>(
        raw: &[u8],
        objects: impl IntoIterator<Item = &'o [u8]>,
    ) -> Result<Self, RelocationBtfError> {
        let mut roots = BTreeSet::new();
        for object in objects {
            // An object this BTF cannot serve is relocated against the full one (`covers`).
            match core_roots(object) {
                Ok(more) => roots.extend(more),
                Err(e) => tracing::debug!(error = %e, "an object's relocations are left to the full BTF"),
            }
        }
        let kernel = RawBtf::parse(raw)?;
        let (bytes, types) = prune(&kernel, &roots)?;
        let btf =
            Btf::parse(&bytes, Endianness::default()).map_err(|e| RelocationBtfError::Aya(e.to_string()))?;
        Ok(Self { btf, roots, types, kernel_types: kernel.types.len() })
    }

    /// The relocation BTF of kernel BTF `raw` for the objects built into the loader.
    pub fn for_embedded_objects(raw: &[u8]) -> Result<Self, RelocationBtfError> {
        Self::build(raw, crate::objects::names().filter_map(crate::objects::embedded))
    }

    /// Whether this BTF answers every CO-RE relocation of `object` as the full BTF would.
    pub fn covers(&self, object: &[u8]) -> Result<(), RelocationBtfError> {
        let roots = core_roots(object)?;
        match roots.difference(&self.roots).next() {
            None => Ok(()),
            Some(missing) => {
                Err(RelocationBtfError::NotCovered(format!("it was built without type {missing:?}")))
            }
        }
    }
}

/// One type record: where it starts in the type section, and its length.
#[derive(Clone, Copy)]
struct Record {
    at: usize,
    len: usize,
}

/// A BTF blob, read in place: its type records (index = type id - 1) and strings.
struct RawBtf<'a> {
    types_section: &'a [u8],
    strings: &'a [u8],
    types: Vec<Record>,
}

/// Checks the magic number BTF and `.BTF.ext` start with (native byte order).
fn check_magic(bytes: &[u8]) -> Result<(), RelocationBtfError> {
    let magic =
        bytes.get(..2).map(|m| u16::from_ne_bytes([m[0], m[1]])).ok_or(RelocationBtfError::Truncated(0))?;
    if magic != BTF_MAGIC {
        return Err(RelocationBtfError::Magic(magic));
    }
    Ok(())
}

/// A BTF blob of raw `types` records and `strings`, behind a version-1 header.
fn write_blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + types.len() + strings.len());
    out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
    out.extend_from_slice(&[1, 0]); // version 1, no flags
    for field in [HEADER_LEN as u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        out.extend_from_slice(&field.to_ne_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(strings);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, RelocationBtfError> {
    let field = bytes.get(at..at + 4).ok_or(RelocationBtfError::Truncated(at))?;
    Ok(u32::from_ne_bytes([field[0], field[1], field[2], field[3]]))
}

impl<'a> RawBtf<'a> {
    fn parse(raw: &'a [u8]) -> Result<Self, RelocationBtfError> {
        check_magic(raw)?;
        let hdr_len = u32_at(raw, 4)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len + off;
            raw.get(start..start + len).ok_or(RelocationBtfError::Truncated(start))
        };
        let types_section = section(u32_at(raw, 8)? as usize, u32_at(raw, 12)? as usize)?;
        let strings = section(u32_at(raw, 16)? as usize, u32_at(raw, 20)? as usize)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < types_section.len() {
            let info = u32_at(types_section, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match info_kind(info) {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                other => return Err(RelocationBtfError::Kind { id: types.len() as u32 + 1, kind: other }),
            };
            let len = 12 + extra;
            if at + len > types_section.len() {
                return Err(RelocationBtfError::Truncated(at));
            }
            types.push(Record { at, len });
            at += len;
        }
        Ok(Self { types_section, strings, types })
    }

    fn record(&self, id: u32) -> Option<&'a [u8]> {
        let record = self.types.get((id as usize).checked_sub(1)?)?;
        self.types_section.get(record.at..record.at + record.len)
    }

    fn string(&self, offset: u32) -> &'a [u8] {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        &tail[..tail.iter().position(|b| *b == 0).unwrap_or(tail.len())]
    }

    /// The type `id` refers to through typedefs and modifiers (0: void or unknown).
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let Some(record) = self.record(id) else { return 0 };
            let info = u32_at(record, 4).unwrap_or_default();
            match info_kind(info) {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = u32_at(record, 8).unwrap_or_default();
                }
                _ => return id,
            }
        }
        0
    }
}

fn info_kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

/// `name` without a `___flavor` suffix, as CO-RE matches names.
fn flavorless(name: &[u8]) -> &[u8] {
    name.windows(3).position(|w| w == b"___").map_or(name, |cut| &name[..cut])
}

/// The names of the types the CO-RE relocations of `object` start from (flavorless);
/// an error when one of them needs more than a relocation BTF holds.
fn core_roots(object: &[u8]) -> Result<BTreeSet<String>, RelocationBtfError> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(object).map_err(|e| RelocationBtfError::Elf(e.to_string()))?;
    let section = |name| file.section_by_name(name).and_then(|s| s.data().ok());
    let (Some(btf), Some(ext)) = (section(".BTF"), section(".BTF.ext")) else {
        return Ok(BTreeSet::new());
    };
    let local = RawBtf::parse(btf)?;
    let mut roots = BTreeSet::new();
    for (type_id, relo_kind) in core_relocations(ext)? {
        if relo_kind == TYPE_ID_LOCAL {
            continue;
        }
        let record = local.record(type_id).ok_or(RelocationBtfError::Dangling { id: 0, target: type_id })?;
        let name = flavorless(local.string(u32_at(record, 0)?));
        if name.is_empty() {
            return Err(RelocationBtfError::NotCovered(format!(
                "a relocation starts from anonymous type {type_id}"
            )));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let served = FIELD_KINDS.contains(&relo_kind)
            || ENUMVAL_KINDS.contains(&relo_kind)
            || (TYPE_KINDS.contains(&relo_kind) && {
                let resolved =
                    local.record(local.resolve(type_id)).map(|r| info_kind(u32_at(r, 4).unwrap_or_default()));
                !matches!(resolved, Some(kind::PTR | kind::FUNC_PROTO))
            });
        if !served {
            return Err(RelocationBtfError::NotCovered(format!(
                "relocation kind {relo_kind} on type {name:?}"
            )));
        }
        roots.insert(name);
    }
    Ok(roots)
}

/// How many CO-RE relocations ELF `object` carries (0 without `.BTF.ext`).
pub fn core_relocation_count(object: &[u8]) -> Result<usize, RelocationBtfError> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(object).map_err(|e| RelocationBtfError::Elf(e.to_string()))?;
    match file.section_by_name(".BTF.ext").and_then(|s| s.data().ok()) {
        Some(ext) => Ok(core_relocations(ext)?.len()),
        None => Ok(0),
    }
}

/// Every CO-RE relocation of a `.BTF.ext` section: (local root type id, kind).
fn core_relocations(ext: &[u8]) -> Result<Vec<(u32, u32)>, RelocationBtfError> {
    check_magic(ext)?;
    let hdr_len = u32_at(ext, 4)? as usize;
    // The CO-RE part of the header (core_relo_off, core_relo_len) came with a longer one.
    if hdr_len < 32 {
        return Ok(Vec::new());
    }
    let (off, len) = (u32_at(ext, 24)? as usize, u32_at(ext, 28)? as usize);
    let start = hdr_len + off;
    let relos = ext.get(start..start + len).ok_or(RelocationBtfError::Truncated(start))?;
    if relos.is_empty() {
        return Ok(Vec::new());
    }
    let record_size = u32_at(relos, 0)? as usize;
    if record_size < 16 {
        return Err(RelocationBtfError::Truncated(start));
    }
    let mut found = Vec::new();
    let mut at = 4;
    while at < relos.len() {
        let count = u32_at(relos, at + 4)? as usize;
        at += 8;
        for _ in 0..count {
            found.push((u32_at(relos, at + 4)?, u32_at(relos, at + 12)?));
            at += record_size;
        }
    }
    Ok(found)
}

/// The types a relocation may read when it starts from a type named in `roots`, as a BTF
/// blob of their own (new ids, in the kernel's order; only their strings), and how many.
fn prune(kernel: &RawBtf<'_>, roots: &BTreeSet<String>) -> Result<(Vec<u8>, usize), RelocationBtfError> {
    let wanted: HashSet<&[u8]> = roots.iter().map(|r| r.as_bytes()).collect();
    let mut keep = vec![false; kernel.types.len() + 1];
    let mut queue = Vec::new();
    for id in 1..=kernel.types.len() as u32 {
        let record = kernel.record(id).ok_or(RelocationBtfError::Truncated(0))?;
        let info = u32_at(record, 4)?;
        let candidate = matches!(
            info_kind(info),
            kind::STRUCT
                | kind::UNION
                | kind::ENUM
                | kind::ENUM64
                | kind::FWD
                | kind::TYPEDEF
                | kind::INT
                | kind::FLOAT
        );
        if candidate && wanted.contains(flavorless(kernel.string(u32_at(record, 0)?))) {
            keep[id as usize] = true;
            queue.push(id);
        }
    }
    while let Some(id) = queue.pop() {
        let record = kernel.record(id).ok_or(RelocationBtfError::Truncated(0))?;
        for target in embedded_types(record)? {
            if target as usize >= keep.len() {
                return Err(RelocationBtfError::Dangling { id, target });
            }
            if target != 0 && !keep[target as usize] {
                keep[target as usize] = true;
                queue.push(target);
            }
        }
    }
    let mut new_id = vec![0u32; keep.len()];
    let mut next = 1;
    for (id, kept) in keep.iter().enumerate().skip(1) {
        if *kept {
            new_id[id] = next;
            next += 1;
        }
    }
    let mut strings = Strings::default();
    let mut types = Vec::new();
    for id in (1..keep.len()).filter(|id| keep[*id]) {
        let record = kernel.record(id as u32).ok_or(RelocationBtfError::Truncated(0))?;
        rewrite(kernel, record, &new_id, &mut strings, &mut types)?;
    }
    Ok((write_blob(&types, &strings.bytes), next as usize - 1))
}

/// The types `record` holds by value (not behind a pointer): what a field walk can enter.
fn embedded_types(record: &[u8]) -> Result<Vec<u32>, RelocationBtfError> {
    let info = u32_at(record, 4)?;
    let vlen = (info & 0xffff) as usize;
    Ok(match info_kind(info) {
        kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
            vec![u32_at(record, 8)?]
        }
        kind::ARRAY => vec![u32_at(record, 12)?, u32_at(record, 16)?],
        kind::STRUCT | kind::UNION => {
            (0..vlen).map(|i| u32_at(record, 12 + 12 * i + 4)).collect::<Result<_, _>>()?
        }
        _ => Vec::new(),
    })
}

/// A string section being built: each distinct string once.
struct Strings {
    bytes: Vec<u8>,
    at: HashMap<Vec<u8>, u32>,
}

impl Default for Strings {
    fn default() -> Self {
        Self { bytes: vec![0], at: HashMap::from([(Vec::new(), 0)]) }
    }
}

impl Strings {
    fn add(&mut self, s: &[u8]) -> u32 {
        if let Some(offset) = self.at.get(s) {
            return *offset;
        }
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(s);
        self.bytes.push(0);
        self.at.insert(s.to_vec(), offset);
        offset
    }
}

/// Appends `record` to `out` with its strings moved to `strings` and its type ids
/// renumbered; a pointer now points at `void`.
fn rewrite(
    kernel: &RawBtf<'_>,
    record: &[u8],
    new_id: &[u32],
    strings: &mut Strings,
    out: &mut Vec<u8>,
) -> Result<(), RelocationBtfError> {
    let start = out.len();
    out.extend_from_slice(record);
    let put = |out: &mut Vec<u8>, at: usize, value: u32| {
        out[start + at..start + at + 4].copy_from_slice(&value.to_ne_bytes())
    };
    let name = |out: &mut Vec<u8>, at: usize, strings: &mut Strings| -> Result<(), RelocationBtfError> {
        let offset = strings.add(kernel.string(u32_at(record, at)?));
        put(out, at, offset);
        Ok(())
    };
    name(out, 0, strings)?;
    let info = u32_at(record, 4)?;
    let vlen = (info & 0xffff) as usize;
    let renumber = |id: u32| new_id.get(id as usize).copied().unwrap_or(0);
    match info_kind(info) {
        kind::PTR => put(out, 8, 0),
        kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
            put(out, 8, renumber(u32_at(record, 8)?))
        }
        kind::ARRAY => {
            put(out, 12, renumber(u32_at(record, 12)?));
            put(out, 16, renumber(u32_at(record, 16)?));
        }
        kind::STRUCT | kind::UNION => {
            for i in 0..vlen {
                let member = 12 + 12 * i;
                name(out, member, strings)?;
                put(out, member + 4, renumber(u32_at(record, member + 4)?));
            }
        }
        kind::ENUM => {
            for i in 0..vlen {
                name(out, 12 + 8 * i, strings)?;
            }
        }
        kind::ENUM64 => {
            for i in 0..vlen {
                name(out, 12 + 12 * i, strings)?;
            }
        }
        // INT, FLOAT, FWD: nothing else refers to a string or a type.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    /// A BTF blob of `types` (each a full record) and `strings`.
    fn blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flatten().flat_map(|w| w.to_ne_bytes()).collect();
        write_blob(&types, strings)
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    #[test]
    fn a_root_keeps_what_it_embeds_and_cuts_pointers() {
        // strings: 1 "int", 5 "outer", 11 "inner", 17 "a", 19 "b", 21 "far", 25 "other"
        let strings = b"\0int\0outer\0inner\0a\0b\0far\0other\0";
        let types = vec![
            vec![1, info(kind::INT, 0), 4, 32],                      // 1 int
            vec![5, info(kind::STRUCT, 2), 16, 17, 3, 0, 19, 4, 64], // 2 outer { inner a; far *b }
            vec![11, info(kind::STRUCT, 1), 4, 17, 1, 0],            // 3 inner { int a }
            vec![0, info(kind::PTR, 0), 5],                          // 4 far *
            vec![21, info(kind::STRUCT, 1), 4, 17, 1, 0],            // 5 far { int a }
            vec![25, info(kind::STRUCT, 0), 0],                      // 6 other {}
        ];
        let raw = blob(&types, strings);
        let kernel = RawBtf::parse(&raw).unwrap();
        let (pruned, kept) = prune(&kernel, &BTreeSet::from(["outer".to_string()])).unwrap();
        let out = RawBtf::parse(&pruned).unwrap();
        assert_eq!(kept, out.types.len());
        let names: Vec<_> = (1..=out.types.len() as u32)
            .map(|id| {
                String::from_utf8_lossy(out.string(u32_at(out.record(id).unwrap(), 0).unwrap())).into_owned()
            })
            .collect();
        assert_eq!(names, ["int", "outer", "inner", ""], "far and other are not reachable by value");
        let pointer = out.record(4).unwrap();
        assert_eq!(info_kind(u32_at(pointer, 4).unwrap()), kind::PTR);
        assert_eq!(u32_at(pointer, 8).unwrap(), 0, "the pointer now points at void");
        // outer's members point at the renumbered inner (3) and pointer (4).
        let outer = out.record(2).unwrap();
        assert_eq!((u32_at(outer, 16).unwrap(), u32_at(outer, 28).unwrap()), (3, 4));
        Btf::parse(&pruned, Endianness::default()).unwrap();
    }

    /// An instruction's fields: code, dst, src, off, imm.
    type Insn = (u8, u8, u8, i16, i32);

    /// Every instruction of every program of `object` after relocation against `target`.
    fn relocated(object: &[u8], target: &Btf) -> Vec<(String, Vec<Insn>)> {
        let mut obj = aya_obj::Object::parse(object).unwrap();
        obj.relocate_btf(target).unwrap();
        let mut functions: Vec<_> = obj
            .functions
            .values()
            .map(|f| {
                let insns =
                    f.instructions.iter().map(|i| (i.code, i.dst_reg(), i.src_reg(), i.off, i.imm)).collect();
                (f.name.clone(), insns)
            })
            .collect();
        functions.sort();
        functions
    }

    /// The point of it all: for every object built into the loader, relocation against the
    /// relocation BTF writes exactly the instructions relocation against the whole kernel
    /// BTF writes — on this machine's real kernel BTF.
    #[test]
    fn every_embedded_object_relocates_the_same_against_it_as_against_the_kernel_btf() {
        let Ok(raw) = std::fs::read(crate::btf::SYSFS_VMLINUX) else {
            eprintln!("no {}: this kernel has no BTF to compare against", crate::btf::SYSFS_VMLINUX);
            return;
        };
        let full = Btf::parse(&raw, Endianness::default()).unwrap();
        let relocation = RelocationBtf::for_embedded_objects(&raw).unwrap();
        eprintln!("{relocation:?}");
        assert!(relocation.types * 20 < relocation.kernel_types, "{relocation:?}: not much smaller");
        let mut compared = Vec::new();
        for name in crate::objects::names() {
            let object = crate::objects::embedded(name).unwrap();
            if core_roots(object).unwrap().is_empty() {
                continue;
            }
            relocation.covers(object).unwrap();
            assert_eq!(relocated(object, &relocation.btf), relocated(object, &full), "object {name}");
            compared.push(name);
        }
        for expected in ["conntrack", "lockstat_maps", "lockstat_ksym", "map_count", "probe"] {
            assert!(
                compared.contains(&expected),
                "{expected} has CO-RE relocations and was compared: {compared:?}"
            );
        }
    }

    #[test]
    fn an_object_with_a_root_it_was_not_built_for_is_not_covered() {
        let Ok(raw) = std::fs::read(crate::btf::SYSFS_VMLINUX) else { return };
        let object = crate::objects::embedded("conntrack").unwrap();
        let only_maps =
            RelocationBtf::build(&raw, [crate::objects::embedded("lockstat_maps").unwrap()]).unwrap();
        let err = only_maps.covers(object).unwrap_err();
        assert!(
            matches!(&err, RelocationBtfError::NotCovered(why) if why.contains("built without type")),
            "{err}"
        );
    }

    /// The reader is fed BTF from remote configs too: single-byte corruptions of a real
    /// blob (the relocation BTF of this kernel, ~380 types) and of an object's `.BTF.ext`
    /// are an error or a result, never a panic.
    #[test]
    fn corrupted_blobs_are_errors_never_panics() {
        let Ok(raw) = std::fs::read(crate::btf::SYSFS_VMLINUX) else { return };
        let relocation = RelocationBtf::for_embedded_objects(&raw).unwrap();
        let (blob, _) = prune(&RawBtf::parse(&raw).unwrap(), &relocation.roots).unwrap();
        // Every header byte, then every 13th byte (every one: minutes in a debug build).
        for at in (0..HEADER_LEN).chain((HEADER_LEN..blob.len()).step_by(13)) {
            for value in [0xff, blob[at] ^ 0x80] {
                let mut bad = blob.clone();
                bad[at] = value;
                if let Ok(parsed) = RawBtf::parse(&bad) {
                    let _ = prune(&parsed, &relocation.roots);
                    for id in 1..=parsed.types.len() as u32 {
                        parsed.resolve(id);
                    }
                }
            }
        }
        use object::{Object, ObjectSection};
        let object = crate::objects::embedded("lockstat_maps").unwrap();
        let file = object::File::parse(object).unwrap();
        let ext = file.section_by_name(".BTF.ext").and_then(|s| s.data().ok()).unwrap();
        for at in 0..ext.len() {
            let mut bad = ext.to_vec();
            bad[at] ^= 0xff;
            let _ = core_relocations(&bad);
        }
    }

    #[test]
    fn flavors_match_their_base_name() {
        assert_eq!(flavorless(b"nf_conn___old"), b"nf_conn");
        assert_eq!(flavorless(b"nf_conn"), b"nf_conn");
    }

    #[test]
    fn a_truncated_or_foreign_blob_is_refused() {
        assert_eq!(RawBtf::parse(b"\x9f").err(), Some(RelocationBtfError::Truncated(0)));
        assert!(matches!(RawBtf::parse(&[0u8; 24]).err(), Some(RelocationBtfError::Magic(0))));
        let mut raw = blob(&[vec![1, info(kind::STRUCT, 3), 4]], b"\0x\0");
        assert!(matches!(RawBtf::parse(&raw).err(), Some(RelocationBtfError::Truncated(_))));
        raw = blob(&[vec![1, info(25, 0), 4]], b"\0x\0");
        assert!(matches!(RawBtf::parse(&raw).err(), Some(RelocationBtfError::Kind { id: 1, kind: 25 })));
    }
}
