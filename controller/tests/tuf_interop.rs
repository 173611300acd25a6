//! Interoperability with python-tuf (the TUF reference implementation, `pip install tuf`):
//! metadata this project signs verifies under python-tuf, and metadata python-tuf signs
//! verifies here. Runs the real python-tuf; nothing is mocked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::process::Command;

use support::repo::{File, Repo};
use trust::{Applied, ExpiryCheck, TrustedState, Update, apply_update};

#[test]
fn metadata_round_trips_with_python_tuf() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    let content = b"{\"from\":\"rust\"}";
    let ours = repo.targets(1, &[File { path: "2/CONNTRACK/rs1/config.json", raw: content, v: Some(1) }]);
    std::fs::write(dir.path().join("ours.root.json"), &repo.root_v1).unwrap();
    std::fs::write(dir.path().join("ours.targets.json"), &ours).unwrap();
    std::fs::write(dir.path().join("ours.file"), content).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/python_tuf.py");
    let out =
        Command::new("python3").arg(script).arg(dir.path()).output().expect("python3 must be installed");
    assert!(
        out.status.success(),
        "python-tuf refused our metadata (or is not installed: pip install tuf):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let (root, targets, config) = (read("py.root.json"), read("py.targets.json"), read("py.config.json"));
    let path = "2/CONNTRACK/py1/config.json";
    let pinned = TrustedState::from_pinned_root(&root).unwrap();
    let update = Update {
        roots: vec![],
        targets: &targets,
        target_files: HashMap::from([(path, config.as_slice())]),
        client_configs: vec![path],
    };
    let now = ExpiryCheck::At { now_unix: jiff::Timestamp::now().as_second(), clock_skew_secs: 0 };
    let Applied::Changed { state, .. } = apply_update(&pinned, &update, now).unwrap() else {
        panic!("python-tuf's targets were not applied");
    };
    let entry = &state.configs()[path];
    assert_eq!((state.targets_version(), entry.version), (2, 4));
    assert!(entry.hashes.contains_key("sha512"), "python-tuf's sha512 hash was checked too");

    // And a byte flipped in python-tuf's config is caught.
    let mut tampered = config.clone();
    tampered[3] ^= 1;
    let bad = Update { target_files: HashMap::from([(path, tampered.as_slice())]), ..update };
    assert!(apply_update(&pinned, &bad, now).is_err());
}
