//! Stock gRPC clients over a unix socket: grpcio (≥ 1.57) and grpc-java send the socket's
//! path (e.g. `tmp%2Fl.sock`) as `:authority`, which the HTTP/2 layer (hyperium/h2) refuses
//! as malformed and resets the stream. On a unix socket the authority names nothing, so
//! the bytes a client sends are rewritten before h2 reads them: every header block is
//! decoded (HPACK, with the client's own dynamic table) and re-encoded as literals that
//! never touch h2's table, with an unparseable `:authority` replaced by `localhost`.
//! Every other frame passes through untouched. Pure: no I/O, fed bytes, returns bytes.
//!
//! Only connections that need it pay for it. The first header block decides: when its
//! `:authority` is valid (tonic, loaderctl, the controller), that block and everything
//! after it go to h2 as the client sent them, undecoded — h2's table then follows the
//! client's own. Decoding every request had cost each `LookupTranslation` ~40 µs (the HPACK
//! crate builds its Huffman table per string). A client that later changes its authority
//! to an invalid one gets those streams refused by h2, as without the rewriter.
use std::io::Write;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size h2 advertises (SETTINGS_MAX_FRAME_SIZE is left at its default): a
/// larger header frame is passed on untouched for h2 to refuse.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (compressed) closes the connection.
const MAX_BLOCK: usize = 64 * 1024;
/// The HPACK table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE default).
const TABLE_SIZE: usize = 4096;
const FALLBACK_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("header block of stream {stream} is larger than {MAX_BLOCK} bytes")]
    BlockTooLarge { stream: u32 },
    #[error("a CONTINUATION frame was expected for stream {expected}, got frame type {kind} on {stream}")]
    BrokenContinuation { expected: u32, kind: u8, stream: u32 },
    #[error("malformed HEADERS frame on stream {stream} (padding or priority past its end)")]
    MalformedFrame { stream: u32 },
    #[error("undecodable header block on stream {stream}: {reason}")]
    Hpack { stream: u32, reason: String },
}

struct PendingBlock {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    /// The block's frames as received, for a connection that turns out not to need them
    /// rewritten.
    raw: Vec<u8>,
}

/// What is done with a connection's header blocks, decided by the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No header block complete yet.
    Undecided,
    /// The first block's `:authority` was valid (or absent): every byte from that block on
    /// goes to h2 as sent; nothing is decoded.
    Passthrough,
    /// It was not: every block is decoded and re-encoded.
    Rewrite,
}

/// The rewriter of one connection's client-to-server bytes.
pub struct AuthorityRewriter {
    preface_left: usize,
    /// Payload bytes of a passed-through frame still to copy.
    passthrough_left: usize,
    input: Vec<u8>,
    block: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    mode: Mode,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            preface_left: PREFACE_LEN,
            passthrough_left: 0,
            input: Vec::new(),
            block: None,
            decoder,
            mode: Mode::Undecided,
        }
    }
}

impl AuthorityRewriter {
    /// Consumes `bytes` read from the client and appends what h2 should read to `out`.
    /// Incomplete header frames are held until the rest arrives.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if self.mode == Mode::Passthrough {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            if self.mode == Mode::Passthrough {
                out.extend_from_slice(&self.input[pos..]);
                pos = self.input.len();
                break;
            }
            let rest = &self.input[pos..];
            if self.preface_left > 0 || self.passthrough_left > 0 {
                let n = rest.len().min(self.preface_left.max(self.passthrough_left));
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[..n]);
                pos += n;
                if self.preface_left > 0 {
                    self.preface_left -= n;
                } else {
                    self.passthrough_left -= n;
                }
                continue;
            }
            let Some(header) = FrameHeader::parse(rest) else { break };
            // A stray CONTINUATION or an oversized header frame goes to h2 as sent, to be refused.
            let is_header_frame = header.len <= MAX_FRAME
                && (header.kind == HEADERS || (header.kind == CONTINUATION && self.block.is_some()));
            if let Some(block) = &self.block
                && (header.kind != CONTINUATION || header.stream != block.stream)
            {
                return Err(RewriteError::BrokenContinuation {
                    expected: block.stream,
                    kind: header.kind,
                    stream: header.stream,
                });
            }
            if !is_header_frame {
                out.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
                pos += FRAME_HEADER_LEN;
                self.passthrough_left = header.len;
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN + header.len {
                break;
            }
            let frame = rest[..FRAME_HEADER_LEN + header.len].to_vec();
            pos += frame.len();
            self.header_frame(&header, &frame, out)?;
        }
        self.input.drain(..pos);
        Ok(())
    }

    /// One HEADERS or CONTINUATION `frame` (its 9-byte header included).
    fn header_frame(
        &mut self,
        header: &FrameHeader,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let payload = &frame[FRAME_HEADER_LEN..];
        let fragment = if header.kind == HEADERS { headers_fragment(header, payload)? } else { payload };
        let block = self.block.get_or_insert_with(|| PendingBlock {
            stream: header.stream,
            end_stream: header.flags & END_STREAM != 0,
            fragment: Vec::new(),
            raw: Vec::new(),
        });
        if block.fragment.len() + fragment.len() > MAX_BLOCK {
            return Err(RewriteError::BlockTooLarge { stream: header.stream });
        }
        block.fragment.extend_from_slice(fragment);
        if self.mode == Mode::Undecided {
            block.raw.extend_from_slice(frame);
        }
        if header.flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.block.take() else { return Ok(()) };
        let fields = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| RewriteError::Hpack { stream: block.stream, reason: e.to_string() })?;
        if self.mode == Mode::Undecided {
            let invalid =
                fields.iter().any(|(name, value)| name == b":authority" && !is_valid_authority(value));
            if !invalid {
                // h2 decodes this block itself, so its table starts as the client's does.
                self.mode = Mode::Passthrough;
                out.extend_from_slice(&block.raw);
                return Ok(());
            }
            self.mode = Mode::Rewrite;
        }
        write_frames(block.stream, block.end_stream, &encode_literals(fields), out);
        Ok(())
    }
}

struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..FRAME_HEADER_LEN)?;
        Some(Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }
}

/// The header block fragment of a HEADERS payload, without padding and priority.
fn headers_fragment<'a>(header: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], RewriteError> {
    let malformed = || RewriteError::MalformedFrame { stream: header.stream };
    let (mut start, mut end) = (0, payload.len());
    if header.flags & PADDED != 0 {
        let pad = usize::from(*payload.first().ok_or_else(malformed)?);
        start = 1;
        end = end.checked_sub(pad).ok_or_else(malformed)?;
    }
    if header.flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end).ok_or_else(malformed)
}

/// Every field as "literal without indexing, new name" (RFC 7541 §6.2.2), no Huffman:
/// h2's decoder table stays empty, so it never depends on the client's table.
fn encode_literals(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        let value = if name == b":authority" && !is_valid_authority(&value) {
            FALLBACK_AUTHORITY.to_vec()
        } else {
            value
        };
        block.push(0);
        write_string(&name, &mut block);
        write_string(&value, &mut block);
    }
    block
}

fn write_string(s: &[u8], out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    let _ = out.write_all(s);
}

fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// One HEADERS frame, then CONTINUATION frames, each at most `MAX_FRAME` long.
fn write_frames(stream: u32, end_stream: bool, block: &[u8], out: &mut Vec<u8>) {
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![&[]] } else { block.chunks(MAX_FRAME).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i == last { END_HEADERS } else { 0 };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        let len = chunk.len().to_be_bytes();
        out.extend_from_slice(&len[len.len() - 3..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
