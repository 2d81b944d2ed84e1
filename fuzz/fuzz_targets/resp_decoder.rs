//! The RESP decoders (shard replies and client requests) on arbitrary bytes.
//!
//! Checks, beyond "no panic, no unbounded allocation": the same bytes fed whole and fed in
//! small chunks decode to the same values and the same error; a decoded value re-encodes to
//! bytes that decode to a value with the same encoding; a decoded request re-encodes to the
//! same request; the decoders never reserve memory in proportion to a claimed count.
#![no_main]

use bytes::BytesMut;
use flotilla_resp::{Decoder, Limits, Request, RequestDecoder, Value};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches every limit check with short inputs.
const LIMITS: Limits = Limits {
    max_bulk_len: 4096,
    max_elements: 512,
    max_depth: 8,
    max_line_len: 256,
};

/// The decoder's own bound on what it reserves ahead of elements that arrived.
const MAX_PREALLOC: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 16) + 1;
    check_values(input, chunk);
    check_requests(input, chunk, false);
    check_requests(input, chunk, true);
});

/// Everything a decoder made of the input, and how it ended.
type Outcome<T> = (Vec<T>, Option<String>);

fn decode_values(input: &[u8], chunk: usize) -> Outcome<Value> {
    let mut decoder = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let bound = LIMITS.max_depth * MAX_PREALLOC * std::mem::size_of::<Value>() * 2;
            assert!(decoder.reserved_bytes() <= bound + input.len() * 64);
            match decoder.decode(&mut buf) {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                Err(e) => return (values, Some(e.to_string())),
            }
        }
    }
    (values, None)
}

fn check_values(input: &[u8], chunk: usize) {
    let whole = decode_values(input, input.len().max(1));
    let chunked = decode_values(input, chunk);
    assert_eq!(encode_all(&whole.0), encode_all(&chunked.0));
    assert_eq!(whole.1, chunked.1);
    for value in &whole.0 {
        let encoded = value.to_bytes();
        let (again, error) = decode_values(&encoded, encoded.len());
        assert_eq!(error, None, "{value:?} re-encoded as {encoded:?}");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].to_bytes(), encoded);
    }
}

fn encode_all(values: &[Value]) -> Vec<BytesMut> {
    values.iter().map(Value::to_bytes).collect()
}

fn decode_requests(input: &[u8], chunk: usize, unauthenticated: bool) -> Outcome<Request> {
    let mut decoder = RequestDecoder::new(LIMITS);
    decoder.set_unauthenticated(unauthenticated);
    decoder.set_query_buffer_limit(Some(2048));
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let bound = MAX_PREALLOC * std::mem::size_of::<bytes::Bytes>();
            assert!(decoder.reserved_bytes() <= bound + input.len() * 64);
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(e) => return (requests, Some(e.to_string())),
            }
        }
    }
    (requests, None)
}

fn check_requests(input: &[u8], chunk: usize, unauthenticated: bool) {
    let whole = decode_requests(input, input.len().max(1), unauthenticated);
    let chunked = decode_requests(input, chunk, unauthenticated);
    // The query buffer limit counts what is buffered, which depends on how the bytes arrive:
    // only a run that ends without that error is compared whole.
    let limited = |o: &Outcome<Request>| o.1.as_deref().is_some_and(|e| e.contains("query"));
    if !limited(&whole) && !limited(&chunked) {
        assert_eq!(whole, chunked);
    }
    for request in &whole.0 {
        let mut encoded = BytesMut::new();
        request.encode(&mut encoded);
        let mut decoder = RequestDecoder::new(Limits::for_requests());
        let again = decoder
            .decode(&mut encoded)
            .expect("re-encoded request decodes");
        assert_eq!(again.as_ref(), Some(request));
        assert!(encoded.is_empty());
    }
}
