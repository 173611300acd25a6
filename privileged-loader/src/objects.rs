//! The eBPF objects built from `bpf/*.bpf.c` and embedded in the binary.
//!
//! ELF parsing in aya wants the bytes 8-byte aligned; `include_bytes!` gives no alignment
//! guarantee, hence the wrapper.

#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

macro_rules! aligned {
    ($path:expr) => {{
        static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!($path));
        &ALIGNED.0
    }};
}

include!(concat!(env!("OUT_DIR"), "/embedded_objects.rs"));

/// The embedded object of asset `name` (file stem of its `bpf/*.bpf.c`), if any.
pub fn embedded(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// Names of every embedded asset.
pub fn names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_objects_are_elf() {
        for name in super::names() {
            let bytes = super::embedded(name).expect("listed asset is embedded");
            assert_eq!(&bytes[..4], b"\x7fELF", "asset {name} is not an ELF object");
        }
    }
}
