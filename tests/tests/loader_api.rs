//! The loader as a process: its socket, its caller checks, its status, its handling of
//! BTF sources and bad objects. Real binary, real kernel, real unix socket.
use std::path::Path;
use std::process::Command;

use e2e_tests::loader::{LoaderOptions, LoaderProcess, loaderctl};
use e2e_tests::process::binary;
use serde_json::Value;

const NOBODY: (u32, u32) = (65534, 65534);

fn asset<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["assets"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["asset"] == name))
        .unwrap_or_else(|| panic!("no asset {name} in status: {status:#}"))
}

#[test]
fn a_caller_outside_the_allow_list_is_refused_and_named_in_the_log() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    loader.open_socket_to_all();
    let out = loaderctl(&loader.socket, &["status"], Some(NOBODY));
    assert!(!out.status.success(), "uid 65534 must be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused") && stderr.contains("65534"), "unexpected error: {stderr}");
    assert!(loader.log_text().contains("uid=65534"), "log must name the uid:\n{}", loader.log_text());
    // root, on the list, is still served.
    assert!(loader.ctl(&["status"]).status.success());
}

#[test]
fn an_allowed_unprivileged_uid_is_served() {
    let loader = LoaderProcess::start(LoaderOptions { allowed_uids: &[65534], ..Default::default() });
    loader.open_socket_to_all();
    let out = loaderctl(&loader.socket, &["status", "--json"], Some(NOBODY));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The readiness probe of the DaemonSet: `loaderctl health` says SERVING and exits 0
/// while the loader serves, and fails naming the socket once it is gone.
#[test]
fn loaderctl_health_answers_serving_and_fails_when_the_loader_is_gone() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    let out = loader.ctl(&["health"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "loader.v1.Loader: SERVING");
    let json = loader.ctl_json(&["health"]);
    assert_eq!(json["status"], "SERVING", "{json:#}");
    // Refused callers are refused here too: the health check is behind the same check.
    loader.open_socket_to_all();
    let out = loaderctl(&loader.socket, &["health"], Some(NOBODY));
    assert!(!out.status.success(), "uid 65534 must be refused");

    let socket = loader.socket.clone();
    drop(loader);
    let out = loaderctl(&socket, &["health"], None);
    assert!(!out.status.success(), "health must fail without a loader");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&socket.display().to_string()), "the error names the socket: {stderr}");
}

