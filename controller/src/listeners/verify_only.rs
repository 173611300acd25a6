//! The listener of a controller run without a loader (`[loader] socket` empty): verify-only
//! mode, for trying a service's publishing and for testing the poll loop on its own. A
//! config that passed TUF verification is checked against its product's schema — the same
//! check the loader makes first — and acknowledged when it fits, with nothing applied
//! anywhere; the start-up log and `docs/controller.md` say so.

use tracing::{info, warn};

use super::{Listener, Report};
use trust::products::Payload;
use trust::{ApplyState, ConfigEntry};

pub struct VerifyOnlyListener {
    product: String,
}

impl VerifyOnlyListener {
    pub fn new(product: &str) -> Self {
        Self { product: product.to_owned() }
    }
}

impl Listener for VerifyOnlyListener {
    fn on_update(&mut self, configs: &[ConfigEntry], report: &mut Report<'_>) {
        info!(product = %self.product, configs = configs.len(), "product configs changed (verify-only: no loader)");
        for config in configs {
            match Payload::parse(&self.product, &config.raw) {
                Ok(_) => {
                    info!(path = %config.path, version = config.version, "config verified and schema-checked");
                    report(&config.path, ApplyState::Acknowledged, String::new());
                }
                Err(e) => {
                    warn!(path = %config.path, version = config.version, error = %e, "config refused");
                    report(&config.path, ApplyState::Error, e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::{BTreeSet, HashMap};

    use super::super::Listeners;
    use trust::{Applied, ApplyState, ExpiryCheck, TrustedState, Update, apply_update};

    #[test]
    fn a_payload_that_fits_its_schema_is_acknowledged_anything_else_is_an_error() {
        let (good, bad, junk) =
            ("2/CONNTRACK/good/config.json", "2/CONNTRACK/bad/config.json", "2/CONNTRACK/junk/config.json");
        let (good_raw, bad_raw, junk_raw) = (&b"{\"max_entries\":4096}"[..], &b"{\"a\":1}"[..], &b"nope"[..]);
        let repo = trust::test_repo::Repo::new();
        let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
        let t = repo.targets(
            1,
            &[
                trust::test_repo::File { path: good, raw: good_raw, v: Some(1) },
                trust::test_repo::File { path: bad, raw: bad_raw, v: Some(1) },
                trust::test_repo::File { path: junk, raw: junk_raw, v: Some(1) },
            ],
        );
        let update = Update {
            roots: vec![],
            targets: &t,
            target_files: HashMap::from([(good, good_raw), (bad, bad_raw), (junk, junk_raw)]),
            client_configs: vec![good, bad, junk],
        };
        let Applied::Changed { mut state, changed_products } =
            apply_update(&pinned, &update, ExpiryCheck::Skip).unwrap()
        else {
            panic!("expected a change")
        };
        let mut listeners = Listeners::verify_only_for(&["CONNTRACK".to_owned()]);
        listeners.notify(&mut state, &changed_products);
        assert_eq!(state.configs()[good].apply_state, ApplyState::Acknowledged);
        for (path, says) in [(bad, "unknown field `a`"), (junk, "does not fit its schema")] {
            let rejected = &state.configs()[path];
            assert_eq!(rejected.apply_state, ApplyState::Error, "{path}");
            assert!(rejected.apply_error.contains(says), "{path}: {}", rejected.apply_error);
        }

        // A product without a listener is left alone.
        let mut none = Listeners::verify_only_for(&[]);
        let mut untouched = state.clone();
        untouched.set_apply_state(good, ApplyState::Unacknowledged, String::new());
        none.notify(&mut untouched, &BTreeSet::from(["CONNTRACK".to_owned()]));
        assert_eq!(untouched.configs()[good].apply_state, ApplyState::Unacknowledged);
    }
}
