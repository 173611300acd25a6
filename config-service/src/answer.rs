//! Deciding what a client lacks. Pure: no I/O, no clock reads, so every rule is unit-tested.
//!
//! Rules: roots newer than the client's `root_version`, oldest first; the targets document
//! when the client's `targets_version` differs (or when it receives new roots, so it can
//! re-check the targets against them); the files of its products that it has not cached
//! with the same sha256; and nothing at all in the steady state.

use std::collections::{HashMap, HashSet};

/// One target as the served targets document describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedTarget {
    pub path: String,
    /// Lower-case hex sha256 from the targets document (not recomputed from the file).
    pub sha256: String,
}

/// What the service currently serves, reduced to what the decision needs.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Root versions available, ascending.
    pub root_versions: Vec<u64>,
    pub targets_version: u64,
    pub targets: Vec<ServedTarget>,
}

/// What the client says it holds (borrowed from its request).
#[derive(Debug, Clone, Default)]
pub struct ClientHolds<'r> {
    pub root_version: u64,
    pub targets_version: u64,
    pub products: &'r [String],
    /// The client's kernels (`kernel:<arch>-<release>` tags): of product BTF, only the
    /// configs whose id is one of them are the client's.
    pub kernels: Vec<&'r str>,
    /// `(path, sha256)` of every cached file.
    pub cached: Vec<(&'r str, &'r str)>,
}

/// The answer to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub roots: Vec<u64>,
    pub send_targets: bool,
    /// Paths whose content must be sent.
    pub files: Vec<String>,
    /// Paths the client must hold now.
    pub client_configs: Vec<String>,
    pub expired: bool,
}

/// The product of a config path `<org_id>/<product>/<config_id>/<name>`.
pub fn product_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    let (org, product, id, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none() && [org, product, id, name].iter().all(|p| !p.is_empty());
    well_formed.then_some(product)
}

/// Whether `path` is for one of `kernels`, or not per-kernel at all (every product but BTF).
fn for_its_kernel(path: &str, kernels: &[&str]) -> bool {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("BTF"), Some(config_id)) => kernels.contains(&config_id),
        _ => true,
    }
}

/// Decides what `client` lacks from `served`; `expired` says whether the served targets
/// have expired. Linear in the number of targets plus cached files.
pub fn plan(served: &Served, client: &ClientHolds<'_>, expired: bool) -> Plan {
    let roots: Vec<u64> = served.root_versions.iter().copied().filter(|v| *v > client.root_version).collect();
    if roots.is_empty() && client.targets_version == served.targets_version {
        return Plan { expired, ..Plan::default() };
    }
    let products: HashSet<&str> = client.products.iter().map(String::as_str).collect();
    let cached: HashMap<&str, &str> = client.cached.iter().copied().collect();
    let held: Vec<&ServedTarget> = served
        .targets
        .iter()
        .filter(|t| product_of(&t.path).is_some_and(|p| products.contains(p)))
        .filter(|t| for_its_kernel(&t.path, &client.kernels))
        .collect();
    let files = held
        .iter()
        .filter(|t| !cached.get(t.path.as_str()).is_some_and(|h| h.eq_ignore_ascii_case(&t.sha256)))
        .map(|t| t.path.clone())
        .collect();
    let client_configs = held.iter().map(|t| t.path.clone()).collect();
    Plan { roots, send_targets: true, files, client_configs, expired }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served {
            root_versions: vec![1, 2, 3],
            targets_version: 5,
            targets: vec![
                ServedTarget { path: "2/LOADER_CONFIG/a/config.json".into(), sha256: "aa".into() },
                ServedTarget { path: "2/LOADER_CONFIG/b/config.json".into(), sha256: "bb".into() },
                ServedTarget { path: "2/OTHER/c/config.json".into(), sha256: "cc".into() },
                ServedTarget { path: "not-a-config-path".into(), sha256: "dd".into() },
            ],
        }
    }

    fn client(root: u64, targets: u64) -> ClientHolds<'static> {
        static LOADER: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["LOADER_CONFIG".to_owned()]);
        ClientHolds {
            root_version: root,
            targets_version: targets,
            products: &LOADER,
            kernels: vec![],
            cached: vec![],
        }
    }

    #[test]
    fn steady_state_is_empty() {
        let plan = plan(&served(), &client(3, 5), false);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn new_client_gets_newer_roots_oldest_first_targets_and_its_products_files() {
        let plan = plan(&served(), &client(1, 0), false);
        assert_eq!(plan.roots, vec![2, 3]);
        assert!(plan.send_targets);
        let want = vec!["2/LOADER_CONFIG/a/config.json", "2/LOADER_CONFIG/b/config.json"];
        assert_eq!(plan.client_configs, want);
        assert_eq!(plan.files, want);
    }

    #[test]
    fn cached_files_with_the_same_sha256_are_not_resent() {
        let mut c = client(3, 4);
        c.cached = vec![("2/LOADER_CONFIG/a/config.json", "AA"), ("2/LOADER_CONFIG/b/config.json", "old")];
        let plan = plan(&served(), &c, false);
        assert!(plan.roots.is_empty());
        assert_eq!(plan.files, vec!["2/LOADER_CONFIG/b/config.json"]);
        assert_eq!(plan.client_configs.len(), 2);
    }

    #[test]
    fn a_different_targets_version_is_answered_even_if_higher_than_served() {
        // A client ahead of the service (e.g. a rolled-back repository) gets the served
        // targets, and its own rollback check decides.
        assert!(plan(&served(), &client(3, 9), false).send_targets);
    }

    #[test]
    fn new_roots_alone_also_send_targets_to_recheck() {
        let plan = plan(&served(), &client(2, 5), false);
        assert_eq!(plan.roots, vec![3]);
        assert!(plan.send_targets);
    }

    #[test]
    fn expired_targets_are_flagged_even_in_the_steady_state() {
        assert!(plan(&served(), &client(3, 5), true).expired);
        assert!(plan(&served(), &client(1, 0), true).expired);
        assert!(!plan(&served(), &client(1, 0), false).expired);
    }

    #[test]
    fn a_client_gets_only_its_own_kernels_btf() {
        let mut s = served();
        s.targets.push(ServedTarget { path: "2/BTF/x86_64-6.18.0/btf.json".into(), sha256: "e1".into() });
        s.targets.push(ServedTarget { path: "2/BTF/x86_64-6.1.0/btf.json".into(), sha256: "e2".into() });
        static BOTH: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["LOADER_CONFIG".to_owned(), "BTF".to_owned()]);
        let mut c = client(1, 0);
        c.products = &BOTH;
        c.kernels = vec!["x86_64-6.18.0"];
        let got = plan(&s, &c, false);
        assert!(got.files.contains(&"2/BTF/x86_64-6.18.0/btf.json".to_string()), "{got:?}");
        assert!(!got.client_configs.iter().any(|p| p.contains("6.1.0")), "not another kernel's: {got:?}");
        assert_eq!(got.files.len(), 3, "its two LOADER_CONFIG files and its BTF");
        c.kernels = vec![];
        assert!(!plan(&s, &c, false).files.iter().any(|p| p.contains("/BTF/")), "no kernel said: no BTF");
    }

    #[test]
    fn products_come_from_the_second_path_segment() {
        assert_eq!(product_of("2/LOADER_CONFIG/a/config.json"), Some("LOADER_CONFIG"));
        assert_eq!(product_of("2/LOADER_CONFIG/a"), None);
        assert_eq!(product_of("2//a/b"), None);
        assert_eq!(product_of("2/P/a/b/c"), None);
        assert_eq!(product_of("x"), None);
    }
}