#[test]
fn python_grpcio_passes_the_health_check_over_the_socket() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/health_check.py");
    for service in ["", "loader.v1.Loader"] {
        let out =
            Command::new("python3").arg(&script).arg(&loader.socket).arg(service).output().expect("python3");
        assert!(
            out.status.success(),
            "health check of {service:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    }
}

#[test]
fn probe_reports_kprobe_and_fentry_unavailable_with_reasons_here() {
    let out = Command::new(binary("privileged-loader")).args(["probe", "--json"]).output().expect("probe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
    let kind = |name: &str| {
        report["attach_kinds"]
            .as_array()
            .and_then(|k| k.iter().find(|k| k["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no attach kind {name}: {report:#}"))
    };
    for unavailable in ["fentry", "kprobe"] {
        let k = kind(unavailable);
        assert_eq!(k["available"], false, "{unavailable} is not usable on this machine: {k}");
        assert!(!k["reason"].as_str().unwrap_or("").is_empty(), "{unavailable} needs a reason");
    }
    for available in ["tp_btf", "raw_tracepoint", "iter"] {
        assert_eq!(kind(available)["available"], true, "{available}: {report:#}");
    }
    assert_eq!(report["btf"]["found"], true);
    // The human report says the same in words.
    let text = Command::new(binary("privileged-loader")).arg("probe").output().expect("probe");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("kprobe") && text.contains("fentry"), "{text}");
}

#[test]
fn status_shows_the_conntracker_fallback_chain() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    let module = loader.module("conntrack");
    assert_eq!(module["state"], "running", "{module:#}");
    assert!(module["strategy"].as_str().unwrap_or("").contains("tp_btf"), "{module:#}");
    let attempts = module["attempts"].as_array().expect("attempts");
    assert_eq!(attempts[0]["implementation"], "core", "{module:#}");
    assert_eq!(attempts[0]["ok"], true, "{module:#}");
    let hooks = attempts[0]["hooks"].as_array().expect("hooks of the CO-RE conntracker");
    let names: Vec<&str> = hooks.iter().filter_map(|h| h["hook"].as_str()).collect();
    assert!(names.len() >= 3, "fentry, kprobe and tp_btf must all be recorded: {module:#}");
    for failed in hooks.iter().filter(|h| h["ok"] == false) {
        assert!(
            !failed["reason"].as_str().unwrap_or("").is_empty(),
            "a failed attempt needs a reason: {failed}"
        );
    }
    assert_eq!(hooks.last().expect("hook")["ok"], true);
    let status = loader.status();
    assert_eq!(asset(&status, "conntrack")["outcome"], "loaded");
    assert_eq!(asset(&status, "conntrack")["btf_source"], "sysfs");
    let caps = status["capabilities"].as_array().expect("capabilities").len();
    assert!(caps <= 3, "the loader must have dropped to at most 3 capabilities: {status:#}");
}

/// A copy of this kernel's BTF laid out as BTFHub does.
fn btfhub_dir(root: &Path, compress: bool) {
    let os = std::fs::read_to_string("/etc/os-release").expect("os-release");
    let field = |key: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
            .expect("os-release field")
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("release");
    let dir = root.join(field("ID")).join(field("VERSION_ID")).join(std::env::consts::ARCH);
    std::fs::create_dir_all(&dir).expect("hub dir");
    let name = format!("{}.btf", release.trim());
    std::fs::copy("/sys/kernel/btf/vmlinux", dir.join(&name)).expect("copy BTF");
    if compress {
        let ok = Command::new("tar")
            .arg("-cJf")
            .arg(dir.join(format!("{name}.tar.xz")))
            .arg("-C")
            .arg(&dir)
            .arg(&name)
            .status();
        assert!(ok.expect("tar").success());
        std::fs::remove_file(dir.join(&name)).expect("remove plain copy");
    }
}

#[test]
fn btf_from_a_btfhub_directory_loads_when_sysfs_is_disabled() {
    for compress in [false, true] {
        let hub = tempfile::tempdir().expect("hub");
        btfhub_dir(hub.path(), compress);
        let hub_arg = hub.path().to_str().expect("utf-8 path");
        let loader = LoaderProcess::start(LoaderOptions {
            args: &["--no-sysfs-btf", "--btf-hub-dir", hub_arg],
            ..Default::default()
        });
        let status = loader.status();
        assert_eq!(status["kernel"]["btf"]["source"], "btfhub", "{status:#}");
        assert_eq!(asset(&status, "conntrack")["outcome"], "loaded", "{status:#}");
        assert_eq!(asset(&status, "conntrack")["btf_source"], "btfhub");
    }
}

#[test]
fn without_any_btf_the_result_is_btf_not_found_and_the_loader_keeps_serving() {
    let empty = tempfile::tempdir().expect("empty hub");
    let hub_arg = empty.path().to_str().expect("utf-8 path");
    let loader = LoaderProcess::start(LoaderOptions {
        args: &["--no-sysfs-btf", "--btf-hub-dir", hub_arg],
        ..Default::default()
    });
    let status = loader.status();
    assert_eq!(status["kernel"]["btf"]["found"], false, "{status:#}");
    let reason = status["kernel"]["btf"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains(hub_arg), "the reason must list the places tried: {reason}");
    assert_eq!(asset(&status, "conntrack")["outcome"], "btf-not-found", "{status:#}");
    assert!(loader.ctl(&["status"]).status.success());
}

#[test]
fn a_corrupt_object_in_bpf_dir_is_an_asset_read_error_and_the_loader_keeps_serving() {
    let objects = tempfile::tempdir().expect("bpf dir");
    std::fs::write(objects.path().join("conntrack.bpf.o"), b"\x7fELF this is not a valid object")
        .expect("write");
    let dir_arg = objects.path().to_str().expect("utf-8 path");
    let loader = LoaderProcess::start(LoaderOptions { args: &["--bpf-dir", dir_arg], ..Default::default() });
    let status = loader.status();
    let outcome = asset(&status, "conntrack")["outcome"].as_str().unwrap_or("").to_string();
    assert!(outcome == "asset-read-error" || outcome == "verifier-error", "{status:#}");
    assert!(!asset(&status, "conntrack")["detail"].as_str().unwrap_or("").is_empty());
    // Still serving, and says so.
    assert!(loader.ctl(&["status"]).status.success());
}

#[test]
fn every_thread_of_the_running_loader_holds_only_the_steady_state_capabilities() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
    let steady = (1u64 << 12) | (1 << 38) | (1 << 39);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", loader.process.pid())).expect("tasks");
    let mut seen = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).expect("task status");
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).expect("field")
        };
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let mask = u64::from_str_radix(&field(set), 16).expect("hex mask");
            assert_eq!(
                mask & !steady,
                0,
                "thread {:?} {set} {mask:#x} exceeds the steady state",
                task.path()
            );
        }
        assert_eq!(field("NoNewPrivs:"), "1");
        seen += 1;
    }
    assert!(seen >= 2, "expected the main thread and runtime workers");
}

