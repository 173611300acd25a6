//! What a new configuration changes, key by key, and whether that needs a new object.
use serde::Serialize;

/// The top-level keys whose values differ between `old` and `new` (both serialised the
/// same way), sorted. Every key differs when there is no `old`.
pub fn changed_keys<C: Serialize>(old: Option<&C>, new: &C) -> Vec<String> {
    let (old, new) = (old.map(to_object), to_object(new));
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(key, value)| old.as_ref().and_then(|o| o.get(*key)) != Some(*value))
        .map(|(key, _)| key.clone())
        .collect();
    keys.sort();
    keys
}

fn to_object<C: Serialize>(config: &C) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map,
        // A configuration section always serialises to an object.
        _ => serde_json::Map::new(),
    }
}

/// Whether every changed key is one of `in_place` (applied without a new object).
pub fn all_in_place(changed: &[String], in_place: &[&str]) -> bool {
    changed.iter().all(|key| in_place.contains(&key.as_str()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;
    use crate::conntrack::ConntrackConfig;

    #[test]
    fn lists_exactly_the_keys_that_differ() {
        let old = ConntrackConfig::default();
        let new = ConntrackConfig { max_entries: 4096, sweep_interval_secs: 5, ..old.clone() };
        assert_eq!(changed_keys(Some(&old), &new), vec!["max_entries", "sweep_interval_secs"]);
        assert!(changed_keys(Some(&old), &old).is_empty());
        assert!(changed_keys(None, &old).contains(&"enabled".to_string()));
    }

    #[test]
    fn a_constant_change_is_not_in_place() {
        let in_place = ["sweep_interval_secs", "destroy_events"];
        assert!(all_in_place(&["destroy_events".into()], &in_place));
        assert!(!all_in_place(&["destroy_events".into(), "max_entries".into()], &in_place));
    }
}
