//! Decoding what the `iter/bpf_map` program (`bpf/lockstat_maps.bpf.c`) writes: the
//! per-CPU offsets, then one record per map with the kernel addresses of its locks.
//!
//! Pure: bytes in, structs out. The layouts mirror `struct lockstat_header` and
//! `struct lockstat_map_record` in `bpf/include/lockstat_kernel.h`.

const HEADER_MAGIC: u32 = 0x4c4b_5354;
const MAP_MAGIC: u32 = 0x4c4b_4d50;
/// `sizeof(struct lockstat_map_record)`.
pub const MAP_RECORD_SIZE: usize = 144;
/// Header `kind`: the values are `__per_cpu_offset[cpu]`.
const KIND_OFFSETS: u32 = 0;
/// Header `kind`: the values are the probe map's per-CPU value addresses.
const KIND_PROBE_ADDRS: u32 = 1;

/// Where one map's locks live in kernel memory, as the iterator read it. An address of 0
/// means the map type has no such lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapLayout {
    pub id: u32,
    pub map_type: u32,
    pub map_flags: u32,
    pub max_entries: u32,
    pub name: String,
    pub map_addr: u64,
    pub buckets: u64,
    pub n_buckets: u32,
    pub bucket_size: u32,
    pub freelist_pcpu: u64,
    pub freelist_head_size: u32,
    pub extralist: u64,
    pub lru_global: u64,
    pub lru_list_size: u32,
    pub lru_pcpu: u64,
    pub lru_locallist_size: u32,
    /// BPF_F_NO_COMMON_LRU: `lru_pcpu` points at per-CPU `bpf_lru_list`s.
    pub lru_percpu: bool,
    pub rb_waitq: u64,
    pub waitq_size: u32,
    pub rb_spinlock: u64,
    pub rb_spinlock_size: u32,
    /// Per-CPU arrays: the `__percpu` pointer of element 0.
    pub pcpu_base: u64,
}

/// Everything one run of the iterator produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsSnapshot {
    /// `__per_cpu_offset[cpu]` for every possible CPU.
    pub per_cpu_offsets: Vec<u64>,
    pub maps: Vec<MapLayout>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("output ends inside a record at byte {0}")]
    Truncated(usize),
    #[error("unexpected record magic {magic:#x} at byte {at}")]
    BadMagic { magic: u32, at: usize },
    #[error("per-CPU offsets: {0}")]
    PerCpu(String),
}

/// The header as written: what its per-CPU values are.
enum PerCpuValues {
    Offsets(Vec<u64>),
    ProbeAddresses(Vec<u64>),
}

/// Little cursor over the iterator's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LayoutError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(LayoutError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u32(&mut self) -> Result<u32, LayoutError> {
        let mut buf = [0u8; 4];
        buf.copy_from_slice(self.take(4)?);
        Ok(u32::from_ne_bytes(buf))
    }
    fn u64(&mut self) -> Result<u64, LayoutError> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_ne_bytes(buf))
    }
    fn peek_u32(&self) -> Option<u32> {
        let slice = self.bytes.get(self.at..self.at + 4)?;
        Some(u32::from_ne_bytes([slice[0], slice[1], slice[2], slice[3]]))
    }
}

/// Decodes the whole output of one iterator run. `probe_map_id` is the id of the
/// object's `pcpu_probe` map: when the kernel hides `__per_cpu_offset`, the per-CPU
/// offsets are its per-CPU value addresses minus its `__percpu` pointer.
pub fn decode(bytes: &[u8], probe_map_id: Option<u32>) -> Result<MapsSnapshot, LayoutError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut per_cpu = PerCpuValues::Offsets(Vec::new());
    let mut maps = Vec::new();
    while let Some(magic) = reader.peek_u32() {
        match magic {
            HEADER_MAGIC => per_cpu = decode_header(&mut reader)?,
            MAP_MAGIC => maps.push(decode_map(&mut reader)?),
            other => return Err(LayoutError::BadMagic { magic: other, at: reader.at }),
        }
    }
    let per_cpu_offsets = match per_cpu {
        PerCpuValues::Offsets(offsets) => offsets,
        PerCpuValues::ProbeAddresses(addrs) => offsets_from_probe(&addrs, &maps, probe_map_id)?,
    };
    Ok(MapsSnapshot { per_cpu_offsets, maps })
}

fn decode_header(reader: &mut Reader<'_>) -> Result<PerCpuValues, LayoutError> {
    reader.take(4)?; // magic
    let nr_cpus = reader.u32()? as usize;
    let kind = reader.u32()?;
    reader.take(4)?; // padding
    let values = (0..nr_cpus).map(|_| reader.u64()).collect::<Result<Vec<_>, _>>()?;
    match kind {
        KIND_OFFSETS => Ok(PerCpuValues::Offsets(values)),
        KIND_PROBE_ADDRS => Ok(PerCpuValues::ProbeAddresses(values)),
        other => Err(LayoutError::PerCpu(format!("unknown header kind {other}"))),
    }
}

