//! The built-in listener until configs are pushed to the loader: it accepts a config whose
//! content is JSON and rejects anything else with the parse error.

use tracing::{info, warn};

use super::{Listener, Report};
use trust::{ApplyState, ConfigEntry};

pub struct JsonListener {
    product: String,
}

impl JsonListener {
    pub fn new(product: &str) -> Self {
        Self { product: product.to_owned() }
    }
}

impl Listener for JsonListener {
    fn on_update(&mut self, configs: &[ConfigEntry], report: &mut Report<'_>) {
        info!(product = %self.product, configs = configs.len(), "product configs changed");
        for config in configs {
            match serde_json::from_slice::<serde_json::Value>(&config.raw) {
                Ok(_) => {
                    info!(path = %config.path, version = config.version, "config accepted");
                    report(&config.path, ApplyState::Acknowledged, String::new());
                }
                Err(e) => {
                    warn!(path = %config.path, version = config.version, error = %e, "config is not JSON; rejected");
                    report(&config.path, ApplyState::Error, format!("config is not valid JSON: {e}"));
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
    fn json_is_acknowledged_other_content_is_an_error() {
        let (good, bad) = ("2/LOADER_CONFIG/good/config.json", "2/LOADER_CONFIG/bad/config.json");
        let repo = trust::test_repo::Repo::new();
        let pinned = TrustedState::from_pinned_root(&repo.root_v1).unwrap();
        let t = repo.targets(
            1,
            &[
                trust::test_repo::File { path: good, raw: b"{\"a\":1}", v: Some(1) },
                trust::test_repo::File { path: bad, raw: b"nope", v: Some(1) },
            ],
        );
        let update = Update {
            roots: vec![],
            targets: &t,
            target_files: HashMap::from([(good, &b"{\"a\":1}"[..]), (bad, &b"nope"[..])]),
            client_configs: vec![good, bad],
        };
        let Applied::Changed { mut state, changed_products } =
            apply_update(&pinned, &update, ExpiryCheck::Skip).unwrap()
        else {
            panic!("expected a change")
        };
        let mut listeners = Listeners::json_for(&["LOADER_CONFIG".to_owned()]);
        listeners.notify(&mut state, &changed_products);
        assert_eq!(state.configs()[good].apply_state, ApplyState::Acknowledged);
        let rejected = &state.configs()[bad];
        assert_eq!(rejected.apply_state, ApplyState::Error);
        assert!(rejected.apply_error.contains("not valid JSON"), "{}", rejected.apply_error);

        // A product without a listener is left alone.
        let mut none = Listeners::json_for(&[]);
        let mut untouched = state.clone();
        untouched.set_apply_state(good, ApplyState::Unacknowledged, String::new());
        none.notify(&mut untouched, &BTreeSet::from(["LOADER_CONFIG".to_owned()]));
        assert_eq!(untouched.configs()[good].apply_state, ApplyState::Unacknowledged);
    }
}
