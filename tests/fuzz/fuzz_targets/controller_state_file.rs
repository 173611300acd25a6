//! The controller's `state.json` as it may be found on disk (truncated, edited, corrupt):
//! loading re-verifies it from the pinned root and either uses it or sets it aside,
//! never a panic.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use fuzz_targets::store::Store;
use libfuzzer_sys::fuzz_target;
use trust::TrustedState;

static ROOT: &[u8] = include_bytes!("../seeds/1.root.json");
static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR
        .get_or_init(|| tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("temp dir"));
    let Ok(pinned) = TrustedState::from_pinned_root(ROOT) else { return };
    let Ok(store) = Store::open(dir.path(), Duration::from_secs(1)) else { return };
    if std::fs::write(dir.path().join("state.json"), data).is_err() {
        return;
    }
    if let Ok(loaded) = store.load(&pinned)
        && let Some((aside, _)) = loaded.quarantined
    {
        let _ = std::fs::remove_file(aside);
    }
});
