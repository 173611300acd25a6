//! `ApplyConfig` and `GetConfig`: the remote-config RPCs, between the wire and
//! [`crate::remote_config::RemoteConfigs`].
use std::time::{SystemTime, UNIX_EPOCH};

use shared_proto::loader::v1 as pb;
use tonic::Status;

use crate::remote_config::proof::Proof;
use crate::remote_config::{ApplyError, ConfigRecord, RecordState, RemoteConfigs, Snapshot, Source};

pub async fn apply(
    configs: &RemoteConfigs,
    request: pb::ApplyConfigRequest,
) -> Result<pb::ApplyConfigResponse, Status> {
    let proof = Proof {
        roots: request.roots.iter().map(Vec::as_slice).collect(),
        targets: &request.targets,
        configs: request.configs.iter().map(|c| (c.path.as_str(), c.raw.as_slice())).collect(),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let outcome = configs.apply(&request.products, &proof, now).await.map_err(|err| {
        tracing::warn!(%err, "ApplyConfig refused");
        match err {
            ApplyError::NoRoot | ApplyError::BadRoot(_) => Status::failed_precondition(err.to_string()),
            _ => Status::invalid_argument(err.to_string()),
        }
    })?;
    Ok(pb::ApplyConfigResponse {
        results: outcome.results.iter().map(result).collect(),
        targets_version: outcome.targets_version,
    })
}

fn state(s: RecordState) -> pb::ConfigApplyState {
    match s {
        RecordState::Applied => pb::ConfigApplyState::Applied,
        RecordState::Error => pb::ConfigApplyState::Error,
    }
}

fn result(r: &ConfigRecord) -> pb::ConfigResult {
    pb::ConfigResult {
        path: r.path.clone(),
        version: r.version,
        state: state(r.state).into(),
        error: r.error.clone(),
    }
}

pub fn config(snapshot: &Snapshot, instance: &str) -> pb::GetConfigResponse {
    let values = snapshot
        .effective
        .sources
        .iter()
        .map(|(key, (value, source))| {
            let (source, path, version) = match source {
                Source::File => ("file", String::new(), 0),
                Source::Remote { path, version } => ("remote", path.clone(), *version),
            };
            pb::ConfigValue {
                key: key.to_string(),
                value: value.clone(),
                source: source.into(),
                path,
                version,
            }
        })
        .collect();
    let records = snapshot
        .records
        .iter()
        .map(|r| pb::RemoteConfigRecord {
            path: r.path.clone(),
            product: r.product.clone(),
            version: r.version,
            sha256: r.sha256.clone(),
            state: state(r.state).into(),
            error: r.error.clone(),
            at_unix_ms: r.at_unix_ms,
        })
        .collect();
    pb::GetConfigResponse {
        instance: instance.to_string(),
        remote_config_enabled: snapshot.enabled,
        targets_version: snapshot.targets_version,
        values,
        remote_configs: records,
    }
}