/// `per_cpu_ptr(p, cpu) = p + offset[cpu]`, so `offset[cpu] = address[cpu] - p` for the
/// probe map's element pointer `p` (wrapping: offsets are "negative" on x86-64).
fn offsets_from_probe(
    addrs: &[u64],
    maps: &[MapLayout],
    probe_map_id: Option<u32>,
) -> Result<Vec<u64>, LayoutError> {
    let probe = probe_map_id
        .and_then(|id| maps.iter().find(|m| m.id == id))
        .ok_or_else(|| LayoutError::PerCpu("the iterator did not visit the pcpu_probe map".into()))?;
    if probe.pcpu_base == 0 || addrs.contains(&0) {
        return Err(LayoutError::PerCpu("the pcpu_probe map gave no per-CPU address".into()));
    }
    Ok(addrs.iter().map(|a| a.wrapping_sub(probe.pcpu_base)).collect())
}

fn decode_map(reader: &mut Reader<'_>) -> Result<MapLayout, LayoutError> {
    reader.take(4)?; // magic
    let mut m = MapLayout {
        id: reader.u32()?,
        map_type: reader.u32()?,
        map_flags: reader.u32()?,
        max_entries: reader.u32()?,
        n_buckets: reader.u32()?,
        ..MapLayout::default()
    };
    m.name = c_name(reader.take(16)?);
    m.map_addr = reader.u64()?;
    m.buckets = reader.u64()?;
    m.freelist_pcpu = reader.u64()?;
    m.extralist = reader.u64()?;
    m.lru_global = reader.u64()?;
    m.lru_pcpu = reader.u64()?;
    m.rb_waitq = reader.u64()?;
    m.rb_spinlock = reader.u64()?;
    m.pcpu_base = reader.u64()?;
    m.bucket_size = reader.u32()?;
    m.freelist_head_size = reader.u32()?;
    m.lru_list_size = reader.u32()?;
    m.lru_locallist_size = reader.u32()?;
    m.waitq_size = reader.u32()?;
    m.rb_spinlock_size = reader.u32()?;
    m.lru_percpu = reader.u32()? != 0;
    reader.take(4)?; // padding
    Ok(m)
}

/// A NUL-padded C name as text; non-UTF-8 bytes are replaced, not fatal.
fn c_name(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes a record the way the BPF program lays it out (test oracle for decode).
    pub(crate) fn encode_map(m: &MapLayout) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [MAP_MAGIC, m.id, m.map_type, m.map_flags, m.max_entries, m.n_buckets] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        let mut name = [0u8; 16];
        name[..m.name.len()].copy_from_slice(m.name.as_bytes());
        out.extend_from_slice(&name);
        for v in [
            m.map_addr,
            m.buckets,
            m.freelist_pcpu,
            m.extralist,
            m.lru_global,
            m.lru_pcpu,
            m.rb_waitq,
            m.rb_spinlock,
            m.pcpu_base,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [
            m.bucket_size,
            m.freelist_head_size,
            m.lru_list_size,
            m.lru_locallist_size,
            m.waitq_size,
            m.rb_spinlock_size,
            u32::from(m.lru_percpu),
            0,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(out.len(), MAP_RECORD_SIZE);
        out
    }

    fn encode_header(kind: u32, offsets: &[u64]) -> Vec<u8> {
        let mut out = HEADER_MAGIC.to_ne_bytes().to_vec();
        out.extend_from_slice(&(offsets.len() as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        offsets.iter().for_each(|o| out.extend_from_slice(&o.to_ne_bytes()));
        out
    }

    #[test]
    fn decodes_header_then_maps() {
        let map = MapLayout {
            id: 7,
            map_type: 1,
            name: "hot_map".into(),
            buckets: 0xffff_8880_0000_1000,
            n_buckets: 16,
            bucket_size: 16,
            lru_percpu: true,
            ..MapLayout::default()
        };
        let mut bytes = encode_header(KIND_OFFSETS, &[0x100, 0x200]);
        bytes.extend(encode_map(&map));
        let snapshot = decode(&bytes, None).expect("valid output");
        assert_eq!(snapshot.per_cpu_offsets, vec![0x100, 0x200]);
        assert_eq!(snapshot.maps, vec![map]);
    }

    #[test]
    fn offsets_are_measured_on_the_probe_map_when_the_symbol_is_hidden() {
        let probe = MapLayout { id: 42, map_type: 6, pcpu_base: 0x3_1000, ..MapLayout::default() };
        let mut bytes = encode_header(KIND_PROBE_ADDRS, &[0xffff_8880_7fa3_1000, 0xffff_8880_7fb3_1000]);
        bytes.extend(encode_map(&probe));
        let snapshot = decode(&bytes, Some(42)).expect("valid output");
        assert_eq!(snapshot.per_cpu_offsets, vec![0xffff_8880_7fa0_0000, 0xffff_8880_7fb0_0000]);
        assert!(matches!(decode(&bytes, Some(7)), Err(LayoutError::PerCpu(_))), "probe map must be found");
    }

    #[test]
    fn empty_output_is_no_maps() {
        assert_eq!(decode(&[], None).expect("empty is valid"), MapsSnapshot::default());
    }

    #[test]
    fn truncated_record_is_an_error() {
        let bytes = encode_map(&MapLayout::default());
        assert!(matches!(decode(&bytes[..100], None), Err(LayoutError::Truncated(_))));
    }

    #[test]
    fn foreign_bytes_are_an_error() {
        assert!(matches!(
            decode(&[1, 2, 3, 4, 5, 6, 7, 8], None),
            Err(LayoutError::BadMagic { magic: 0x0403_0201, at: 0 })
        ));
    }
}
