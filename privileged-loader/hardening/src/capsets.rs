//! The five capability sets of one thread, as the kernel prints them in
//! `/proc/<pid>/task/<tid>/status` (`CapInh:`, `CapPrm:`, `CapEff:`, `CapBnd:`, `CapAmb:`).
use serde::{Deserialize, Serialize};

/// Capability masks (bit n = capability number n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub bounding: u64,
}

impl CapSets {
    /// Parses the `Cap*:` lines of a status document; a missing line is an empty set.
    pub fn parse(status: &str) -> Self {
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        Self {
            effective: mask("CapEff:"),
            permitted: mask("CapPrm:"),
            inheritable: mask("CapInh:"),
            ambient: mask("CapAmb:"),
            bounding: mask("CapBnd:"),
        }
    }

    /// Each set with its name, in the order the report prints them.
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("effective", self.effective),
            ("permitted", self.permitted),
            ("inheritable", self.inheritable),
            ("ambient", self.ambient),
            ("bounding", self.bounding),
        ]
    }
}

/// The capability names in `mask`, sorted (`CAP_BPF`, ...); unknown bits as `cap_<n>`.
pub fn names(mask: u64) -> Vec<String> {
    let known: Vec<caps::Capability> = caps::all().into_iter().collect();
    let mut out: Vec<String> = (0..64u8)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            known.iter().find(|c| c.index() == bit).map_or_else(|| format!("cap_{bit}"), |c| c.to_string())
        })
        .collect();
    out.sort();
    out
}

/// The mask of capability names like `CAP_BPF` (case-insensitive); unknown names are
/// returned as the error.
pub fn mask_of(names: &[String]) -> Result<u64, String> {
    names.iter().try_fold(0u64, |mask, name| {
        let cap: caps::Capability = name.to_ascii_uppercase().parse().map_err(|_| name.clone())?;
        Ok(mask | cap.bitmask())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_set_of_a_status_document() {
        let status = "CapInh:\t0000000000000000\nCapPrm:\t000000c000001000\nCapEff:\t000000c000001000\n\
                      CapBnd:\t000000c000001000\nCapAmb:\t0000000000000000\n";
        let sets = CapSets::parse(status);
        assert_eq!(names(sets.effective), vec!["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(sets.bounding, sets.permitted);
        assert_eq!(sets.inheritable | sets.ambient, 0);
    }

    #[test]
    fn names_and_masks_round_trip() {
        let mask = mask_of(&["cap_bpf".into(), "CAP_PERFMON".into(), "CAP_NET_ADMIN".into()]).expect("known");
        assert_eq!(mask, 0x0000_00c0_0000_1000);
        assert_eq!(mask_of(&["CAP_FLY".into()]), Err("CAP_FLY".into()));
    }
}
