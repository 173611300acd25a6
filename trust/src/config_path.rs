//! The shape of a remote-config path: `<org_id>/<product>/<config_id>/<name>`.

use crate::VerifyError;

/// A parsed config path. Parsing refuses anything that could escape a directory or be
/// ambiguous, so the product and config id can be used as keys without further checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub org_id: String,
    pub product: String,
    pub config_id: String,
    pub name: String,
}

impl ConfigPath {
    /// Parses `path`, which must have exactly four non-empty segments of safe characters.
    pub fn parse(path: &str) -> Result<Self, VerifyError> {
        let bad = || VerifyError::BadConfigPath { path: path.to_owned() };
        let segments: Vec<&str> = path.split('/').collect();
        let [org_id, product, config_id, name] = segments.as_slice() else {
            return Err(bad());
        };
        if !org_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        if ![org_id, product, config_id, name].iter().all(|s| is_safe_segment(s)) {
            return Err(bad());
        }
        Ok(Self {
            org_id: (*org_id).to_owned(),
            product: (*product).to_owned(),
            config_id: (*config_id).to_owned(),
            name: (*name).to_owned(),
        })
    }
}

/// A segment is non-empty, not `.`/`..`, and made of `[A-Za-z0-9._-]`.
fn is_safe_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_four_segments() {
        let p = ConfigPath::parse("2/LOADER_CONFIG/cfg-1/config.json").unwrap();
        assert_eq!(p.org_id, "2");
        assert_eq!(p.product, "LOADER_CONFIG");
        assert_eq!(p.config_id, "cfg-1");
        assert_eq!(p.name, "config.json");
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "",
            "2/LOADER_CONFIG/cfg1",
            "2/LOADER_CONFIG/cfg1/a/b",
            "x/LOADER_CONFIG/cfg1/config.json",
            "2/../cfg1/config.json",
            "2/LOADER_CONFIG//config.json",
            "/2/LOADER_CONFIG/cfg1",
            "2/LOADER CONFIG/cfg1/config.json",
        ] {
            assert!(ConfigPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
