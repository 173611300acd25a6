//! Whether the kernel's symbol table can list a data symbol at all, from its build
//! configuration.
//!
//! Without `CONFIG_KALLSYMS_ALL` the kernel's symbol table holds functions only, so
//! walking it for `__per_cpu_offset` (every one of its ~120,000 entries, the costliest
//! step of the lock statistics' start-up) cannot succeed. The configuration is read from
//! `/proc/config.gz` (`CONFIG_IKCONFIG_PROC`) or `/boot/config-<release>`; when neither
//! can be read, nothing is known and the caller walks as before.
use std::fs;
use std::io::Read;
use std::path::PathBuf;

const PROC_CONFIG: &str = "/proc/config.gz";
/// A decompressed configuration is ~150 KB; anything far larger is not one.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The configuration file that says the symbol table lists functions only, or `None`
/// when it lists data symbols too or no configuration could be read.
pub fn functions_only_config() -> Option<String> {
    let (path, text) = read_kernel_config()?;
    (!lists_data_symbols(&text)).then_some(path)
}

/// Whether a kernel configuration (`.config` text) builds a symbol table with data
/// symbols.
pub fn lists_data_symbols(config: &str) -> bool {
    config.lines().any(|line| line.trim_end() == "CONFIG_KALLSYMS_ALL=y")
}

fn read_kernel_config() -> Option<(String, String)> {
    if let Ok(file) = fs::File::open(PROC_CONFIG) {
        let mut text = String::new();
        let decoded = flate2::read::GzDecoder::new(file).take(MAX_CONFIG_BYTES).read_to_string(&mut text);
        match decoded {
            Ok(_) => return Some((PROC_CONFIG.to_string(), text)),
            Err(e) => tracing::debug!(error = %e, "{PROC_CONFIG} unreadable; trying /boot"),
        }
    }
    let release = crate::btf::kernel_release().ok()?;
    let path = PathBuf::from(format!("/boot/config-{release}"));
    let text = fs::read_to_string(&path).ok()?;
    Some((path.display().to_string(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kallsyms_all_set_lists_data_symbols() {
        assert!(lists_data_symbols("CONFIG_KALLSYMS=y\nCONFIG_KALLSYMS_ALL=y\n"));
        assert!(!lists_data_symbols("CONFIG_KALLSYMS=y\n# CONFIG_KALLSYMS_ALL is not set\n"));
        // No kallsyms at all: nothing is listed.
        assert!(!lists_data_symbols("# CONFIG_KALLSYMS is not set\n"));
        assert!(!lists_data_symbols("CONFIG_KALLSYMS_ALL_EXTRA=y\n"));
    }

    #[test]
    fn this_kernels_own_configuration_is_read_when_it_is_there() {
        // Where the running kernel publishes its configuration, the answer must agree
        // with it; elsewhere there is nothing to read and the walk goes ahead.
        match read_kernel_config() {
            Some((path, text)) => {
                assert!(text.contains("CONFIG_"), "{path} is not a kernel configuration");
                assert_eq!(functions_only_config().is_some(), !lists_data_symbols(&text));
            }
            None => assert!(functions_only_config().is_none()),
        }
    }
}
