//! TLS to the service: the controller verifies the service's certificate against the
//! configured CA bundle. Certificates are made with the `openssl` CLI in a temp directory;
//! the service is the in-test gRPC peer on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::process::{Controller, Workspace};
use support::repo::{File, Repo};
use support::service::{Published, TestService};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA named `name` (name.pem/name.key) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (pem, key, subj) = (format!("{name}.pem"), format!("{name}.key"), format!("/CN={name}"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ]
        .into_iter()
        .chain(["-keyout", &key, "-out", &pem, "-subj", &subj])
        .collect::<Vec<_>>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_configured_ca_and_refusal_of_an_unknown_one() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=config-service",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "srv.pem",
        ],
    );

    let repo = Repo::new();
    let service = TestService::default();
    service.publish(Published {
        roots: vec![repo.root_v1.clone()],
        targets: repo.targets(1, &[File { path: "2/CONNTRACK/c/config.json", raw: b"{}", v: Some(1) }]),
        targets_version: 1,
        files: vec![("2/CONNTRACK/c/config.json".into(), b"{}".to_vec())],
    });
    let addr = service
        .clone()
        .start_tls(std::fs::read(dir.join("srv.pem")).unwrap(), std::fs::read(dir.join("srv.key")).unwrap())
        .await;
    let endpoint = format!("https://{addr}");

    let ws = Workspace::new(&repo.root_v1, "tls-token");
    ws.write("ca.pem", &std::fs::read(dir.join("ca.pem")).unwrap());
    ws.write("other-ca.pem", &std::fs::read(dir.join("other-ca.pem")).unwrap());
    let config = ws.config(&endpoint, 1);
    let ca = ws.path("ca.pem");
    let trusted = Controller::start_with_env(
        &ws,
        &config,
        &[("CONTROLLER_REMOTE_CONFIG__CA_FILE", ca.to_str().unwrap())],
    );
    let status = ws.wait_status(Duration::from_secs(15), |s| s.targets_version == 1).await;
    assert_eq!(status.configs.len(), 1);
    assert_eq!(service.seen()[0].authorization.as_deref(), Some("Bearer tls-token"));
    trusted.stop();

    // A CA that did not sign the service's certificate: no request reaches the service.
    let calls = service.seen().len();
    std::fs::remove_file(ws.state_dir().join("status.json")).unwrap();
    let other = ws.path("other-ca.pem");
    let _untrusted = Controller::start_with_env(
        &ws,
        &config,
        &[("CONTROLLER_REMOTE_CONFIG__CA_FILE", other.to_str().unwrap())],
    );
    let status = ws.wait_status(Duration::from_secs(15), |s| s.polls_failed >= 2).await;
    assert_eq!(service.seen().len(), calls, "a request got through with an untrusted certificate");
    let error = status.last_error.unwrap();
    assert!(error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"), "{error}");
}
