//! The kernel-facing half of offset guessing: loads `bpf/offsetguess.bpf.c` without BTF,
//! and runs the state machine through its `guess_status` map, one datagram per check.
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use aya::programs::RawTracePoint;

use super::GuessError;
use super::fields::Reading;
use super::machine::{Check, Machine, Offsets, Progress};
use super::traffic::KnownConnection;
use crate::asset::{self, AssetError, AssetLoader};

pub const ASSET: &str = "offsetguess";
const PROGRAM: &str = "guess_net_dev_queue";
const MAP: &str = "guess_status";
const WINDOW: usize = 512;

/// `state` of the shared map: who may act next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
enum State {
    /// Nothing asked yet (the zeroed map as created): the kernel side ignores every packet.
    #[cfg_attr(not(test), expect(dead_code, reason = "the state of the freshly created map, never written"))]
    Uninitialized = 0,
    /// Userspace asked for a check; the kernel answers on the guessing thread's next packet.
    Checking = 1,
    /// The kernel answered; userspace reads and compares.
    Checked = 2,
    /// Guessing is over: the kernel side ignores every packet.
    Ready = 3,
}

/// `struct guess_status` of bpf/offsetguess.bpf.c, byte for byte.
#[repr(C)]
#[derive(Clone, Copy)]
struct GuessStatus {
    state: u64,
    pid_tgid: u64,
    read: u32,
    offset: u32,
    off_nfct: u32,
    off_netns: u32,
    ctinfo: u32,
    is_pointer: u32,
    len: u32,
    hits: u32,
    window: [u8; WINDOW],
}

const _: () = assert!(size_of::<GuessStatus>() == 48 + WINDOW);

// SAFETY: repr(C), integers and a byte array, no implicit padding (48 + 512 bytes, all
// fields 4- or 8-aligned in order), so every bit pattern is valid.
unsafe impl aya::Pod for GuessStatus {}

impl GuessStatus {
    fn asking(check: &Check, pid_tgid: u64) -> Self {
        GuessStatus {
            state: State::Checking as u64,
            pid_tgid,
            read: check.read as u32,
            offset: check.offset,
            off_nfct: check.off_nfct,
            off_netns: check.off_netns,
            ctinfo: 0,
            is_pointer: 0,
            len: 0,
            hits: 0,
            window: [0; WINDOW],
        }
    }

    fn reading(&self) -> Option<Reading> {
        (self.state == State::Checked as u64).then(|| Reading {
            ctinfo: self.ctinfo,
            is_pointer: self.is_pointer != 0,
            window: self.window[..(self.len as usize).min(WINDOW)].to_vec(),
        })
    }
}

/// The loaded guessing object. Dropping it detaches the program and frees the map.
pub struct GuessObject {
    ebpf: aya::Ebpf,
}

impl GuessObject {
    /// Loads the object through the BTF-free path (it has no CO-RE relocation; the load
    /// is recorded as asset `offsetguess`) and attaches its raw tracepoint.
    pub fn load(assets: &AssetLoader) -> Result<Self, AssetError> {
        assets.load_btf_free_asset(ASSET, |object, loader| {
            let mut ebpf = loader.load(object).map_err(|e| AssetError::from_ebpf(ASSET, e))?;
            let program: &mut RawTracePoint = asset::program_mut(&mut ebpf, ASSET, PROGRAM)?;
            program.load().map_err(|e| AssetError::from_program_load(ASSET, PROGRAM, e))?;
            program
                .attach("net_dev_queue")
                .map_err(|e| AssetError::from_program_attach(ASSET, PROGRAM, e))?;
            Ok(GuessObject { ebpf })
        })
    }

    /// Runs `machine` to the end: one datagram and one map round trip per check.
    pub fn run(
        &mut self,
        mut machine: Machine,
        conn: &KnownConnection,
        timeout: Duration,
    ) -> Result<(Offsets, u32), GuessError> {
        let started = Instant::now();
        let pid_tgid = current_pid_tgid();
        let mut status: Array<&mut MapData, GuessStatus> = self
            .ebpf
            .map_mut(MAP)
            .ok_or_else(|| GuessError::Map(format!("map {MAP} missing from asset {ASSET}")))?
            .try_into()
            .map_err(|e| GuessError::Map(format!("{MAP}: {e}")))?;
        let mut check = machine.check();
        loop {
            if started.elapsed() > timeout {
                return Err(GuessError::Timeout { field: check.field, timeout });
            }
            status
                .set(0, GuessStatus::asking(&check, pid_tgid), 0)
                .map_err(|e| GuessError::Map(e.to_string()))?;
            conn.send()?;
            let answer = status.get(&0, 0).map_err(|e| GuessError::Map(e.to_string()))?;
            match machine.observe(answer.reading().as_ref())? {
                Progress::Next(next) => check = next,
                Progress::Done(offsets) => {
                    let mut done = GuessStatus::asking(&check, pid_tgid);
                    done.state = State::Ready as u64;
                    status.set(0, done, 0).map_err(|e| GuessError::Map(e.to_string()))?;
                    return Ok((offsets, machine.checks()));
                }
            }
        }
    }
}

/// `bpf_get_current_pid_tgid()` of this thread: the process id high, the thread id low.
fn current_pid_tgid() -> u64 {
    let tgid = u64::from(std::process::id());
    let tid = u64::try_from(nix::unistd::gettid().as_raw()).unwrap_or_default();
    (tgid << 32) | tid
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn states_have_the_values_the_object_uses() {
        let values = [State::Uninitialized, State::Checking, State::Checked, State::Ready].map(|s| s as u64);
        assert_eq!(values, [0, 1, 2, 3]);
    }

    #[test]
    fn only_a_checked_status_is_an_answer() {
        let check = Check {
            field: super::super::fields::Field::SkbNfct,
            read: super::super::fields::ReadKind::SkbPointer,
            offset: 8,
            off_nfct: 0,
            off_netns: 0,
        };
        let mut status = GuessStatus::asking(&check, 1);
        assert!(status.reading().is_none(), "still CHECKING: the kernel did not see the datagram");
        status.state = State::Checked as u64;
        status.len = 4096; // a corrupt length never reads past the window
        assert_eq!(status.reading().map(|r| r.window.len()), Some(WINDOW));
    }
}
