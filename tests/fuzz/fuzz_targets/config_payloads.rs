//! Config payloads as a remote-config service publishes them, through the product schemas
//! both the controller and the loader check (CONNTRACK, LOCK_STATS, LOADER_LOG, BTF). The
//! TUF target cannot reach these with arbitrary bytes (a payload must match a signed
//! hash), so they are fuzzed here directly. The first byte picks the product (past the
//! last: an unknown one); a `BTF` payload that fits is also decoded, base64 then xz,
//! within a size limit. Any bytes: a payload or an error, never a panic, and what
//! parses serializes back to the same payload.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trust::products::{ALL, Payload};

/// Decoded BTF larger than this is refused; small, so a decompression bomb is cut short.
const BTF_LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, raw)) = data.split_first() else { return };
    let product = ALL.get(usize::from(pick) % (ALL.len() + 1)).copied().unwrap_or("NOT_A_PRODUCT");
    let Ok(payload) = Payload::parse(product, raw) else { return };
    let again = match &payload {
        Payload::Conntrack(p) => serde_json::to_vec(p),
        Payload::LockStats(p) => serde_json::to_vec(p),
        Payload::LoaderLog(p) => serde_json::to_vec(p),
        Payload::Btf(p) => {
            if let Ok(btf) = p.decode(BTF_LIMIT) {
                assert!(btf.len() as u64 <= BTF_LIMIT, "decoded BTF exceeds its limit");
            }
            serde_json::to_vec(p)
        }
    };
    let again = again.expect("a parsed payload serializes");
    assert_eq!(Payload::parse(product, &again).ok(), Some(payload), "payload changed through JSON");
});
