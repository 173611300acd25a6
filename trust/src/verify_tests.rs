#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::test_repo as repo;

use repo::{File, Repo, TestKey, expires_in_days, sign};

const PATH_A: &str = "2/LOADER_CONFIG/cfg1/config.json";
const PATH_B: &str = "2/OTHER/cfg2/config.json";

fn now() -> ExpiryCheck {
    ExpiryCheck::At { now_unix: jiff::Timestamp::now().as_second(), clock_skew_secs: 60 }
}

fn update<'a>(targets: &'a [u8], files: &[(&'a str, &'a [u8])], configs: &[&'a str]) -> Update<'a> {
    Update {
        roots: Vec::new(),
        targets,
        target_files: files.iter().copied().collect::<HashMap<_, _>>(),
        client_configs: configs.to_vec(),
    }
}

fn changed(current: &TrustedState, u: &Update<'_>) -> (TrustedState, BTreeSet<String>) {
    match apply_update(current, u, now()).unwrap() {
        Applied::Changed { state, changed_products } => (state, changed_products),
        Applied::Unchanged => panic!("expected a change"),
    }
}

/// A state holding targets v`version` with PATH_A = `content` (custom.v = 1).
fn state_with(repo: &Repo, version: u64, content: &[u8]) -> TrustedState {
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let t = repo.targets(version, &[File { path: PATH_A, raw: content, v: Some(1) }]);
    changed(&pinned, &update(&t, &[(PATH_A, content)], &[PATH_A])).0
}

/// The rejection must name the failure and leave the caller's state exactly as it was.
fn assert_rejected(current: &TrustedState, u: &Update<'_>, expect: fn(&VerifyError) -> bool) {
    let before = (current.root_version(), current.targets_version(), current.configs().len());
    let err = apply_update(current, u, now()).unwrap_err();
    assert!(expect(&err), "unexpected error: {err}");
    assert_eq!(before, (current.root_version(), current.targets_version(), current.configs().len()));
}

#[test]
fn accepts_a_signed_update_and_reports_the_changed_product() {
    let repo = Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let t = repo.targets(1, &[File { path: PATH_A, raw: b"{}", v: Some(7) }]);
    let (state, products) = changed(&pinned, &update(&t, &[(PATH_A, b"{}")], &[PATH_A]));
    assert_eq!(state.targets_version(), 1);
    let entry = &state.configs()[PATH_A];
    assert_eq!((entry.version, entry.length, &*entry.raw), (7, 2, &b"{}"[..]));
    assert_eq!(entry.apply_state, ApplyState::Unacknowledged);
    assert_eq!(products, BTreeSet::from(["LOADER_CONFIG".to_owned()]));
}

#[test]
fn empty_response_is_unchanged() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    assert!(matches!(apply_update(&state, &Update::default(), now()).unwrap(), Applied::Unchanged));
}

#[test]
fn cached_file_is_reused_and_keeps_its_apply_state() {
    let repo = Repo::new();
    let mut state = state_with(&repo, 1, b"{}");
    state.set_apply_state(PATH_A, ApplyState::Acknowledged, String::new());
    let t = repo.targets(
        2,
        &[File { path: PATH_A, raw: b"{}", v: Some(1) }, File { path: PATH_B, raw: b"[]", v: Some(1) }],
    );
    let (next, products) = changed(&state, &update(&t, &[(PATH_B, b"[]")], &[PATH_A, PATH_B]));
    assert_eq!(next.configs()[PATH_A].apply_state, ApplyState::Acknowledged);
    assert_eq!(products, BTreeSet::from(["OTHER".to_owned()]), "only the product that changed");
}

#[test]
fn removed_config_changes_its_product() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let t = repo.targets(2, &[]);
    let (next, products) = changed(&state, &update(&t, &[], &[]));
    assert!(next.configs().is_empty());
    assert_eq!(products, BTreeSet::from(["LOADER_CONFIG".to_owned()]));
}

#[test]
fn rejects_a_bad_signature() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let other = TestKey::generate();
    let t = sign(&repo::targets(2, expires_in_days(1), &[], None), &[&other]);
    assert_rejected(&state, &update(&t, &[], &[]), |e| matches!(e, VerifyError::TargetsSignature { .. }));
}

#[test]
fn rejects_a_tampered_document() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let t = repo.targets(2, &[]);
    let tampered = String::from_utf8(t).unwrap().replace("\"version\":2", "\"version\":3");
    assert_rejected(&state, &update(tampered.as_bytes(), &[], &[]), |e| {
        matches!(e, VerifyError::TargetsSignature { version: 3, .. })
    });
}

