//! The guessing state machine: which field and candidate offset to check next, and what
//! to do with the kernel's answer. Pure (no syscalls); the driver in `kernel.rs` runs it.
use serde::Serialize;

use super::fields::{Expected, Field, ReadKind, Reading, TUPLE_LEN};

/// Bounds of one guessing run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest offset tried for any field, in bytes.
    pub threshold: u32,
    /// Checks the kernel may leave unanswered (datagram not seen) before the run fails.
    pub retries: u32,
}

/// Every offset the prebuilt conntracker needs, in bytes from the start of its struct.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Offsets {
    /// `sk_buff._nfct`
    pub skb_nfct: u32,
    /// `nf_conn.tuplehash[0].tuple`
    pub origin: u32,
    /// `nf_conn.tuplehash[1].tuple`
    pub reply: u32,
    /// `nf_conn.status`
    pub status: u32,
    /// `nf_conn.ct_net`
    pub netns: u32,
    /// `net.ns.inum`
    pub netns_inum: u32,
}

impl Offsets {
    pub fn get(&self, field: Field) -> u32 {
        match field {
            Field::SkbNfct => self.skb_nfct,
            Field::OriginTuple => self.origin,
            Field::ReplyTuple => self.reply,
            Field::Status => self.status,
            Field::NetnsPointer => self.netns,
            Field::NetnsInum => self.netns_inum,
        }
    }

    fn set(&mut self, field: Field, offset: u32) {
        let slot = match field {
            Field::SkbNfct => &mut self.skb_nfct,
            Field::OriginTuple => &mut self.origin,
            Field::ReplyTuple => &mut self.reply,
            Field::Status => &mut self.status,
            Field::NetnsPointer => &mut self.netns,
            Field::NetnsInum => &mut self.netns_inum,
        };
        *slot = offset;
    }
}

impl std::fmt::Display for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            Field::ALL.iter().map(|&field| format!("{field}={}", self.get(field))).collect();
        f.write_str(&parts.join(" "))
    }
}

/// One check for the kernel side: read `read` at `offset` (through the offsets already
/// found where the field needs them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub field: Field,
    pub read: ReadKind,
    pub offset: u32,
    pub off_nfct: u32,
    pub off_netns: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Next(Check),
    Done(Offsets),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    #[error(
        "offset guessing overflow on {field} at {threshold}: no offset up to {threshold} bytes matched; raise conntrack.offsetguess.threshold (max 3000) or use the core or netlink strategy"
    )]
    Overflow { field: Field, threshold: u32 },
    #[error(
        "offset guessing: the kernel did not see the guessing datagram for {field} in {retries} retries; is net_dev_queue traced and conntrack active?"
    )]
    NoAnswer { field: Field, retries: u32 },
}

impl MachineError {
    pub fn field(&self) -> Field {
        match self {
            MachineError::Overflow { field, .. } | MachineError::NoAnswer { field, .. } => *field,
        }
    }
}

pub struct Machine {
    expected: Expected,
    limits: Limits,
    field: usize,
    offset: u32,
    found: Offsets,
    checks: u32,
    unanswered: u32,
}

impl Machine {
    pub fn new(expected: Expected, limits: Limits) -> Result<Self, MachineError> {
        let machine = Machine {
            expected,
            limits,
            field: 0,
            offset: 0,
            found: Offsets::default(),
            checks: 0,
            unanswered: 0,
        };
        machine.within_threshold()?;
        Ok(machine)
    }

    /// The check to run now.
    pub fn check(&self) -> Check {
        let field = self.current();
        Check {
            field,
            read: field.read_kind(),
            offset: self.offset,
            off_nfct: self.found.skb_nfct,
            off_netns: self.found.netns,
        }
    }

    /// Checks answered so far (the run's cost, reported with its time).
    pub fn checks(&self) -> u32 {
        self.checks
    }

    /// Feeds the kernel's answer to the current check (`None`: it did not see the
    /// datagram) and says what comes next.
    pub fn observe(&mut self, reading: Option<&Reading>) -> Result<Progress, MachineError> {
        let field = self.current();
        let Some(reading) = reading else {
            self.unanswered += 1;
            if self.unanswered > self.limits.retries {
                return Err(MachineError::NoAnswer { field, retries: self.limits.retries });
            }
            return Ok(Progress::Next(self.check()));
        };
        self.checks += 1;
        if !self.expected.matches(field, reading) {
            self.offset += field.step();
            self.within_threshold()?;
            return Ok(Progress::Next(self.check()));
        }
        self.found.set(field, self.offset);
        self.field += 1;
        match Field::ALL.get(self.field) {
            None => Ok(Progress::Done(self.found)),
            Some(&next) => {
                self.offset = self.start_of(next);
                self.within_threshold()?;
                Ok(Progress::Next(self.check()))
            }
        }
    }

