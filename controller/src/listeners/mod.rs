//! Product listeners: the consumers of verified configs, one per product.
//!
//! A listener is called only when its product's configs changed (or once at start with
//! what was loaded from disk), always with the product's full current set, and reports a
//! verdict per config through the callback. Verdicts become the apply states the next
//! request reports to the service.

mod verify_only;

use std::collections::{BTreeMap, BTreeSet};

pub use verify_only::VerifyOnlyListener;

use trust::{ApplyState, ConfigEntry, TrustedState};

/// A listener's verdict on one config, by path.
pub type Report<'a> = dyn FnMut(&str, ApplyState, String) + 'a;

/// A consumer of one product's configs.
pub trait Listener: Send + Sync {
    /// `configs` is everything the product now holds (empty: all were removed).
    fn on_update(&mut self, configs: &[ConfigEntry], report: &mut Report<'_>);
}

/// The registered listeners, by product.
#[derive(Default)]
pub struct Listeners {
    by_product: BTreeMap<String, Box<dyn Listener>>,
}

impl Listeners {
    /// The verify-only listener for each product (a controller without a loader).
    pub fn verify_only_for(products: &[String]) -> Self {
        let mut listeners = Self::default();
        for product in products {
            listeners.register(product, Box::new(VerifyOnlyListener::new(product)));
        }
        listeners
    }

    pub fn register(&mut self, product: &str, listener: Box<dyn Listener>) {
        self.by_product.insert(product.to_owned(), listener);
    }

    /// Calls the listeners of `products` and records their verdicts in `state`.
    pub fn notify(&mut self, state: &mut TrustedState, products: &BTreeSet<String>) {
        for product in products {
            let Some(listener) = self.by_product.get_mut(product) else {
                continue;
            };
            let configs: Vec<ConfigEntry> = state.product_configs(product).cloned().collect();
            let mut verdicts = Vec::new();
            listener.on_update(&configs, &mut |path, apply, error| {
                verdicts.push((path.to_owned(), apply, error));
            });
            for (path, apply, error) in verdicts {
                state.set_apply_state(&path, apply, error);
            }
        }
    }

    /// Products that have a listener.
    pub fn products(&self) -> impl Iterator<Item = &String> {
        self.by_product.keys()
    }
}