#[test]
fn lockstats_attributes_the_conntrack_map_to_its_module_and_can_be_turned_off() {
    let loader = LoaderProcess::start(LoaderOptions::default());
    let stats = loader.ctl_json(&["lockstats"]);
    assert_eq!(stats["status"]["state"], "running", "{stats:#}");
    assert!(stats["status"]["tracked_maps"].as_u64().unwrap_or(0) >= 1, "{stats:#}");
    let locks = stats["locks"].as_array().expect("locks");
    assert!(
        locks.iter().any(|l| l["map"] == "conntrack"
            && l["module"] == "conntrack"
            && l["lock_type"] == "hash_bucket"),
        "the conntracker's map must be tracked and attributed to it: {stats:#}"
    );
    assert_eq!(loader.module("lockstats")["state"], "running");
    let text = loader.ctl(&["lockstats"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("LOCK TYPE"));
    drop(loader);

    let off = LoaderProcess::start(LoaderOptions {
        extra_toml: "[lockstats]\nenabled = false\n",
        ..Default::default()
    });
    let stats = off.ctl_json(&["lockstats"]);
    assert_eq!(stats["status"]["state"], "disabled", "{stats:#}");
    assert_eq!(off.module("lockstats")["state"], "disabled");
}

/// Reading PID 1's namespace link needs every capability PID 1 has (or CAP_SYS_PTRACE);
/// without it the loader uses its own namespace as the root one, and says so in status.
#[test]
fn status_says_when_the_root_network_namespace_could_not_be_read() {
    let readable = std::fs::read_link("/proc/1/ns/net").is_ok();
    let loader = LoaderProcess::start(LoaderOptions::default());
    let module = loader.module("conntrack");
    let notes: Vec<&str> =
        module["notes"].as_array().expect("notes").iter().filter_map(|n| n.as_str()).collect();
    let noted = notes.iter().any(|n| n.contains("/proc/1/ns/net"));
    assert_eq!(noted, !readable, "root namespace readable here: {readable}; module: {module:#}");
    if noted {
        let text = String::from_utf8_lossy(&loader.ctl(&["status"]).stdout).into_owned();
        assert!(text.contains("conntrack note: cannot read /proc/1/ns/net"), "{text}");
    }
}

/// Without CAP_NET_ADMIN the conntracker still loads but cannot open its ctnetlink
/// sockets: it runs without seeding and destroy events, and says so. That warning is
/// written while the chain starts the conntracker, and must survive the chain's own
/// record of the success (it used to be wiped a few lines later).
#[test]
fn a_degraded_mode_warning_reaches_get_status() {
    let loader = LoaderProcess::start(LoaderOptions {
        wrapper: &["setpriv", "--bounding-set=-net_admin", "--"],
        ..Default::default()
    });
    let module = loader.module("conntrack");
    assert_eq!(module["state"], "running", "{module:#}");
    let warning = module["last_error"].as_str().unwrap_or_default();
    assert!(warning.contains("destroyed entries leave only by LRU eviction"), "{module:#}");
}
