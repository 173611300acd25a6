//! The store under `kill -9`: a real writer process committing states in a loop is killed
//! at random points, over and over; after each kill a restart (a load) finds a state that
//! verifies — the old or the new one, never a mix — and no temporary file left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use controller::store::Store;
use trust::test_repo::{File, Repo};
use trust::{Applied, ExpiryCheck, TrustedState, Update, apply_update};

const WRITER_DIR: &str = "STORE_FAULTS_WRITER_DIR";
const PATH: &str = "2/CONNTRACK/cfg1/config.json";

/// The states the writer alternates between: versions 2 and 3 of one config (large, so a
/// commit takes long enough to be killed in the middle).
fn states(repo_root: &[u8], targets: &[Vec<u8>; 2], contents: &[Vec<u8>; 2]) -> Vec<TrustedState> {
    let pinned = TrustedState::from_pinned_root(repo_root).unwrap();
    targets
        .iter()
        .zip(contents)
        .map(|(t, c)| {
            let update = Update {
                roots: vec![],
                targets: t,
                target_files: HashMap::from([(PATH, c.as_slice())]),
                client_configs: vec![PATH],
            };
            match apply_update(&pinned, &update, ExpiryCheck::Skip).unwrap() {
                Applied::Changed { state, .. } => state,
                Applied::Unchanged => panic!("expected a change"),
            }
        })
        .collect()
}

fn fixture(dir: &Path) -> (Vec<u8>, [Vec<u8>; 2], [Vec<u8>; 2]) {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    (read("root.json"), [read("t2"), read("t3")], [read("c2"), read("c3")])
}

/// The child: commits the two states alternately until it is killed.
fn writer(dir: &Path) -> ! {
    let (root, targets, contents) = fixture(dir);
    let encoded: Vec<Vec<u8>> =
        states(&root, &targets, &contents).iter().map(|s| Store::encode(s).unwrap()).collect();
    let store = Store::open(&dir.join("state"), Duration::from_secs(5)).unwrap();
    store.write(&encoded[0]).unwrap();
    // Tells the parent that commits are now under way.
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), b"").unwrap();
    loop {
        for bytes in &encoded {
            store.write(bytes).unwrap();
        }
    }
}

#[test]
fn kill_9_during_commits_leaves_a_verified_state_and_no_temporary_files() {
    if let Some(dir) = std::env::var_os(WRITER_DIR) {
        writer(Path::new(&dir));
    }
    let work = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    let contents = [vec![b'2'; 512 << 10], vec![b'3'; 512 << 10]];
    let contents = contents.map(|c| [b"\"".as_slice(), &c, b"\""].concat());
    let files = |v: u64, raw: &[u8]| repo.targets(v, &[File { path: PATH, raw, v: Some(v) }]);
    std::fs::write(work.path().join("root.json"), &repo.root_v1).unwrap();
    std::fs::write(work.path().join("t2"), files(2, &contents[0])).unwrap();
    std::fs::write(work.path().join("t3"), files(3, &contents[1])).unwrap();
    std::fs::write(work.path().join("c2"), &contents[0]).unwrap();
    std::fs::write(work.path().join("c3"), &contents[1]).unwrap();
    let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
    let state_dir = work.path().join("state");
    let mut leftovers_seen = 0;
    for round in 0..10u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill_9_during_commits_leaves_a_verified_state_and_no_temporary_files"])
            .env(WRITER_DIR, work.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ready = work.path().join(format!("ready-{}", child.id()));
        for _ in 0..6000 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ready.exists(), "the writer did not start committing");
        // Pseudo-random points in the commit loop (no clock-seeded randomness needed).
        std::thread::sleep(Duration::from_millis((round * 7919) % 31));
        child.kill().unwrap();
        child.wait().unwrap();
        let temps = || {
            std::fs::read_dir(&state_dir)
                .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).count())
                .unwrap_or(0)
        };
        leftovers_seen += temps();
        let loaded = Store::open(&state_dir, Duration::from_secs(5)).unwrap().load(&pinned).unwrap();
        assert!(loaded.quarantined.is_none(), "round {round}: the state was torn: {:?}", loaded.quarantined);
        let version = loaded.state.targets_version();
        assert!(version == 0 || version == 2 || version == 3, "round {round}: version {version}");
        assert_eq!(temps(), 0, "round {round}: a temporary file survived the restart");
    }
    println!("temporary files found after kills (all removed at restart): {leftovers_seen}");
}