#[test]
fn rejects_signatures_below_threshold() {
    let (root_key, t1, t2) = (TestKey::generate(), TestKey::generate(), TestKey::generate());
    let r = repo::root(1, expires_in_days(10), &[&root_key], 1, &[&t1, &t2], 2);
    let state = TrustedState::from_pinned_root(&sign(&r, &[&root_key])).unwrap();
    let targets = repo::targets(1, expires_in_days(1), &[], None);
    let one = sign(&targets, &[&t1]);
    assert_rejected(&state, &update(&one, &[], &[]), |e| matches!(e, VerifyError::TargetsSignature { .. }));
    let both = sign(&targets, &[&t1, &t2]);
    assert!(apply_update(&state, &update(&both, &[], &[]), now()).is_ok());
}

#[test]
fn rejects_the_same_signature_twice_as_threshold() {
    let (root_key, t1, t2) = (TestKey::generate(), TestKey::generate(), TestKey::generate());
    let r = repo::root(1, expires_in_days(10), &[&root_key], 1, &[&t1, &t2], 2);
    let state = TrustedState::from_pinned_root(&sign(&r, &[&root_key])).unwrap();
    let twice = sign(&repo::targets(1, expires_in_days(1), &[], None), &[&t1, &t1]);
    assert!(apply_update(&state, &update(&twice, &[], &[]), now()).is_err());
}

#[test]
fn rejects_expired_targets_beyond_the_clock_skew() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let just_expired = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 30).unwrap();
    let within_skew = sign(&repo::targets(2, just_expired, &[], None), &[&repo.targets_key]);
    assert!(apply_update(&state, &update(&within_skew, &[], &[]), now()).is_ok());
    let expired = sign(&repo::targets(2, expires_in_days(-1), &[], None), &[&repo.targets_key]);
    assert_rejected(&state, &update(&expired, &[], &[]), |e| matches!(e, VerifyError::TargetsExpired { .. }));
}

#[test]
fn trusted_targets_that_expire_fail_the_steady_state_poll() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let later = ExpiryCheck::At { now_unix: expires_in_days(400).as_second(), clock_skew_secs: 60 };
    assert!(matches!(apply_update(&state, &Update::default(), later), Err(VerifyError::RootExpired { .. })));
}

#[test]
fn rejects_an_expired_root() {
    let root_key = TestKey::generate();
    let r = repo::root(1, expires_in_days(-2), &[&root_key], 1, &[&root_key], 1);
    let state = TrustedState::from_pinned_root(&sign(&r, &[&root_key])).unwrap();
    let t = sign(&repo::targets(1, expires_in_days(1), &[], None), &[&root_key]);
    assert_rejected(&state, &update(&t, &[], &[]), |e| {
        matches!(e, VerifyError::RootExpired { version: 1, .. })
    });
}

#[test]
fn rejects_rollback_and_a_reused_version() {
    let repo = Repo::new();
    let state = state_with(&repo, 3, b"{}");
    let older = repo.targets(2, &[File { path: PATH_A, raw: b"{}", v: Some(1) }]);
    assert_rejected(&state, &update(&older, &[], &[PATH_A]), |e| {
        matches!(e, VerifyError::TargetsRollback { trusted: 3, offered: 2 })
    });
    let reused = repo.targets(3, &[File { path: PATH_A, raw: b"[1]", v: Some(2) }]);
    assert_rejected(&state, &update(&reused, &[(PATH_A, b"[1]")], &[PATH_A]), |e| {
        matches!(e, VerifyError::TargetsVersionReused { version: 3 })
    });
}

#[test]
fn rejects_wrong_hash_wrong_length_and_missing_version() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let t = repo.targets(2, &[File { path: PATH_A, raw: b"{\"a\":1}", v: Some(2) }]);
    assert_rejected(&state, &update(&t, &[(PATH_A, b"{\"a\":2}")], &[PATH_A]), |e| {
        matches!(e, VerifyError::WrongHash { .. })
    });
    assert_rejected(&state, &update(&t, &[(PATH_A, b"{\"a\":12}")], &[PATH_A]), |e| {
        matches!(e, VerifyError::WrongLength { expected: 7, actual: 8, .. })
    });
    let no_v = repo.targets(2, &[File { path: PATH_A, raw: b"{}", v: None }]);
    assert_rejected(&state, &update(&no_v, &[(PATH_A, b"{}")], &[PATH_A]), |e| {
        matches!(e, VerifyError::MissingVersion { .. })
    });
}

