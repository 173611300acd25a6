//! Why an update was rejected. Every variant names the document or path at fault.

/// A rejected update. The previous trusted state is kept whenever one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the pinned root is not valid TUF root JSON: {reason}")]
    PinnedRootParse { reason: String },
    #[error("root document #{index} in the response is not valid TUF root JSON: {reason}")]
    RootParse { index: usize, reason: String },
    #[error(
        "root version {found} does not follow the trusted root version {trusted}: roots must arrive in order, one version at a time"
    )]
    RootVersionGap { trusted: u64, found: u64 },
    #[error(
        "root version {version} is not signed by a threshold of the previous root's (v{previous}) root keys: {reason}"
    )]
    RootNotSignedByPrevious { version: u64, previous: u64, reason: String },
    #[error("root version {version} is not signed by a threshold of its own root keys: {reason}")]
    RootNotSelfSigned { version: u64, reason: String },
    #[error("the trusted root version {version} expired at {expires}; the service must publish a new root")]
    RootExpired { version: u64, expires: String },
    #[error("the targets document is not valid TUF targets JSON: {reason}")]
    TargetsParse { reason: String },
    #[error(
        "targets version {version} is not signed by a threshold of the targets keys of root v{root_version}: {reason}"
    )]
    TargetsSignature { version: u64, root_version: u64, reason: String },
    #[error("targets version {version} expired at {expires}; the service must re-sign its targets")]
    TargetsExpired { version: u64, expires: String },
    #[error("targets version {offered} is older than the trusted version {trusted}: rollback refused")]
    TargetsRollback { trusted: u64, offered: u64 },
    #[error("targets version {version} differs from the trusted document of the same version: refused")]
    TargetsVersionReused { version: u64 },
    #[error(
        "the trusted targets (v{version}) are not signed by the new root v{root_version}'s targets keys and the response carries no re-signed targets"
    )]
    TargetsNotResigned { version: u64, root_version: u64 },
    #[error("the response lists configs but no targets document has ever been received")]
    NoTargets,
    #[error("config path {path:?} does not have the shape <org_id>/<product>/<config_id>/<name>")]
    BadConfigPath { path: String },
    #[error("config {path} is not listed in the signed targets")]
    UnknownTarget { path: String },
    #[error("config {path} has no file in the response and no matching cached copy")]
    MissingFile { path: String },
    #[error("config {path} is {actual} bytes long, the signed targets say {expected}")]
    WrongLength { path: String, expected: u64, actual: u64 },
    #[error("config {path}: {algorithm} hash mismatch with the signed targets")]
    WrongHash { path: String, algorithm: String },
    #[error(
        "config {path}: the signed targets use hash algorithm {algorithm:?}, which this client cannot check"
    )]
    UnsupportedHash { path: String, algorithm: String },
    #[error("config {path}: the signed targets lack an integer custom.v (the config version)")]
    MissingVersion { path: String },
}

impl VerifyError {
    /// Every value [`Self::reason`] returns.
    pub const REASONS: [&'static str; 12] = [
        "root_parse",
        "root_version_gap",
        "root_signature",
        "root_expired",
        "targets_parse",
        "targets_signature",
        "targets_expired",
        "targets_rollback",
        "missing_target",
        "bad_config_path",
        "config_hash",
        "missing_version",
    ];

    /// A short, stable name of the failure (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PinnedRootParse { .. } | Self::RootParse { .. } => "root_parse",
            Self::RootVersionGap { .. } => "root_version_gap",
            Self::RootNotSignedByPrevious { .. } | Self::RootNotSelfSigned { .. } => "root_signature",
            Self::RootExpired { .. } => "root_expired",
            Self::TargetsParse { .. } => "targets_parse",
            Self::TargetsSignature { .. } | Self::TargetsNotResigned { .. } => "targets_signature",
            Self::TargetsExpired { .. } => "targets_expired",
            Self::TargetsRollback { .. } | Self::TargetsVersionReused { .. } => "targets_rollback",
            Self::NoTargets | Self::UnknownTarget { .. } | Self::MissingFile { .. } => "missing_target",
            Self::BadConfigPath { .. } => "bad_config_path",
            Self::WrongLength { .. } | Self::WrongHash { .. } | Self::UnsupportedHash { .. } => "config_hash",
            Self::MissingVersion { .. } => "missing_version",
        }
    }
}
