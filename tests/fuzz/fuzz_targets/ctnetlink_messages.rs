//! ctnetlink datagrams as the kernel sends them (dumps, DESTROY events, errors): any bytes
//! give messages or an error, never a panic or a hang.
#![no_main]
use fuzz_targets::conntrack::ctnetlink::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_sequenced(data);
});
