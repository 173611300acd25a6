//! The hooks the conntrack eBPF objects attach to: the CO-RE object's, tried in
//! [`Strategy::ORDER`] by `core.rs`, and the prebuilt object's, tried by `prebuilt.rs`.

/// How the eBPF program is hooked into the kernel, in the order they are tried. The
/// serde names are those of `[conntrack] attach_strategies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Strategy {
    /// fentry on `__nf_conntrack_hash_insert`: once per new entry.
    #[serde(rename = "fentry")]
    FEntry,
    /// kprobe on `__nf_conntrack_hash_insert`.
    #[serde(rename = "kprobe")]
    KProbeHashInsert,
    /// kprobe + kretprobe on `__nf_conntrack_confirm`.
    #[serde(rename = "kprobe_confirm")]
    KProbeConfirm,
    /// `tp_btf/net_dev_queue`: every transmitted packet's `skb->_nfct`.
    #[serde(rename = "tp_btf")]
    TpBtf,
    /// `raw_tracepoint/net_dev_queue` with CO-RE reads: the per-packet hook for BTF the
    /// kernel does not publish itself (remote config, `btf.file`, BTFHub), where `tp_btf`
    /// cannot resolve its target.
    #[serde(rename = "raw_tracepoint")]
    RawTracepoint,
    /// The prebuilt object's kprobe (attached by `prebuilt.rs`, never in [`Self::ORDER`]).
    #[serde(skip)]
    PrebuiltKprobe,
    /// The prebuilt object's `raw_tracepoint/net_dev_queue` (attached by `prebuilt.rs`).
    #[serde(skip)]
    PrebuiltRawTracepoint,
}

impl Strategy {
    pub const ORDER: [Strategy; 5] = [
        Strategy::FEntry,
        Strategy::KProbeHashInsert,
        Strategy::KProbeConfirm,
        Strategy::TpBtf,
        Strategy::RawTracepoint,
    ];

    /// The hook, as recorded in the status attempts.
    pub fn hook(self) -> &'static str {
        match self {
            Strategy::FEntry => "fentry/__nf_conntrack_hash_insert",
            Strategy::KProbeHashInsert => "kprobe/__nf_conntrack_hash_insert",
            Strategy::KProbeConfirm => "kprobe+kretprobe/__nf_conntrack_confirm",
            Strategy::TpBtf => "tp_btf/net_dev_queue",
            Strategy::RawTracepoint => "raw_tracepoint/net_dev_queue (CO-RE)",
            Strategy::PrebuiltKprobe => "kprobe/__nf_conntrack_hash_insert",
            Strategy::PrebuiltRawTracepoint => "raw_tracepoint/net_dev_queue",
        }
    }

    /// The implementation name reported by [`Conntracker::strategy`].
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FEntry => "core/fentry",
            Strategy::KProbeHashInsert | Strategy::KProbeConfirm => "core/kprobe",
            Strategy::TpBtf => "core/tp_btf",
            Strategy::RawTracepoint => "core/raw_tracepoint",
            Strategy::PrebuiltKprobe => "prebuilt/kprobe",
            Strategy::PrebuiltRawTracepoint => "prebuilt/raw_tracepoint",
        }
    }

    /// Whether the program refreshes `last_seen_ns` while a connection is active (only
    /// the per-packet hook does); the sweep's age rule is meaningless otherwise.
    pub fn refreshes_last_seen(self) -> bool {
        matches!(self, Strategy::TpBtf | Strategy::RawTracepoint | Strategy::PrebuiltRawTracepoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_per_packet_hook_refreshes_last_seen() {
        let refreshing: Vec<_> = Strategy::ORDER.into_iter().filter(|s| s.refreshes_last_seen()).collect();
        assert_eq!(refreshing, vec![Strategy::TpBtf, Strategy::RawTracepoint]);
        assert_eq!(Strategy::TpBtf.name(), "core/tp_btf");
    }
}
