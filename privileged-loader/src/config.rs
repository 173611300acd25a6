//! The loader's configuration: defaults, then a TOML file, then `LOADER_*` environment
//! variables (nested keys joined with `__`, e.g. `LOADER_API__SOCKET`), then flags.
//! Every key and its default is listed in docs/configuration.md.
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::api::ApiConfig;
use crate::btf::BtfConfig;
use crate::conntrack::ConntrackConfig;
use crate::lockstats::LockStatsConfig;
use crate::remote_config::RemoteConfigSettings;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Section `[privileges]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PrivilegesConfig {
    /// Drop to `keep` once every module is loaded (turn off only to debug).
    pub drop: bool,
    /// Capabilities kept in the steady state.
    pub keep: Vec<String>,
    /// Install the loader's own seccomp filter after start-up (turn off only to debug).
    pub seccomp: bool,
}

impl Default for PrivilegesConfig {
    fn default() -> Self {
        Self {
            drop: true,
            keep: crate::privileges::STEADY_STATE.iter().map(|s| s.to_string()).collect(),
            seccomp: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub log_format: LogFormat,
    /// Read eBPF objects (`<name>.bpf.o`) from this directory instead of the embedded ones.
    pub bpf_dir: Option<PathBuf>,
    pub api: ApiConfig,
    pub btf: BtfConfig,
    pub conntrack: ConntrackConfig,
    pub lockstats: LockStatsConfig,
    pub privileges: PrivilegesConfig,
    /// `[remote_config]`: the pinned root and the local allow-list (docs/remote-config.md).
    pub remote_config: RemoteConfigSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
}

impl LoaderConfig {
    /// Builds the configuration from defaults, `file`, the environment and `overrides`
    /// (the flags given on the command line, as a partial document).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, LoaderConfigError> {
        let mut figment = Figment::from(Serialized::defaults(LoaderConfig::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(LoaderConfigError::Missing(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("LOADER_").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| LoaderConfigError::Invalid(Box::new(e)))
    }
}

#[cfg(test)]
// figment's Jail API fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("loader.toml", "bpf_dir = \"/from/file\"\n[api]\nallowed_uids = [0, 1000]\n")?;
            jail.set_env("LOADER_API__SOCKET", "/from/env.sock");
            let flags = serde_json::json!({"bpf_dir": "/from/flag"});
            let cfg = LoaderConfig::load(Some(Path::new("loader.toml")), flags).expect("valid config");
            assert_eq!(cfg.bpf_dir.as_deref(), Some(Path::new("/from/flag")));
            assert_eq!(cfg.api.socket, PathBuf::from("/from/env.sock"));
            assert_eq!(cfg.api.allowed_uids, vec![0, 1000]);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("loader.toml", "[api]\nsockt = \"/x\"\n")?;
            let err = LoaderConfig::load(Some(Path::new("loader.toml")), serde_json::json!({}))
                .expect_err("typo must be refused");
            assert!(err.to_string().contains("sockt"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = LoaderConfig::load(Some(Path::new("/nonexistent/loader.toml")), serde_json::json!({}))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/loader.toml"));
    }
}
