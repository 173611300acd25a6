//! An `ApplyConfig` request as the controller (or anyone allowed on the socket) sends it:
//! protobuf decoding, then the loader's own re-verification of its proof against the
//! pinned root (root chain, signed targets, config hashes), then each verified config
//! through its product's schema. Any bytes: refused or verified, never a panic.
#![no_main]
use fuzz_targets::proof::{Proof, Verifier};
use fuzz_targets::proto::loader::v1::ApplyConfigRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use trust::TrustedState;
use trust::products::Payload;

static ROOT: &[u8] = include_bytes!("../seeds/1.root.json");
/// Inside the seed repository's validity (the same instant as the TUF target's).
const NOW_UNIX: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ApplyConfigRequest::decode(data) else { return };
    let Ok(pinned) = TrustedState::from_pinned_root(ROOT) else { return };
    let proof = Proof {
        roots: request.roots.iter().map(Vec::as_slice).collect(),
        targets: &request.targets,
        configs: request.configs.iter().map(|c| (c.path.as_str(), c.raw.as_slice())).collect(),
    };
    let Ok(verified) = Verifier::new(pinned, 0).verify(&proof, NOW_UNIX) else { return };
    for config in &verified.configs {
        let _ = Payload::parse(&config.product, &config.raw);
    }
});
