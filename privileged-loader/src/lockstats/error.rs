//! Errors of the lock-contention collector. None of them stops the loader: `start`
//! turns each into a status reason.
use crate::asset::AssetError;

#[derive(Debug, thiserror::Error)]
pub enum LockStatsError {
    /// A symbol the range computation needs was not found by the ksym iterator nor in
    /// /proc/kallsyms.
    #[error(
        "kernel symbol {symbol} not found (looked up last in {tried}); data symbols are listed only with CONFIG_KALLSYMS_ALL"
    )]
    SymbolMissing { symbol: String, tried: String },
    /// The kernel's build configuration says its symbol table lists functions only, so
    /// the table was not walked for a data symbol.
    #[error(
        "kernel symbol {symbol} is not listed: {config} says the kernel is built without CONFIG_KALLSYMS_ALL (its symbol table has functions only), so it was not searched"
    )]
    SymbolUnlisted { symbol: String, config: String },
    /// The symbol exists but its address reads as 0: kptr_restrict hides it from us.
    #[error(
        "kernel symbol {symbol} has address 0 in {source_name}: addresses are hidden (kptr_restrict); run the loader as root with CAP_SYSLOG or set kernel.kptr_restrict=0"
    )]
    SymbolHidden { symbol: String, source_name: String },
    /// An eBPF object of the collector did not load or attach.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// Running an iterator (ksym, bpf_map) or reading its output failed.
    #[error("running BPF iterator {iterator}: {reason}")]
    Iterator { iterator: String, reason: String },
    /// The iterator's output does not have the layout this loader was built with.
    #[error(
        "decoding the output of BPF iterator {iterator}: {reason}; the object and the loader are out of step, rebuild both"
    )]
    Decode { iterator: String, reason: String },
    /// A map of the contention object could not be filled or read.
    #[error("lock stats map {map}: {reason}")]
    Map { map: String, reason: String },
}
