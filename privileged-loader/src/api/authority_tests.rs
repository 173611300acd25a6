use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A HEADERS frame as grpcio sends it: HPACK with dynamic-table indexing.
fn request_frame(encoder: &mut loona_hpack::Encoder<'_>, stream: u32, authority: &[u8]) -> Vec<u8> {
    let block = encoder.encode(vec![
        (&b":method"[..], &b"POST"[..]),
        (b":path", b"/grpc.health.v1.Health/Check"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
    ]);
    let mut out = Vec::new();
    write_frames(stream, false, &block, &mut out);
    out
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// What h2 would decode from the rewritten bytes: (stream, fields) per header block.
fn decoded_blocks(bytes: &[u8]) -> Vec<(u32, Fields)> {
    assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
    let mut decoder = loona_hpack::Decoder::new();
    let (mut pos, mut blocks) = (PREFACE_LEN, Vec::new());
    while let Some(h) = FrameHeader::parse(&bytes[pos..]) {
        let payload = &bytes[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + h.len];
        if h.kind == HEADERS {
            blocks.push((h.stream, decoder.decode(payload).expect("h2 can decode it")));
        }
        pos += FRAME_HEADER_LEN + h.len;
    }
    blocks
}

fn authority(fields: &Fields) -> &[u8] {
    &fields.iter().find(|(n, _)| n == b":authority").expect(":authority").1
}

#[test]
fn a_socket_path_authority_becomes_localhost_on_every_request_of_a_connection() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    // The second request refers to the first one's fields through the dynamic table.
    input.extend(request_frame(&mut encoder, 1, b"tmp%2Floader.sock"));
    input.extend(request_frame(&mut encoder, 3, b"tmp%2Floader.sock"));
    let mut out = Vec::new();
    AuthorityRewriter::default().feed(&input, &mut out).expect("rewrite");
    let blocks = decoded_blocks(&out);
    assert_eq!(blocks.len(), 2);
    for (stream, fields) in &blocks {
        assert_eq!(authority(fields), b"localhost", "stream {stream}");
        assert!(fields.iter().any(|(n, v)| n == b":path" && v == b"/grpc.health.v1.Health/Check"));
    }
}

#[test]
fn a_valid_authority_is_kept_and_byte_by_byte_input_gives_the_same_bytes() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(request_frame(&mut encoder, 1, b"localhost:50051"));
    // A DATA frame passes through untouched.
    input.extend([0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    let mut whole = Vec::new();
    AuthorityRewriter::default().feed(&input, &mut whole).expect("rewrite");
    let mut rewriter = AuthorityRewriter::default();
    let mut piecewise = Vec::new();
    for byte in &input {
        rewriter.feed(std::slice::from_ref(byte), &mut piecewise).expect("rewrite");
    }
    assert_eq!(whole, piecewise);
    assert_eq!(whole, input, "a connection that needs no rewrite reaches h2 byte for byte");
    assert_eq!(authority(&decoded_blocks(&whole)[0].1), b"localhost:50051");
}

/// After a first request with a valid authority nothing is decoded any more: a later
/// header block, even one no decoder could read, goes to h2 as sent (h2 judges it).
#[test]
fn after_a_valid_first_authority_the_connection_is_passed_through_undecoded() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(request_frame(&mut encoder, 1, b"localhost"));
    // An index into a dynamic-table entry that does not exist.
    let garbage = [0, 0, 1, HEADERS, END_HEADERS, 0, 0, 0, 3, 0xff];
    let mut rewriter = AuthorityRewriter::default();
    let mut out = Vec::new();
    rewriter.feed(&input, &mut out).expect("first request");
    rewriter.feed(&garbage, &mut out).expect("passed through, not decoded");
    input.extend(garbage);
    assert_eq!(out, input);
}

/// A connection whose first request needed the rewrite keeps being rewritten, even when a
/// later request carries a valid authority: h2's table no longer follows the client's.
#[test]
fn once_rewritten_a_connection_stays_rewritten() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(request_frame(&mut encoder, 1, b"tmp%2Floader.sock"));
    input.extend(request_frame(&mut encoder, 3, b"localhost"));
    let mut out = Vec::new();
    AuthorityRewriter::default().feed(&input, &mut out).expect("rewrite");
    let blocks = decoded_blocks(&out);
    let authorities: Vec<&[u8]> = blocks.iter().map(|(_, fields)| authority(fields)).collect();
    assert_eq!(authorities, [&b"localhost"[..], &b"localhost"[..]]);
    assert_ne!(out, input, "re-encoded as literals");
}

#[test]
fn padding_priority_and_continuation_are_folded_into_one_block() {
    let mut encoder = loona_hpack::Encoder::new();
    let block = encoder.encode(vec![(&b":authority"[..], &b"/run/x.sock"[..]), (b":path", b"/a")]);
    let (first, second) = block.split_at(3);
    let mut input = PREFACE.to_vec();
    // HEADERS, PADDED | PRIORITY | END_STREAM: pad length 2, 5 priority bytes, fragment, pad.
    let payload: Vec<u8> = [&[2u8][..], &[0, 0, 0, 0, 16], first, &[0, 0]].concat();
    input.extend(&(payload.len() as u32).to_be_bytes()[1..]);
    input.extend([HEADERS, PADDED | PRIORITY | END_STREAM, 0, 0, 0, 5]);
    input.extend(&payload);
    input.extend(&(second.len() as u32).to_be_bytes()[1..]);
    input.extend([CONTINUATION, END_HEADERS, 0, 0, 0, 5]);
    input.extend(second);
    let mut out = Vec::new();
    AuthorityRewriter::default().feed(&input, &mut out).expect("rewrite");
    let blocks = decoded_blocks(&out);
    assert_eq!(
        blocks,
        vec![(5, vec![(b":authority".to_vec(), b"localhost".to_vec()), (b":path".to_vec(), b"/a".to_vec())])]
    );
    assert_eq!(out[PREFACE_LEN + 4], END_HEADERS | END_STREAM, "END_STREAM is kept");
}

#[test]
fn hostile_header_blocks_are_errors_not_panics() {
    let mut input = PREFACE.to_vec();
    // HEADERS whose pad length exceeds the payload.
    input.extend([0, 0, 1, HEADERS, PADDED | END_HEADERS, 0, 0, 0, 1, 9]);
    let err = AuthorityRewriter::default().feed(&input, &mut Vec::new()).expect_err("malformed");
    assert_eq!(err, RewriteError::MalformedFrame { stream: 1 });
    // An index into an empty dynamic table.
    let mut input = PREFACE.to_vec();
    input.extend([0, 0, 1, HEADERS, END_HEADERS, 0, 0, 0, 1, 0xff]);
    assert!(matches!(
        AuthorityRewriter::default().feed(&input, &mut Vec::new()),
        Err(RewriteError::Hpack { stream: 1, .. })
    ));
    // A header block that never ends grows to the bound, then fails.
    let mut rewriter = AuthorityRewriter::default();
    let mut input = PREFACE.to_vec();
    input.extend([0x00, 0x40, 0x00, HEADERS, 0, 0, 0, 0, 1]);
    input.extend(vec![0u8; MAX_FRAME]);
    for _ in 0..(MAX_BLOCK / MAX_FRAME) {
        input.extend([0x00, 0x40, 0x00, CONTINUATION, 0, 0, 0, 0, 1]);
        input.extend(vec![0u8; MAX_FRAME]);
    }
    assert_eq!(rewriter.feed(&input, &mut Vec::new()), Err(RewriteError::BlockTooLarge { stream: 1 }));
}
