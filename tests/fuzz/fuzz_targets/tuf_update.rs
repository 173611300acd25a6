//! A remote-config response as the controller receives it (protobuf), verified as TUF
//! metadata and config payloads against a pinned root (a real one, from config-service
//! `init`): any bytes are refused or applied, never a panic.
#![no_main]
use fuzz_targets::proto::remoteconfig::v1::ClientGetConfigsResponse;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use trust::{ExpiryCheck, TrustedState, Update, apply_update};

static ROOT: &[u8] = include_bytes!("../seeds/1.root.json");

fuzz_target!(|data: &[u8]| {
    let Ok(response) = ClientGetConfigsResponse::decode(data) else { return };
    let Ok(pinned) = TrustedState::from_pinned_root(ROOT) else { return };
    let update = Update {
        roots: response.roots.iter().map(Vec::as_slice).collect(),
        targets: &response.targets,
        target_files: response.target_files.iter().map(|f| (f.path.as_str(), f.raw.as_slice())).collect(),
        client_configs: response.client_configs.iter().map(String::as_str).collect(),
    };
    let _ = apply_update(&pinned, &update, ExpiryCheck::At { now_unix: 1_800_000_000, clock_skew_secs: 0 });
});
