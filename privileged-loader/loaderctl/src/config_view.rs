//! `loaderctl config`: the loader's effective configuration with each value's source, and
//! every remote config it applied or refused.
use serde_json::{Value, json};
use shared_proto::loader::v1 as pb;

fn state_name(state: i32) -> &'static str {
    match pb::ConfigApplyState::try_from(state) {
        Ok(pb::ConfigApplyState::Applied) => "applied",
        Ok(pb::ConfigApplyState::Error) => "error",
        _ => "unknown",
    }
}

fn source_text(v: &pb::ConfigValue) -> String {
    match v.source.as_str() {
        "remote" => format!("remote {} v{}", v.path, v.version),
        other => other.to_string(),
    }
}

pub fn json(c: &pb::GetConfigResponse) -> Value {
    let values: serde_json::Map<String, Value> = c
        .values
        .iter()
        .map(|v| {
            let value: Value = serde_json::from_str(&v.value).unwrap_or(Value::String(v.value.clone()));
            (v.key.clone(), json!({"value": value, "source": v.source, "path": v.path, "version": v.version}))
        })
        .collect();
    let remote: Vec<Value> = c
        .remote_configs
        .iter()
        .map(|r| {
            json!({"path": r.path, "product": r.product, "version": r.version, "sha256": r.sha256,
                   "state": state_name(r.state), "error": r.error, "at_unix_ms": r.at_unix_ms})
        })
        .collect();
    json!({"instance": c.instance, "remote_config_enabled": c.remote_config_enabled,
           "targets_version": c.targets_version, "values": values, "remote_configs": remote})
}

pub fn text(c: &pb::GetConfigResponse) -> String {
    let mut out = format!(
        "remote config: {} (targets version {})\n\n{:<32} {:<28} SOURCE\n",
        if c.remote_config_enabled { "enabled" } else { "off (no remote_config.root_file)" },
        c.targets_version,
        "KEY",
        "VALUE"
    );
    for v in &c.values {
        out += &format!("{:<32} {:<28} {}\n", v.key, v.value, source_text(v));
    }
    if !c.remote_configs.is_empty() {
        out += "\nREMOTE CONFIGS\n";
    }
    for r in &c.remote_configs {
        out += &format!(
            "{} v{} {} at {} ms {}\n",
            r.path,
            r.version,
            state_name(r.state),
            r.at_unix_ms,
            r.error
        );
    }
    out
}
