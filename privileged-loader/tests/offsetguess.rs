//! Offset guessing on the real kernel, checked against the kernel's own BTF.
//!
//! The oracle reads /sys/kernel/btf/vmlinux through `bpftool btf dump -j` (a tool this
//! project did not write); the guesser itself never touches BTF. Needs root.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::collections::HashMap;
use std::process::Command;

use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::BtfError;
use privileged_loader::objects;
use privileged_loader::offsetguess::{self, Field, GuessError, MachineError, OffsetGuessConfig, Offsets};
use privileged_loader::status::{AssetOutcome, Registry};
use serde_json::Value;

/// Member offsets (bytes) and struct sizes from the running kernel's BTF.
struct KernelBtf {
    types: HashMap<u64, Value>,
}

impl KernelBtf {
    fn load() -> Self {
        let out = Command::new("bpftool")
            .args(["-j", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
            .output()
            .expect("run bpftool (apt-get install bpftool)");
        assert!(out.status.success(), "bpftool failed: {}", String::from_utf8_lossy(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).expect("bpftool prints JSON");
        let types = doc["types"].as_array().expect("types array");
        KernelBtf { types: types.iter().map(|t| (t["id"].as_u64().expect("type id"), t.clone())).collect() }
    }

    fn named_struct(&self, name: &str) -> &Value {
        self.types
            .values()
            .find(|t| t["kind"] == "STRUCT" && t["name"] == name && t["size"].as_u64() > Some(0))
            .unwrap_or_else(|| panic!("struct {name} not in the kernel's BTF"))
    }

    /// Follows typedefs and qualifiers to the struct/union behind `id`.
    fn resolve(&self, mut id: u64) -> &Value {
        loop {
            let t = &self.types[&id];
            match t["kind"].as_str() {
                Some("TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG") => {
                    id = t["type_id"].as_u64().expect("type_id")
                }
                _ => return t,
            }
        }
    }

    /// Offset in bytes of `member` in `ty`, looking into anonymous members too.
    fn member_in(&self, ty: &Value, member: &str) -> Option<u64> {
        for m in ty["members"].as_array()? {
            let bits = m["bits_offset"].as_u64().expect("bits_offset");
            if m["name"] == member {
                return Some(bits / 8);
            }
            if m["name"] == "(anon)" {
                let inner = self.resolve(m["type_id"].as_u64().expect("type_id"));
                if let Some(off) = self.member_in(inner, member) {
                    return Some(bits / 8 + off);
                }
            }
        }
        None
    }

    fn offset(&self, ty: &str, member: &str) -> u32 {
        let found = self.member_in(self.named_struct(ty), member);
        u32::try_from(found.unwrap_or_else(|| panic!("{ty}.{member} not in BTF"))).unwrap()
    }

    fn size(&self, ty: &str) -> u32 {
        u32::try_from(self.named_struct(ty)["size"].as_u64().unwrap()).unwrap()
    }

    fn expected_offsets(&self) -> Offsets {
        let origin = self.offset("nf_conn", "tuplehash") + self.offset("nf_conntrack_tuple_hash", "tuple");
        Offsets {
            skb_nfct: self.offset("sk_buff", "_nfct"),
            origin,
            reply: origin + self.size("nf_conntrack_tuple_hash"),
            status: self.offset("nf_conn", "status"),
            // possible_net_t is a struct whose only member, `net`, is at 0.
            netns: self.offset("nf_conn", "ct_net"),
            netns_inum: self.offset("net", "ns") + self.offset("ns_common", "inum"),
        }
    }
}

fn assets(registry: &Registry) -> AssetLoader {
    // The guesser must not need BTF: give it none.
    AssetLoader::new(
        Err(BtfError::NotFound { tried: vec!["hidden by the test".into()] }),
        None,
        registry.clone(),
    )
}

#[test]
fn guessed_offsets_equal_the_kernels_btf_twenty_times_in_a_row() {
    let want = KernelBtf::load().expected_offsets();
    let registry = Registry::default();
    let assets = assets(&registry);
    let mut times = Vec::new();
    for run in 1..=20 {
        let report = offsetguess::guess(&OffsetGuessConfig::default(), &assets)
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(report.offsets, want, "run {run}: guessed offsets differ from the kernel's BTF");
        times.push(report.elapsed);
    }
    eprintln!("20 runs, each: {times:?}");
    let record =
        registry.assets().into_iter().find(|a| a.asset == offsetguess::ASSET).expect("asset recorded");
    assert_eq!(record.outcome, AssetOutcome::Loaded { btf_source: None });
    assert_eq!(record.count, 20);
}

#[test]
fn an_impossible_threshold_fails_naming_the_field() {
    let registry = Registry::default();
    let cfg = OffsetGuessConfig { threshold: 8, ..Default::default() };
    let err = offsetguess::guess(&cfg, &assets(&registry)).expect_err("no field fits under 8 bytes here");
    assert!(
        matches!(err, GuessError::Machine(MachineError::Overflow { field: Field::SkbNfct, threshold: 8 })),
        "{err}"
    );
    assert!(err.to_string().contains("offset guessing overflow on sk_buff._nfct at 8"), "{err}");
}

#[test]
fn thresholds_outside_1_to_3000_are_refused_before_touching_the_kernel() {
    let registry = Registry::default();
    for threshold in [0, 3001] {
        let cfg = OffsetGuessConfig { threshold, ..Default::default() };
        let err = offsetguess::guess(&cfg, &assets(&registry)).expect_err("out of range");
        assert!(matches!(err, GuessError::Threshold(t) if t == threshold), "{err}");
    }
}

#[test]
fn the_cache_answers_later_calls_without_guessing_again() {
    let registry = Registry::default();
    let assets = assets(&registry);
    let first = offsetguess::guess_cached(&OffsetGuessConfig::default(), &assets).expect("guess");
    let second = offsetguess::guess_cached(&OffsetGuessConfig::default(), &assets).expect("cached");
    assert!(second.cached);
    assert_eq!(first.offsets, second.offsets);
    let runs = registry.assets().iter().find(|a| a.asset == offsetguess::ASSET).map(|a| a.count);
    assert!(runs <= Some(1), "the second call must not run the guesser");
}

/// The prebuilt objects must load on kernels without BTF: no CO-RE relocation at all.
#[test]
fn prebuilt_objects_carry_no_core_relocations() {
    for asset in ["offsetguess", "conntrack_prebuilt"] {
        let object = objects::embedded(asset).unwrap_or_else(|| panic!("asset {asset} embedded"));
        assert_eq!(core_relocations(object), 0, "asset {asset} has CO-RE relocations");
    }
    assert!(core_relocations(objects::embedded("conntrack").expect("CO-RE asset")) > 0, "oracle sanity");
}

/// How many CO-RE relocations the object carries (the loader's own `.BTF.ext` reader).
fn core_relocations(elf: &[u8]) -> usize {
    privileged_loader::btf::relocation::core_relocation_count(elf).expect("a readable object")
}
