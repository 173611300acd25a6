//! Request messages of the loader's API as a client may send them: protobuf decoding, then
//! the conversions the service makes (the tuple of a lookup), never a panic.
#![no_main]
use fuzz_targets::conntrack::Tuple;
use fuzz_targets::proto::loader::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = pb::LookupTranslationRequest::decode(data)
        && let Some(t) = request.tuple
    {
        if let Ok(tuple) = Tuple::parse(&t.src_addr, t.src_port, &t.dst_addr, t.dst_port, t.protocol) {
            // A parsed tuple prints back to addresses that parse to the same tuple.
            let again = Tuple::parse(
                &tuple.src.to_string(),
                t.src_port,
                &tuple.dst.to_string(),
                t.dst_port,
                t.protocol,
            );
            assert_eq!(again.ok(), Some(tuple));
        }
    }
    let _ = pb::ListConntrackRequest::decode(data);
    let _ = pb::GetStatusRequest::decode(data);
});
