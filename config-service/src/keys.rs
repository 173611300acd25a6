//! Signing keys: ed25519 key pairs stored as PKCS#8 PEM files with mode 0600.
//!
//! A key file carries no role: which role a key signs for is decided by the newest root,
//! which lists key ids per role. That way a rotation only adds a file and never renames
//! one, and a key left over from an older root simply stops being used.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use tough::schema::decoded::{Decoded, Hex};
use tough::sign::Sign;

/// PEM tag of a PKCS#8 private key.
const PEM_TAG: &str = "PRIVATE KEY";

/// Errors from creating, reading or checking key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an ed25519 key: the system random source failed")]
    Generate,
    #[error(
        "key file {path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}` \
         and check that nobody else copied it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not a PEM-encoded PKCS#8 ed25519 private key: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot compute the TUF key id of {path}: {reason}")]
    KeyId { path: PathBuf, reason: String },
}

/// A loaded signing key with its TUF key id.
pub struct SigningKey {
    pub key_id: Decoded<Hex>,
    pub pair: Box<dyn Sign>,
    pub path: PathBuf,
}

/// Creates a new ed25519 key in `path` (mode 0600, never overwriting) and loads it.
pub fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pem_text = pem::encode(&pem::Pem::new(PEM_TAG, pkcs8.as_ref().to_vec()));
    let write_err = |source| KeyError::Write { path: path.to_owned(), source };
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write_err)?;
    file.write_all(pem_text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    load(path)
}

/// Loads one key file, refusing files that group or others can access. The mode is read
/// from the opened file itself, so it is the mode of the bytes that are then read.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let read_err = |source| KeyError::Read { path: path.to_owned(), source };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
    check_mode(path, mode)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(read_err)?;
    let parse_err = |reason: String| KeyError::Parse { path: path.to_owned(), reason };
    let block = pem::parse(&text).map_err(|e| parse_err(e.to_string()))?;
    if block.tag() != PEM_TAG {
        return Err(parse_err(format!("PEM tag is {:?}, expected {PEM_TAG:?}", block.tag())));
    }
    let pair = Ed25519KeyPair::from_pkcs8(block.contents())
        .map_err(|e| parse_err(format!("not an ed25519 PKCS#8 v2 key ({e})")))?;
    let key_id = pair
        .tuf_key()
        .key_id()
        .map_err(|e| KeyError::KeyId { path: path.to_owned(), reason: e.to_string() })?;
    Ok(SigningKey { key_id, pair: Box::new(pair), path: path.to_owned() })
}

/// Loads every `*.pem` key in `dir`, indexed by key id.
pub fn load_dir(dir: &Path) -> Result<HashMap<Decoded<Hex>, SigningKey>, KeyError> {
    let read_err = |source| KeyError::Read { path: dir.to_owned(), source };
    let mut keys = HashMap::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|ext| ext == "pem") {
            let key = load(&path)?;
            keys.insert(key.key_id.clone(), key);
        }
    }
    Ok(keys)
}

/// A private key readable by anyone but its owner is a leaked key: refuse it.
fn check_mode(path: &Path, mode: u32) -> Result<(), KeyError> {
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_other_access_is_refused() {
        let path = Path::new("/k.pem");
        assert!(check_mode(path, 0o600).is_ok());
        assert!(check_mode(path, 0o400).is_ok());
        assert!(check_mode(path, 0o640).is_err());
        assert!(check_mode(path, 0o604).is_err());
        assert!(check_mode(path, 0o610).is_err());
    }

    #[test]
    fn generated_key_is_0600_and_reloads_with_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-v1.pem");
        let key = generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().key_id, key.key_id);
        assert!(generate(&path).is_err(), "an existing key must never be overwritten");
    }

    #[test]
    fn readable_key_file_is_refused_with_the_path_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets-v1.pem");
        generate(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(err.contains("targets-v1.pem") && err.contains("chmod 600"), "{err}");
    }
}
