//! The `BTF` product: one kernel's BTF, for CO-RE on nodes whose kernel publishes none.
//!
//! Path layout `<org_id>/BTF/<arch>-<release>/<name>`: the config id is the kernel key
//! ([`kernel_key`]), so a node takes exactly the config whose id is its own key. The
//! payload is a JSON object (like every product) carrying the BTF base64-encoded, raw or
//! xz-compressed, and the identity of the kernel it was taken from, which the loader
//! checks against the running kernel.
//!
//! Decoding is bounded: base64 is checked against the limit before it is decoded, and xz
//! is decompressed through a reader that stops one byte past the limit, so a compression
//! bomb is refused after `limit` bytes, never unpacked in full.
use std::io::Read;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The product name.
pub const BTF: &str = "BTF";

/// The first two bytes of every BTF blob (`BTF_MAGIC` 0xeB9F, little-endian here).
const BTF_MAGIC_LE: [u8; 2] = [0x9f, 0xeb];
/// Length of the fixed BTF header (`struct btf_header`).
const BTF_HEADER_LEN: usize = 24;

/// How the BTF inside a payload is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BtfCompression {
    #[default]
    None,
    Xz,
}

/// `BTF`: the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtfPayload {
    /// The kernel release the BTF was taken from, as `uname -r` prints it.
    pub release: String,
    /// The machine, as `uname -m` prints it (`x86_64`, `aarch64`).
    pub arch: String,
    /// `uname -v` of that kernel (build number and date): tells two builds of one
    /// release apart. Optional: without it only release and arch are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(default)]
    pub compression: BtfCompression,
    /// The BTF (after compression), base64 (standard alphabet, padded).
    pub data: String,
}

/// Why a `BTF` payload cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfPayloadError {
    #[error(
        "BTF payload is larger than this node's limit of {limit} bytes ({what}): publish a minimized BTF (config-service publish-btf) or raise the limit"
    )]
    TooLarge { limit: u64, what: String },
    #[error("BTF payload data is not valid base64: {0}")]
    Base64(String),
    #[error("BTF payload data does not decompress as xz: {0}")]
    Xz(String),
    #[error(
        "BTF payload data is not BTF (no 0xeB9F header): publish the output of bpftool or /sys/kernel/btf/vmlinux"
    )]
    NotBtf,
}

/// The config id of a kernel's BTF: `<arch>-<release>`, e.g. `x86_64-6.18.0`.
pub fn kernel_key(arch: &str, release: &str) -> String {
    format!("{arch}-{release}")
}

impl BtfPayload {
    /// The config id this payload belongs under.
    pub fn key(&self) -> String {
        kernel_key(&self.arch, &self.release)
    }

    /// The BTF bytes, decoded and decompressed, refused as soon as they would exceed
    /// `limit` bytes (the encoded data too); checked to start with a BTF header.
    pub fn decode(&self, limit: u64) -> Result<Vec<u8>, BtfPayloadError> {
        // base64 turns 3 bytes into 4: the encoded size bounds the decoded one.
        let encoded_limit = limit.saturating_mul(4) / 3 + 4;
        if self.data.len() as u64 > encoded_limit {
            let what = format!("{} bytes of base64", self.data.len());
            return Err(BtfPayloadError::TooLarge { limit, what });
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.data.as_bytes())
            .map_err(|e| BtfPayloadError::Base64(e.to_string()))?;
        let btf = match self.compression {
            BtfCompression::None => raw,
            BtfCompression::Xz => decompress_bounded(&raw, limit)?,
        };
        if btf.len() as u64 > limit {
            return Err(BtfPayloadError::TooLarge { limit, what: format!("{} bytes of BTF", btf.len()) });
        }
        if btf.len() < BTF_HEADER_LEN || btf[..2] != BTF_MAGIC_LE {
            return Err(BtfPayloadError::NotBtf);
        }
        Ok(btf)
    }

    /// A payload for `btf` (compressed with xz when `compress`); the publisher's side.
    pub fn encode(
        release: &str,
        arch: &str,
        kernel_version: Option<String>,
        btf: &[u8],
        compress: bool,
    ) -> Result<Self, BtfPayloadError> {
        let (compression, bytes) = if compress {
            let mut out = Vec::new();
            let mut encoder = xz2::read::XzEncoder::new(btf, 9);
            encoder.read_to_end(&mut out).map_err(|e| BtfPayloadError::Xz(e.to_string()))?;
            (BtfCompression::Xz, out)
        } else {
            (BtfCompression::None, btf.to_vec())
        };
        Ok(Self {
            release: release.to_owned(),
            arch: arch.to_owned(),
            kernel_version,
            compression,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }
}

/// Decompresses `raw` (xz) into at most `limit` bytes; one byte more is a refusal, so the
/// rest of a bomb is never unpacked.
fn decompress_bounded(raw: &[u8], limit: u64) -> Result<Vec<u8>, BtfPayloadError> {
    let mut out = Vec::new();
    xz2::read::XzDecoder::new(raw)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| BtfPayloadError::Xz(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(BtfPayloadError::TooLarge { limit, what: "more than that once decompressed".into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A well-formed BTF header followed by `extra` zero bytes (enough for the checks here).
    fn fake_btf(extra: usize) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        b.resize(BTF_HEADER_LEN + extra, 0);
        b
    }

    #[test]
    fn round_trips_raw_and_xz_and_names_its_key() {
        for compress in [false, true] {
            let p = BtfPayload::encode("6.18.0", "x86_64", None, &fake_btf(100), compress).unwrap();
            assert_eq!(p.decode(1 << 20).unwrap(), fake_btf(100));
            assert_eq!(p.key(), "x86_64-6.18.0");
        }
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to a few KiB; the limit is 1 MiB.
        let bomb = BtfPayload::encode("r", "a", None, &fake_btf(64 << 20), true).unwrap();
        assert!(bomb.data.len() < 64 * 1024, "a real bomb: {} bytes", bomb.data.len());
        let err = bomb.decode(1 << 20).unwrap_err();
        assert!(matches!(err, BtfPayloadError::TooLarge { limit: 1_048_576, .. }), "{err}");
    }

    #[test]
    fn oversized_encoded_data_is_refused_before_decoding() {
        let p = BtfPayload::encode("r", "a", None, &fake_btf(4096), false).unwrap();
        let err = p.decode(1024).unwrap_err();
        assert!(err.to_string().contains("base64") && err.to_string().contains("1024"), "{err}");
    }

    #[test]
    fn what_is_not_btf_is_named() {
        let p = BtfPayload::encode("r", "a", None, &[0u8; 64], false).unwrap();
        assert_eq!(p.decode(1 << 20), Err(BtfPayloadError::NotBtf));
        let mut bad = p.clone();
        bad.data = "%%%".into();
        assert!(matches!(bad.decode(1 << 20), Err(BtfPayloadError::Base64(_))));
        bad.compression = BtfCompression::Xz;
        bad.data = base64::engine::general_purpose::STANDARD.encode(b"not xz");
        assert!(matches!(bad.decode(1 << 20), Err(BtfPayloadError::Xz(_))));
    }
}
