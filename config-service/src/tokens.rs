//! Bearer tokens: a `name:token` file, re-read whenever it changes, compared in constant
//! time. Only the name of the matching entry ever leaves this module (for logs).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use subtle::ConstantTimeEq;

/// Errors from reading the tokens file. They never contain token text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read tokens file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("tokens file {path} line {line}: expected `name:token` with both parts non-empty")]
    Malformed { path: PathBuf, line: usize },
    #[error("tokens file {path} has no tokens: every client would be refused")]
    Empty { path: PathBuf },
}

/// One allowed token and the name it is logged under.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    token: Vec<u8>,
}

/// Parses the file's text: one `name:token` per line; blank lines and `#` comments skipped.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, TokenError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || TokenError::Malformed { path: path.to_owned(), line: index + 1 };
        let (name, token) = line.split_once(':').ok_or_else(malformed)?;
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() || token.is_empty() {
            return Err(malformed());
        }
        entries.push(Entry { name: name.to_owned(), token: token.as_bytes().to_vec() });
    }
    if entries.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    Ok(entries)
}

/// The name of the entry whose token equals `presented`. Every entry is compared, in
/// constant time for equal lengths, so timing reveals neither which entry matched nor how
/// much of a token was right.
pub fn lookup<'e>(entries: &'e [Entry], presented: &[u8]) -> Option<&'e str> {
    let mut found = None;
    for entry in entries {
        if bool::from(entry.token.ct_eq(presented)) {
            found = Some(entry.name.as_str());
        }
    }
    found
}

/// Identity of one version of the file: a rewrite or a rename changes it.
type Fingerprint = (u64, u64, i64, i64, u64);

fn fingerprint(meta: &fs::Metadata) -> Fingerprint {
    (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len())
}

/// The tokens file, cached until it changes on disk.
pub struct TokenStore {
    path: PathBuf,
    cache: Mutex<Option<(Fingerprint, Vec<Entry>)>>,
}

impl TokenStore {
    /// Opens and checks the file now, so `serve` fails at start on a bad tokens file.
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let store = Self { path: path.to_owned(), cache: Mutex::new(None) };
        store.current()?;
        Ok(store)
    }

    /// The name of the client presenting `token`, re-reading the file if it changed.
    pub fn authenticate(&self, token: &[u8]) -> Result<Option<String>, TokenError> {
        let entries = self.current()?;
        Ok(lookup(&entries, token).map(str::to_owned))
    }

    fn current(&self) -> Result<Vec<Entry>, TokenError> {
        let read_err =
            |e: std::io::Error| TokenError::Read { path: self.path.clone(), reason: e.to_string() };
        let meta = fs::metadata(&self.path).map_err(read_err)?;
        let print = fingerprint(&meta);
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, entries)) = cache.as_ref()
            && *cached == print
        {
            return Ok(entries.clone());
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %self.path.display(), "tokens file is readable by group or others; chmod 600 it");
        }
        let entries = parse(&self.path, &fs::read_to_string(&self.path).map_err(read_err)?)?;
        tracing::info!(path = %self.path.display(), tokens = entries.len(), "tokens file loaded");
        *cache = Some((print, entries.clone()));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_skips_comments() {
        let entries = parse(Path::new("t"), "# c\n\nalpha:s3cret\n beta : other \n").unwrap();
        assert_eq!(lookup(&entries, b"s3cret"), Some("alpha"));
        assert_eq!(lookup(&entries, b"other"), Some("beta"));
        assert_eq!(lookup(&entries, b"s3cre"), None);
        assert_eq!(lookup(&entries, b""), None);
    }

    #[test]
    fn malformed_lines_name_the_line_but_not_the_token() {
        let err = parse(Path::new("t"), "ok:a\nsupersecret\n").err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("supersecret"), "{err}");
        assert!(parse(Path::new("t"), "name:\n").is_err());
        assert!(parse(Path::new("t"), "# only comments\n").is_err());
    }

    #[test]
    fn a_rewritten_file_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "a:one\n").unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(store.authenticate(b"one").unwrap().as_deref(), Some("a"));
        let tmp = dir.path().join("tokens.new");
        fs::write(&tmp, "b:two\n").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(store.authenticate(b"one").unwrap(), None);
        assert_eq!(store.authenticate(b"two").unwrap().as_deref(), Some("b"));
    }
}