#[test]
fn rejects_unknown_paths_bad_shapes_and_missing_files() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let t = repo.targets(2, &[File { path: PATH_A, raw: b"[2]", v: Some(2) }]);
    assert_rejected(&state, &update(&t, &[(PATH_B, b"[]")], &[PATH_B]), |e| {
        matches!(e, VerifyError::UnknownTarget { .. })
    });
    assert_rejected(&state, &update(&t, &[], &["2/../x/y"]), |e| {
        matches!(e, VerifyError::BadConfigPath { .. })
    });
    // PATH_A changed content: the cached copy no longer matches and nothing was sent.
    assert_rejected(&state, &update(&t, &[], &[PATH_A]), |e| matches!(e, VerifyError::MissingFile { .. }));
}

#[test]
fn rejects_unsupported_hash_algorithms() {
    let repo = Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let mut targets =
        repo::targets(1, expires_in_days(1), &[File { path: PATH_A, raw: b"{}", v: Some(1) }], None);
    for t in targets.targets.values_mut() {
        t.hashes._extra.insert("md5".into(), json!("00"));
    }
    let t = sign(&targets, &[&repo.targets_key]);
    assert_rejected(&pinned, &update(&t, &[(PATH_A, b"{}")], &[PATH_A]), |e| {
        matches!(e, VerifyError::UnsupportedHash { .. })
    });
}

#[test]
fn follows_a_root_rotation_signed_by_old_and_new_keys() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let (new_root_key, new_targets_key) = (TestKey::generate(), TestKey::generate());
    let r2 = repo::root(2, expires_in_days(30), &[&new_root_key], 1, &[&new_targets_key], 1);
    let r2 = sign(&r2, &[&repo.root_key, &new_root_key]);
    let t = sign(
        &repo::targets(2, expires_in_days(1), &[File { path: PATH_A, raw: b"{}", v: Some(1) }], None),
        &[&new_targets_key],
    );
    let mut u = update(&t, &[], &[PATH_A]);
    u.roots = vec![&r2];
    let (next, _) = changed(&state, &u);
    assert_eq!((next.root_version(), next.targets_version()), (2, 2));
    assert_eq!(next.roots_raw().len(), 1);

    // The same rotation without re-signed targets cannot keep the old targets.
    let stale = Update { roots: vec![&r2], ..Default::default() };
    assert_rejected(&state, &stale, |e| matches!(e, VerifyError::TargetsNotResigned { .. }));
}

#[test]
fn rejects_a_root_not_signed_by_the_previous_root() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let new_key = TestKey::generate();
    let r2 = repo::root(2, expires_in_days(30), &[&new_key], 1, &[&repo.targets_key], 1);
    let only_new = sign(&r2, &[&new_key]);
    let mut u = Update { roots: vec![&only_new], ..Default::default() };
    assert_rejected(&state, &u, |e| matches!(e, VerifyError::RootNotSignedByPrevious { version: 2, .. }));
    let only_old = sign(&r2, &[&repo.root_key]);
    u.roots = vec![&only_old];
    assert_rejected(&state, &u, |e| matches!(e, VerifyError::RootNotSelfSigned { version: 2, .. }));
}

#[test]
fn rejects_a_gap_in_the_root_chain() {
    let repo = Repo::new();
    let state = state_with(&repo, 1, b"{}");
    let r3 = repo::root(3, expires_in_days(30), &[&repo.root_key], 1, &[&repo.targets_key], 1);
    let r3 = sign(&r3, &[&repo.root_key]);
    let u = Update { roots: vec![&r3], ..Default::default() };
    assert_rejected(&state, &u, |e| matches!(e, VerifyError::RootVersionGap { trusted: 1, found: 3 }));
}

#[test]
fn pinned_root_must_be_self_signed() {
    let (a, b) = (TestKey::generate(), TestKey::generate());
    let r = repo::root(1, expires_in_days(1), &[&a], 1, &[&a], 1);
    assert!(TrustedState::from_pinned_root(&sign(&r, &[&b])).is_err());
    assert!(TrustedState::from_pinned_root(b"not json").is_err());
}

#[test]
fn exposes_backend_state_and_suggested_interval() {
    let repo = Repo::new();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let custom = json!({"opaque_backend_state": "abc", "agent_refresh_interval": 12});
    let t = sign(&repo::targets(1, expires_in_days(1), &[], Some(custom)), &[&repo.targets_key]);
    let (state, _) = changed(&pinned, &update(&t, &[], &[]));
    assert_eq!(state.opaque_backend_state(), b"abc");
    assert_eq!(state.suggested_interval_secs(), Some(12));
}
