//! `publish-btf`: one kernel's BTF, minimized to what the project's eBPF objects relocate
//! against, published as a `BTF` config under that kernel's key.
//!
//! A full vmlinux BTF is several MB; `bpftool gen min_core_btf` keeps only the types the
//! objects' CO-RE relocations name (under 1 KB for the conntracker). The payload records
//! the kernel's release, arch and (for the running kernel, or when given) its `uname -v`,
//! which the loader checks against the kernel it runs on.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use trust::products::{BTF, BtfPayload, kernel_key};

use crate::kernel_banner;

/// Where the BTF comes from and which kernel it describes.
pub struct KernelBtf {
    /// `None`: the running kernel's `/sys/kernel/btf/vmlinux`.
    pub vmlinux: Option<PathBuf>,
    pub release: Option<String>,
    pub arch: Option<String>,
    pub kernel_version: Option<String>,
}

/// The payload to publish, its config id, and the sizes for the operator.
pub struct Prepared {
    pub config_id: String,
    pub content: Vec<u8>,
    pub full_bytes: u64,
    pub btf_bytes: usize,
}

pub const PRODUCT: &str = BTF;

/// Minimizes (unless `full`) and encodes the BTF of `kernel` for `objects`.
pub fn prepare(
    kernel: &KernelBtf,
    objects: &[PathBuf],
    full: bool,
    compress: bool,
) -> anyhow::Result<Prepared> {
    let (vmlinux, release, arch, kernel_version) = identify(kernel)?;
    let full_bytes =
        std::fs::metadata(&vmlinux).with_context(|| format!("cannot read BTF {}", vmlinux.display()))?.len();
    let btf = if full {
        std::fs::read(&vmlinux).with_context(|| format!("cannot read BTF {}", vmlinux.display()))?
    } else {
        minimize(&vmlinux, objects)?
    };
    let payload = BtfPayload::encode(&release, &arch, kernel_version, &btf, compress)?;
    Ok(Prepared {
        config_id: kernel_key(&arch, &release),
        content: serde_json::to_vec(&payload)?,
        full_bytes,
        btf_bytes: btf.len(),
    })
}

/// The BTF file and the kernel it describes: the running one unless a file is named. A
/// vmlinux ELF names its release and build in its banner: given values must agree, missing
/// ones are taken from it. A raw BTF file names nothing: release and arch must be given.
fn identify(k: &KernelBtf) -> anyhow::Result<(PathBuf, String, String, Option<String>)> {
    match &k.vmlinux {
        None => {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .map(|s| s.trim().to_string())
                    .with_context(|| format!("reading {p}"))
            };
            let release = k.release.clone().map_or_else(|| read("/proc/sys/kernel/osrelease"), Ok)?;
            let version = k.kernel_version.clone().map_or_else(|| read("/proc/sys/kernel/version"), Ok)?;
            let arch = k.arch.clone().unwrap_or_else(|| std::env::consts::ARCH.to_string());
            Ok((PathBuf::from("/sys/kernel/btf/vmlinux"), release, arch, Some(version)))
        }
        Some(file) => {
            let banner = kernel_banner::read(file)?;
            let from_banner = |given: &Option<String>, found: Option<&String>, what: &str, flag: &str| match (
                given, found,
            ) {
                (Some(g), Some(f)) if g != f => bail!(
                    "{flag} {g:?}, but {} is the {what} {f:?} (its `Linux version` banner): publish it under its own kernel",
                    file.display()
                ),
                (given, found) => Ok(given.clone().or_else(|| found.cloned())),
            };
            let release =
                from_banner(&k.release, banner.as_ref().map(|b| &b.release), "release", "--release")?;
            let build = from_banner(
                &k.kernel_version,
                banner.as_ref().map(|b| &b.build),
                "build",
                "--kernel-version",
            )?;
            let (Some(release), Some(arch)) = (release, k.arch.clone()) else {
                bail!(
                    "--vmlinux {} needs --arch and, for a raw BTF file (no `Linux version` banner), --release (uname -m and uname -r of that kernel)",
                    file.display()
                );
            };
            Ok((file.clone(), release, arch, build))
        }
    }
}

/// `bpftool gen min_core_btf VMLINUX OUT OBJECTS...`, read back.
fn minimize(vmlinux: &Path, objects: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    if objects.is_empty() {
        bail!(
            "name the eBPF objects to keep types for (--object, e.g. from `privileged-loader objects --out DIR`), or pass --full"
        );
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let out = dir.path().join("min.btf");
    let output = Command::new("bpftool")
        .args(["gen", "min_core_btf"])
        .arg(vmlinux)
        .arg(&out)
        .args(objects)
        .output()
        .context("cannot run bpftool (apt-get install bpftool)")?;
    if !output.status.success() {
        bail!("bpftool gen min_core_btf failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    std::fs::read(&out).with_context(|| format!("reading bpftool's output {}", out.display()))
}
