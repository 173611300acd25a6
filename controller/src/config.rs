//! Configuration: defaults, then a TOML file, then `CONTROLLER_*` environment variables
//! (nested keys joined with `__`), then command-line flags, each layer overriding the last.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Development only: allow running as uid 0 or holding capabilities.
    pub allow_root: bool,
    /// Install the controller's own seccomp filter (turn off only to debug).
    pub seccomp: bool,
    pub remote_config: RemoteConfig,
    /// `[loader]`: where verified configs of the loader's products are pushed.
    #[serde(default)]
    pub loader: LoaderLink,
    /// `[metrics]`: the Prometheus listener.
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
}

/// The `[loader]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderLink {
    /// The loader's API socket. Empty: configs are verified and held but pushed nowhere.
    pub socket: PathBuf,
}

impl Default for LoaderLink {
    fn default() -> Self {
        Self { socket: PathBuf::from("/run/ebpf-loader/loader.sock") }
    }
}

impl LoaderLink {
    pub fn socket(&self) -> Option<&Path> {
        (!self.socket.as_os_str().is_empty()).then_some(self.socket.as_path())
    }
}

/// The `[remote_config]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    pub endpoint: String,
    /// Development only: accept a plaintext `http://` endpoint (still only to a loopback
    /// address). Off by default, so a production config must use `https://`.
    pub plaintext_for_development: bool,
    pub token_file: PathBuf,
    /// PEM CA bundle for TLS; empty: the system roots.
    pub ca_file: PathBuf,
    /// The pinned initial root.json. Required: trust must start somewhere explicit.
    pub root_file: PathBuf,
    /// Empty: a random id persisted in the state directory.
    pub client_id: String,
    pub products: Vec<String>,
    pub poll_interval_secs: u64,
    pub max_backoff_secs: u64,
    pub clock_skew_secs: u64,
    pub max_message_bytes: usize,
    /// The largest BTF (decompressed) this node takes from a `BTF` config; its signed
    /// length is checked against it before it is decoded.
    pub max_btf_bytes: u64,
    pub store_lock_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/ebpf-controller"),
            allow_root: false,
            seccomp: true,
            loader: LoaderLink::default(),
            metrics: Default::default(),
            remote_config: RemoteConfig {
                endpoint: "https://127.0.0.1:7443".into(),
                plaintext_for_development: false,
                token_file: PathBuf::from("/run/secrets/remote-config-token"),
                ca_file: PathBuf::new(),
                root_file: PathBuf::new(),
                client_id: String::new(),
                products: trust::products::ALL.map(String::from).to_vec(),
                poll_interval_secs: 5,
                max_backoff_secs: 90,
                clock_skew_secs: 60,
                max_message_bytes: 16 * 1024 * 1024,
                max_btf_bytes: 16 * 1024 * 1024,
                store_lock_timeout_secs: 5,
            },
        }
    }
}

/// Flag values; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "RemoteOverrides::is_empty")]
    pub remote_config: RemoteOverrides,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RemoteOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext_for_development: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_secs: Option<u64>,
}

impl RemoteOverrides {
    fn is_empty(&self) -> bool {
        self.endpoint.is_none()
            && self.plaintext_for_development.is_none()
            && self.token_file.is_none()
            && self.root_file.is_none()
            && self.poll_interval_secs.is_none()
    }
}

/// A configuration that cannot be used, and which key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("remote_config.root_file is required: pin the repository's initial root.json")]
    NoRootFile,
    #[error("remote_config.{key} must be at least {min}")]
    TooSmall { key: &'static str, min: u64 },
    #[error("remote_config.products must list at least one product")]
    NoProducts,
    #[error(
        "remote_config.products: {product:?} is not a product this agent consumes (known: {known}); remove it from the list"
    )]
    UnknownProduct { product: String, known: String },
}

