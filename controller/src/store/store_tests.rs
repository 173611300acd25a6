#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use trust::{Applied, ApplyState, ExpiryCheck, Update, apply_update};

const PATH: &str = "2/LOADER_CONFIG/cfg1/config.json";

fn verified(repo: &trust::test_repo::Repo, version: u64, content: &[u8]) -> TrustedState {
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let t = repo.targets(version, &[trust::test_repo::File { path: PATH, raw: content, v: Some(version) }]);
    let update = Update {
        roots: vec![],
        targets: &t,
        target_files: HashMap::from([(PATH, content)]),
        client_configs: vec![PATH],
    };
    let now = ExpiryCheck::At { now_unix: jiff::Timestamp::now().as_second(), clock_skew_secs: 0 };
    match apply_update(&pinned, &update, now).unwrap() {
        Applied::Changed { state, .. } => state,
        Applied::Unchanged => panic!("expected a change"),
    }
}

fn store(dir: &Path) -> Store {
    Store::open(dir, Duration::from_millis(200)).unwrap()
}

#[test]
fn committed_state_reloads_and_reverifies() {
    let dir = tempfile::tempdir().unwrap();
    let repo = trust::test_repo::Repo::new();
    let mut state = verified(&repo, 3, b"{\"x\":1}");
    state.set_apply_state(PATH, ApplyState::Acknowledged, String::new());
    store(dir.path()).write(&Store::encode(&state).unwrap()).unwrap();

    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let loaded = store(dir.path()).load(&pinned).unwrap();
    assert!(loaded.quarantined.is_none());
    assert_eq!(loaded.state.targets_version(), 3);
    let entry = &loaded.state.configs()[PATH];
    assert_eq!((&*entry.raw, entry.apply_state), (&b"{\"x\":1}"[..], ApplyState::Acknowledged));
}

#[test]
fn no_state_file_starts_from_the_pinned_root() {
    let dir = tempfile::tempdir().unwrap();
    let repo = trust::test_repo::Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let loaded = store(dir.path()).load(&pinned).unwrap();
    assert_eq!((loaded.state.root_version(), loaded.state.targets_version()), (1, 0));
}

#[test]
fn garbage_is_quarantined_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let repo = trust::test_repo::Repo::new();
    std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let loaded = store(dir.path()).load(&pinned).unwrap();
    let (aside, reason) = loaded.quarantined.unwrap();
    assert!(matches!(reason, CorruptState::Format(_)));
    assert!(aside.exists() && !dir.path().join(STATE_FILE).exists());
    assert!(aside.file_name().unwrap().to_str().unwrap().starts_with("state.json.corrupt-"));
    assert_eq!(loaded.state.targets_version(), 0);
}

#[test]
fn tampered_config_bytes_fail_reverification() {
    let dir = tempfile::tempdir().unwrap();
    let repo = trust::test_repo::Repo::new();
    let state = verified(&repo, 2, b"{\"x\":1}");
    let encoded = String::from_utf8(Store::encode(&state).unwrap()).unwrap();
    let tampered = encoded.replace(&hex::encode(b"{\"x\":1}"), &hex::encode(b"{\"x\":2}"));
    assert_ne!(encoded, tampered);
    std::fs::write(dir.path().join(STATE_FILE), tampered).unwrap();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let loaded = store(dir.path()).load(&pinned).unwrap();
    assert!(matches!(loaded.quarantined, Some((_, CorruptState::Verify(_)))));
    assert!(loaded.state.configs().is_empty());
}

#[test]
fn state_from_another_repository_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (trust::test_repo::Repo::new(), trust::test_repo::Repo::new());
    let foreign = verified(&theirs, 5, b"{}");
    store(dir.path()).write(&Store::encode(&foreign).unwrap()).unwrap();
    let pinned = TrustedState::from_pinned_root(&ours.root_v1).unwrap();
    assert!(store(dir.path()).load(&pinned).unwrap().quarantined.is_some());
}

#[test]
fn a_held_lock_times_out_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let _held = StoreLock::acquire(&dir.path().join(LOCK_FILE), Duration::from_secs(1)).unwrap();
    let err = s.write(b"{}").unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    assert!(err.to_string().contains("state.lock"));
}

#[test]
fn client_id_is_created_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = store(dir.path()).client_id().unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(store(dir.path()).client_id().unwrap(), first);
}

#[test]
fn temporary_files_of_interrupted_commits_are_removed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for leftover in [".state.json.tmp-4242", ".status.json.tmp-17", ".client_id.tmp-9"] {
        std::fs::write(dir.path().join(leftover), vec![0u8; 4096]).unwrap();
    }
    let repo = trust::test_repo::Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    store(dir.path()).load(&pinned).unwrap();
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(left.iter().all(|n| !n.contains(".tmp-")), "left behind: {left:?}");
}

#[test]
fn a_state_with_configs_removed_by_hand_is_quarantined_and_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let repo = trust::test_repo::Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let other = "2/LOADER_CONFIG/cfg2/config.json";
    let files = [
        trust::test_repo::File { path: PATH, raw: b"{\"a\":1}", v: Some(4) },
        trust::test_repo::File { path: other, raw: b"{\"b\":2}", v: Some(4) },
    ];
    let targets = repo.targets(4, &files);
    let update = Update {
        roots: vec![],
        targets: &targets,
        target_files: files.iter().map(|f| (f.path, f.raw)).collect(),
        client_configs: vec![PATH, other],
    };
    let Applied::Changed { state, .. } = apply_update(&pinned, &update, ExpiryCheck::Skip).unwrap() else {
        panic!("expected a change")
    };
    let mut doc: serde_json::Value = serde_json::from_slice(&Store::encode(&state).unwrap()).unwrap();
    doc["configs"].as_array_mut().unwrap().retain(|c| c["path"] != other);
    std::fs::write(dir.path().join(STATE_FILE), serde_json::to_vec(&doc).unwrap()).unwrap();
    let loaded = store(dir.path()).load(&pinned).unwrap();
    let (_, reason) = loaded.quarantined.expect("a partial state must be refused");
    assert!(reason.to_string().contains(other), "{reason}");
    assert_eq!(
        loaded.state.targets_version(),
        0,
        "starts again from the pinned root, so it is fetched whole"
    );
}

#[test]
fn a_state_file_that_is_a_directory_is_set_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(STATE_FILE)).unwrap();
    let repo = trust::test_repo::Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let loaded = store(dir.path()).load(&pinned).unwrap();
    let (aside, reason) = loaded.quarantined.expect("set aside");
    assert!(matches!(reason, CorruptState::Unreadable(_)), "{reason}");
    assert!(aside.is_dir() && !dir.path().join(STATE_FILE).exists());
    // And the next commit works.
    store(dir.path()).write(&Store::encode(&pinned).unwrap()).unwrap();
}
