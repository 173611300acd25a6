//! The bytes a peer sends on the loader's socket, through the HTTP/2 header rewriter that
//! lets stock gRPC clients in, split at an arbitrary point: errors, never a panic, and
//! the same output whether the bytes come whole or in two pieces.
#![no_main]
use fuzz_targets::authority::AuthorityRewriter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut whole = Vec::new();
    let whole_result = AuthorityRewriter::default().feed(bytes, &mut whole);
    let (a, b) = bytes.split_at(usize::from(split).min(bytes.len()));
    let mut pieces = Vec::new();
    let mut rewriter = AuthorityRewriter::default();
    let pieces_result = rewriter.feed(a, &mut pieces).and_then(|()| rewriter.feed(b, &mut pieces));
    if whole_result.is_ok() && pieces_result.is_ok() {
        assert_eq!(whole, pieces, "output depends on how the input was split");
    }
});