    fn current(&self) -> Field {
        Field::ALL[self.field.min(Field::ALL.len() - 1)]
    }

    fn within_threshold(&self) -> Result<(), MachineError> {
        if self.offset > self.limits.threshold {
            return Err(MachineError::Overflow { field: self.current(), threshold: self.limits.threshold });
        }
        Ok(())
    }

    /// Where the walk for `field` starts: past the fields that must precede it in
    /// `struct nf_conn` (the reply tuple follows the origin tuple, the status follows the
    /// reply tuple, the netns pointer follows the status), at the field's alignment.
    fn start_of(&self, field: Field) -> u32 {
        let tuple = TUPLE_LEN as u32;
        let start = match field {
            Field::SkbNfct | Field::OriginTuple | Field::NetnsInum => 0,
            Field::ReplyTuple => self.found.origin + tuple,
            Field::Status => self.found.reply + tuple,
            Field::NetnsPointer => self.found.status + 8,
        };
        start.next_multiple_of(field.step())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;
    use crate::offsetguess::fields::tests::{encode, known};
    use crate::offsetguess::fields::{IP_CT_NEW, ReadKind};

    /// A pretend kernel laid out like Linux 6.18 x86_64 (offsets from its BTF), so the
    /// machine's walk can be followed without a kernel.
    struct FakeKernel {
        skb: Vec<u8>,
        conn: Vec<u8>,
        net: Vec<u8>,
        conn_addr: u64,
        net_addr: u64,
    }

    /// Where the pretend entry and namespace live: the direct map of 4-level paging, and
    /// that of 5-level paging (LA57), which starts below 0xffff800000000000.
    const FOUR_LEVEL: (u64, u64) = (0xffff_8880_0000_1000, 0xffff_8880_0000_8000);
    const FIVE_LEVEL: (u64, u64) = (0xff11_0000_0000_1000, 0xff11_0000_0000_8000);
    /// The eBPF object's KERNEL_SPACE_START (bpf/offsetguess.bpf.c): the lowest kernel
    /// address of either paging mode.
    const KERNEL_SPACE_START: u64 = 0xff00_0000_0000_0000;

    impl FakeKernel {
        fn linux_6_18(e: &Expected) -> Self {
            Self::linux_6_18_at(e, FOUR_LEVEL)
        }

        fn linux_6_18_at(e: &Expected, (conn_addr, net_addr): (u64, u64)) -> Self {
            let mut skb = vec![0u8; 224];
            // Decoys: an aligned kernel pointer (ctinfo 0) and a userspace-looking value.
            skb[16..24].copy_from_slice(&net_addr.to_ne_bytes());
            skb[40..48].copy_from_slice(&0x1234_5672u64.to_ne_bytes());
            skb[104..112].copy_from_slice(&(conn_addr | u64::from(IP_CT_NEW)).to_ne_bytes());
            let mut conn = vec![0u8; 248];
            conn[32..72].copy_from_slice(&encode(&e.origin));
            conn[88..128].copy_from_slice(&encode(&e.reply));
            conn[128..136].copy_from_slice(&e.status.to_ne_bytes());
            conn[136..144].copy_from_slice(&net_addr.to_ne_bytes());
            let mut net = vec![0u8; 4288];
            net[176..180].copy_from_slice(&e.netns_inum.to_ne_bytes());
            FakeKernel { skb, conn, net, conn_addr, net_addr }
        }

        fn deref(&self, addr: u64) -> &[u8] {
            if addr == self.conn_addr {
                &self.conn
            } else if addr == self.net_addr {
                &self.net
            } else {
                &[]
            }
        }

        fn read(&self, check: &Check) -> Reading {
            let at = |bytes: &[u8], off: u32, len: usize| -> Vec<u8> {
                let off = off as usize;
                let mut out = vec![0u8; len];
                if off < bytes.len() {
                    let end = (off + len).min(bytes.len());
                    out[..end - off].copy_from_slice(&bytes[off..end]);
                }
                out
            };
            let word = |bytes: &[u8], off: u32| u64::from_ne_bytes(at(bytes, off, 8).try_into().unwrap());
            let conn = word(&self.skb, check.off_nfct) & !7;
            match check.read {
                ReadKind::SkbPointer => {
                    let v = word(&self.skb, check.offset);
                    let is_pointer = v & !7 >= KERNEL_SPACE_START;
                    let window = if is_pointer { at(self.deref(v & !7), 0, 192) } else { vec![] };
                    Reading { ctinfo: (v & 7) as u32, is_pointer, window }
                }
                ReadKind::Conn => {
                    Reading { window: at(self.deref(conn), check.offset, 64), ..Default::default() }
                }
                ReadKind::ConnPointer => {
                    let v = word(self.deref(conn), check.offset);
                    let is_pointer = v >= KERNEL_SPACE_START;
                    let window = if is_pointer { at(self.deref(v), 0, 512) } else { vec![] };
                    Reading { is_pointer, window, ..Default::default() }
                }
                ReadKind::Net => {
                    let net = word(self.deref(conn), check.off_netns);
                    Reading { window: at(self.deref(net), check.offset, 64), ..Default::default() }
                }
            }
        }
    }

    fn run(kernel: &FakeKernel, e: Expected, limits: Limits) -> Result<Offsets, MachineError> {
        let mut machine = Machine::new(e, limits)?;
        let mut check = machine.check();
        loop {
            match machine.observe(Some(&kernel.read(&check)))? {
                Progress::Next(next) => check = next,
                Progress::Done(offsets) => return Ok(offsets),
            }
        }
    }

    #[test]
    fn walks_every_field_to_its_offset() {
        let e = known();
        let offsets = run(&FakeKernel::linux_6_18(&e), e, Limits { threshold: 400, retries: 3 }).unwrap();
        assert_eq!(
            offsets,
            Offsets { skb_nfct: 104, origin: 32, reply: 88, status: 128, netns: 136, netns_inum: 176 }
        );
    }

    /// With 5-level paging kernel pointers start at 0xff11…, below 4-level's kernel half:
    /// a pointer test against 0xffff800000000000 took them for plain numbers and overflowed
    /// on sk_buff._nfct (seen in qemu with `-cpu max`).
    #[test]
    fn five_level_paging_pointers_are_recognised() {
        let e = known();
        let offsets =
            run(&FakeKernel::linux_6_18_at(&e, FIVE_LEVEL), e, Limits { threshold: 400, retries: 3 })
                .unwrap();
        assert_eq!((offsets.skb_nfct, offsets.netns, offsets.netns_inum), (104, 136, 176));
    }

    #[test]
    fn a_low_threshold_names_the_first_field_it_cannot_reach() {
        let e = known();
        let kernel = FakeKernel::linux_6_18(&e);
        let err = run(&kernel, e, Limits { threshold: 8, retries: 3 }).unwrap_err();
        assert_eq!(err, MachineError::Overflow { field: Field::SkbNfct, threshold: 8 });
        assert!(err.to_string().contains("offset guessing overflow on sk_buff._nfct at 8"), "{err}");
        // 170 reaches every field of sk_buff and nf_conn, but not the inode in struct net (176).
        let err = run(&kernel, e, Limits { threshold: 170, retries: 3 }).unwrap_err();
        assert_eq!(err.field(), Field::NetnsInum);
    }

    #[test]
    fn unanswered_checks_use_the_retry_budget_then_fail_naming_the_field() {
        let mut machine = Machine::new(known(), Limits { threshold: 400, retries: 2 }).unwrap();
        let first = machine.check();
        assert_eq!(machine.observe(None), Ok(Progress::Next(first)), "a retry repeats the same check");
        assert!(machine.observe(None).is_ok());
        assert_eq!(machine.observe(None), Err(MachineError::NoAnswer { field: Field::SkbNfct, retries: 2 }));
    }

    #[test]
    fn a_field_that_never_matches_overflows_instead_of_looping() {
        let e = known();
        let mut kernel = FakeKernel::linux_6_18(&e);
        kernel.conn[128..136].copy_from_slice(&0u64.to_ne_bytes()); // status never as expected
        let err = run(&kernel, e, Limits { threshold: 400, retries: 3 }).unwrap_err();
        assert_eq!(err, MachineError::Overflow { field: Field::Status, threshold: 400 });
    }
}
