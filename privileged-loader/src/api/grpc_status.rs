//! The status a caller sees when its request could not be read, as gRPC defines it, and
//! never more than a bounded echo of what it sent. tonic answers an undecodable protobuf
//! with INTERNAL and an oversized message with OUT_OF_RANGE; gRPC says INVALID_ARGUMENT
//! and RESOURCE_EXHAUSTED. Both are rewritten in the answer's headers (tonic answers these
//! before any handler runs, as "trailers-only" responses).
use tonic::{Code, Status};

/// Longest `grpc-message` sent back: error texts may quote the caller's input.
pub const MAX_MESSAGE_CHARS: usize = 256;

/// Applied to every response of the server (as a `map_response` layer).
pub fn fix_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let fixed = Status::new(standard_code(&status), bounded(status.message()));
    if fixed.code() != status.code() || fixed.message() != status.message() {
        // Writing a status built from valid UTF-8 into headers cannot fail.
        let _ = fixed.add_header(response.headers_mut());
    }
    response
}

fn standard_code(status: &Status) -> Code {
    match status.code() {
        Code::Internal if status.message().starts_with("failed to decode Protobuf message") => {
            Code::InvalidArgument
        }
        Code::OutOfRange if status.message().contains("decoded message length too large") => {
            Code::ResourceExhausted
        }
        code => code,
    }
}

/// `message` cut to `MAX_MESSAGE_CHARS` characters, saying how much was cut.
pub fn bounded(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message.to_string(),
        Some((cut, _)) => format!("{}… ({} more bytes not shown)", &message[..cut], message.len() - cut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: Status) -> Status {
        let response = fix_status(status.into_http::<()>());
        Status::from_header_map(response.headers()).expect("a status")
    }

    #[test]
    fn undecodable_protobuf_is_invalid_argument_and_oversized_is_resource_exhausted() {
        let bad = answered(Status::internal("failed to decode Protobuf message: invalid wire type"));
        assert_eq!(bad.code(), Code::InvalidArgument);
        let big = answered(Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ));
        assert_eq!(big.code(), Code::ResourceExhausted);
        assert_eq!(answered(Status::internal("map read failed")).code(), Code::Internal);
    }

    #[test]
    fn a_long_message_is_cut_and_says_so() {
        let long = format!("invalid source address {:?}", "9".repeat(4_000_000));
        let status = answered(Status::invalid_argument(long));
        assert!(status.message().chars().count() < MAX_MESSAGE_CHARS + 40, "{}", status.message().len());
        assert!(status.message().ends_with("more bytes not shown)"), "{}", status.message());
    }
}
