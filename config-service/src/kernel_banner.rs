//! The kernel a `vmlinux` file was built as, read from its `linux_banner` string
//! ("Linux version <release> (<builder>) (<compiler>) <build>"), the same text
//! `/proc/version` shows on a node running that kernel.
//!
//! `publish-btf --vmlinux` uses it so that a BTF cannot be published under another
//! kernel's release by mistake, and so that the payload records the build (`uname -v`)
//! the loader checks against the node: without it, a BTF of another build with the same
//! type names but other offsets would relocate and be read wrongly.
use std::path::Path;

use anyhow::Context;

const PREFIX: &[u8] = b"Linux version ";

/// Release (`uname -r`) and build (`uname -v`) of one kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Banner {
    pub release: String,
    pub build: String,
}

/// The banner in `file`, if it has one (a vmlinux ELF does; a raw BTF file does not).
pub fn read(file: &Path) -> anyhow::Result<Option<Banner>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(find(&bytes))
}

/// The first `Linux version <digit>...` text in `bytes`, up to its newline or NUL.
pub fn find(bytes: &[u8]) -> Option<Banner> {
    let mut from = 0;
    while let Some(at) = bytes[from..].windows(PREFIX.len()).position(|w| w == PREFIX) {
        let start = from + at + PREFIX.len();
        let rest = &bytes[start..];
        let end = rest.iter().position(|&b| b == b'\n' || b == 0).unwrap_or(rest.len());
        if let Some(banner) = std::str::from_utf8(&rest[..end]).ok().and_then(parse) {
            return Some(banner);
        }
        from = start;
    }
    None
}

/// Parses what follows "Linux version ": the release, then parenthesised groups (which
/// may nest), then the build, which starts with the `#` outside every parenthesis.
fn parse(text: &str) -> Option<Banner> {
    let (release, rest) = text.split_once(' ')?;
    if !release.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '#' if depth == 0 => {
                let build = rest[i..].trim_end();
                return Some(Banner { release: release.to_string(), build: build.to_string() });
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn proc(name: &str) -> String {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).unwrap().trim().to_string()
    }

    #[test]
    fn the_running_kernels_proc_version_gives_its_uname_r_and_uname_v() {
        let text = std::fs::read("/proc/version").unwrap();
        let banner = find(&text).expect("a banner in /proc/version");
        assert_eq!(banner, Banner { release: proc("osrelease"), build: proc("version") });
    }

    #[test]
    fn a_banner_inside_binary_data_is_found_and_nested_parentheses_are_skipped() {
        let debian = "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) \
                      (x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) \
                      #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-01)\n";
        // A format string first (not a release), then the banner between NULs, as in .rodata.
        let mut elf = b"\x7fELF\0\0Linux version %s\0".to_vec();
        elf.extend_from_slice(debian.as_bytes());
        elf.extend_from_slice(b"\0\x01\x02");
        let banner = find(&elf).unwrap();
        assert_eq!(banner.release, "6.1.0-57-cloud-amd64");
        assert_eq!(banner.build, "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-01)");
    }

    #[test]
    fn raw_btf_has_no_banner() {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        assert_eq!(find(&btf), None);
    }
}