impl Config {
    /// Merges the layers (see the module docs) and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(
                Env::prefixed("CONTROLLER_")
                    .split("__")
                    .filter(|key| is_config_key(&key.as_str().to_ascii_lowercase())),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rc = &self.remote_config;
        if rc.root_file.as_os_str().is_empty() {
            return Err(ConfigError::NoRootFile);
        }
        if rc.products.is_empty() {
            return Err(ConfigError::NoProducts);
        }
        if let Some(product) = rc.products.iter().find(|p| !trust::products::Payload::is_known(p)) {
            return Err(ConfigError::UnknownProduct {
                product: product.clone(),
                known: trust::products::ALL.join(", "),
            });
        }
        for (key, value, min) in [
            ("poll_interval_secs", rc.poll_interval_secs, 1),
            ("max_backoff_secs", rc.max_backoff_secs, 1),
            ("max_message_bytes", rc.max_message_bytes as u64, 1024),
        ] {
            if value < min {
                return Err(ConfigError::TooSmall { key, min });
            }
        }
        Ok(())
    }
}

/// Only environment variables naming our keys are read, so unrelated `CONTROLLER_*`
/// variables in a pod spec do not trip the unknown-key check meant for typos in files.
fn is_config_key(key: &str) -> bool {
    key == "state_dir"
        || key == "allow_root"
        || key == "seccomp"
        || key.starts_with("remote_config")
        || key.starts_with("loader")
        || key.starts_with("metrics")
}

impl RemoteConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }

    pub fn ca_file(&self) -> Option<PathBuf> {
        (!self.ca_file.as_os_str().is_empty()).then(|| self.ca_file.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::result_large_err)]
    use super::*;

    #[test]
    fn layers_file_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "state_dir = \"/s\"\n[remote_config]\nroot_file = \"/r.json\"\nendpoint = \"http://127.0.0.1:1\"\npoll_interval_secs = 9\n",
            )?;
            jail.set_env("CONTROLLER_REMOTE_CONFIG__ENDPOINT", "http://127.0.0.1:2");
            jail.set_env("CONTROLLER_REMOTE_CONFIG__MAX_BACKOFF_SECS", "30");
            let flags = Overrides {
                remote_config: RemoteOverrides { poll_interval_secs: Some(2), ..Default::default() },
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("c.toml")), &flags).unwrap();
            assert_eq!(c.state_dir, PathBuf::from("/s"));
            assert_eq!(c.remote_config.endpoint, "http://127.0.0.1:2", "env beats file");
            assert_eq!(c.remote_config.max_backoff_secs, 30);
            assert_eq!(c.remote_config.poll_interval_secs, 2, "flags beat file");
            assert_eq!(c.remote_config.clock_skew_secs, 60, "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn root_file_is_required_and_unknown_keys_refused() {
        figment::Jail::expect_with(|jail| {
            assert!(matches!(Config::load(None, &Overrides::default()), Err(ConfigError::NoRootFile)));
            jail.create_file("c.toml", "[remote_config]\nroot_file = \"/r\"\npoll_intervall_secs = 3\n")?;
            assert!(Config::load(Some(Path::new("c.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn products_are_the_loaders_and_an_unknown_one_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("ok.toml", "[remote_config]\nroot_file = \"/r\"\n")?;
            let c = Config::load(Some(Path::new("ok.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.remote_config.products, trust::products::ALL.map(String::from).to_vec());
            jail.create_file(
                "retired.toml",
                "[remote_config]\nroot_file = \"/r\"\nproducts = [\"CONNTRACK\", \"LOADER_CONFIG\"]\n",
            )?;
            let err = Config::load(Some(Path::new("retired.toml")), &Overrides::default()).unwrap_err();
            assert!(
                matches!(&err, ConfigError::UnknownProduct { product, .. } if product == "LOADER_CONFIG")
            );
            let known = format!("known: {}", trust::products::ALL.join(", "));
            assert!(err.to_string().contains(&known), "{err}");
            Ok(())
        });
    }
}
