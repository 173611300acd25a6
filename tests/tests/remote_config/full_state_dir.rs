//! The controller's state directory on a real full filesystem (a small tmpfs mounted over
//! it; the tests run as root): a config the controller cannot commit is reported to the
//! service as the client's error and shows in `status.json`, the configs it held stay, and
//! everything catches up on its own once there is room again.
use super::*;

/// Big enough for the state, the status and a published config; small enough to fill.
const TMPFS_SIZE: &str = "size=256k";

/// Unmounts the tmpfs when the test ends, passing or not.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn tmpfs(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("{TMPFS_SIZE},mode=0700,uid={NOBODY},gid={NOBODY}"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs on {} (needs root)", dir.display());
        Self(dir.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `filler` until the filesystem refuses (ENOSPC).
fn fill(filler: &Path) {
    use std::io::Write;
    let mut file = fs::File::create(filler).unwrap();
    let block = [0u8; 4096];
    loop {
        if let Err(e) = file.write_all(&block).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling {}: {e}", filler.display());
            return;
        }
    }
}

fn no_space(text: &Value) -> bool {
    text.as_str().is_some_and(|e| e.contains("No space left on device"))
}

#[test]
fn a_full_state_dir_is_reported_to_the_service_and_recovers_when_space_returns() {
    let work = scratch_dir();
    let repo = Repo::init(work.path());
    repo.publish("cfg1", r#"{"sweep_interval_secs": 10}"#);
    let service = Service::start(work.path(), &repo, &[]);
    // Harness::Controller keeps its state in <work>/controller-state: mount there first.
    let mounted = Mounted::tmpfs(&work.path().join("controller-state"));
    let mut controller = Controller::start(work.path(), &service.endpoint(), &repo.root_file(1));
    controller.wait_status(SYNC, "cfg1 v1", |s| holds(s, "cfg1", 1) && s["state_dir_error"].is_null());

    let filler = mounted.0.join("filler");
    fill(&filler);
    let seen = service.requests().len();
    repo.publish("cfg1", r#"{"sweep_interval_secs": 20}"#);
    let status = controller
        .wait_status(SYNC, "the full state dir in status.json", |s| no_space(&s["state_dir_error"]));
    assert!(holds(&status, "cfg1", 1), "the committed config must stay: {status:#?}");
    let reported = wait_request(&service, seen, "the full state dir reported to the service", |r| {
        r["has_error"] == true && no_space(&r["error"])
    });
    assert_eq!(reported_state(&reported, "cfg1").unwrap()["version"], 1, "v2 was never committed");

    fs::remove_file(&filler).unwrap();
    let seen = service.requests().len();
    // The controller backs off up to max_backoff_secs (16 s) between failed polls.
    let status = controller.wait_status(Duration::from_secs(40), "cfg1 v2 once there is room", |s| {
        holds(s, "cfg1", 2) && s["state_dir_error"].is_null() && s["consecutive_errors"] == 0
    });
    assert_eq!(status["last_error"], Value::Null);
    wait_request(&service, seen, "the recovery reported to the service", |r| {
        r["has_error"] == false && reported_state(r, "cfg1").is_some_and(|c| c["version"] == 2)
    });
}
