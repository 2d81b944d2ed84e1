//! Client requests: multibulk and inline forms, Redis's quirks, limits, and re-encoding.

use bytes::{Bytes, BytesMut};
use flotilla_resp::{CommandName, Limits, ProtocolError, Request, RequestDecoder};

fn decode_one(wire: &[u8]) -> Result<Option<Request>, ProtocolError> {
    RequestDecoder::default().decode(&mut BytesMut::from(wire))
}

fn argv(request: &Request) -> Vec<&[u8]> {
    request.argv().iter().map(|a| &a[..]).collect()
}

#[test]
fn multibulk_request_gives_upper_cased_name_and_args() {
    let request = decode_one(b"*3\r\n$3\r\nsEt\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(request.name(), "SET");
    assert_eq!(&request.raw_name()[..], b"sEt");
    assert_eq!(request.argc(), 3);
    assert_eq!(argv(&request), vec![&b"sEt"[..], b"k", b"v\r\n"]);
    assert_eq!(request.args().len(), 2);
    assert_eq!(request.arg(1).map(|a| &a[..]), Some(&b"k"[..]));
    assert_eq!(request.arg(3), None);
}

#[test]
fn inline_requests_split_like_redis() {
    let request = decode_one(b"ping\r\n").unwrap().unwrap();
    assert_eq!(request.name(), "PING");
    assert_eq!(request.argc(), 1);

    let request = decode_one(b"set  k\t\"a b\\x41\\n\"  'it\\'s'\n")
        .unwrap()
        .unwrap();
    assert_eq!(argv(&request), vec![&b"set"[..], b"k", b"a bA\n", b"it's"]);

    assert_eq!(
        decode_one(b"set \"a\"b\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
    assert_eq!(
        decode_one(b"set \"ab\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
    assert_eq!(
        decode_one(b"set 'ab\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
}

#[test]
fn empty_requests_are_skipped() {
    let mut buf = BytesMut::from(&b"\r\n*0\r\n*-1\r\n   \r\nPING\r\n"[..]);
    let request = RequestDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(request.name(), "PING");
    assert!(buf.is_empty());
}

#[test]
fn pipelined_requests_arrive_in_order_across_reads() {
    let wire = b"*1\r\n$4\r\nPING\r\nECHO hi\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let mut decoder = RequestDecoder::default();
    let mut buf = BytesMut::new();
    let mut names = Vec::new();
    for byte in wire {
        buf.extend_from_slice(&[*byte]);
        while let Some(request) = decoder.decode(&mut buf).unwrap() {
            names.push(request.name().to_owned());
        }
    }
    assert_eq!(names, ["PING", "ECHO", "GET"]);
    assert!(!decoder.is_mid_request());
}

#[test]
fn malformed_requests_are_errors() {
    assert_eq!(
        decode_one(b"*1\r\n:1\r\n"),
        Err(ProtocolError::ExpectedBulk(b':'))
    );
    assert_eq!(
        decode_one(b"*x\r\n"),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        decode_one(b"*1\r\n$-1\r\n"),
        Err(ProtocolError::InvalidBulkLength)
    );
    assert_eq!(
        decode_one(b"*1\r\n$1\r\nab\r\n"),
        Err(ProtocolError::ExpectedCrlf)
    );
    assert_eq!(
        decode_one(b"*2000000\r\n"),
        Err(ProtocolError::TooManyElements {
            count: 2_000_000,
            limit: 1024 * 1024
        })
    );
    assert_eq!(
        decode_one(b"*1\r\n$536870913\r\n"),
        Err(ProtocolError::BulkTooLong {
            len: 536_870_913,
            limit: 512 * 1024 * 1024
        })
    );
    // A claimed 512 MiB argument is fine until its bytes arrive.
    assert_eq!(decode_one(b"*1\r\n$536870912\r\nabc"), Ok(None));
}

#[test]
fn inline_requests_are_bounded() {
    let limits = Limits {
        max_line_len: 16,
        ..Limits::for_requests()
    };
    let mut decoder = RequestDecoder::new(limits);
    let mut buf = BytesMut::from(&b"GET aaaaaaaaaaaa"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"b");
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::LineTooLong { limit: 16 })
    );
}

#[test]
fn error_text_matches_redis() {
    assert_eq!(
        ProtocolError::ExpectedBulk(b':').to_string(),
        "Protocol error: expected '$', got ':'"
    );
    assert_eq!(
        ProtocolError::UnbalancedQuotes.to_string(),
        "Protocol error: unbalanced quotes in request"
    );
}

#[test]
fn request_encodes_for_a_shard() {
    let request = Request::new("get", [Bytes::from_static(b"k\r\n")]);
    let mut buf = BytesMut::new();
    request.encode(&mut buf);
    assert_eq!(&buf[..], b"*2\r\n$3\r\nget\r\n$3\r\nk\r\n\r\n");
    let again = RequestDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(again, request);
}

#[test]
fn command_names_are_bounded_and_ascii() {
    assert_eq!(CommandName::new(b"client").as_str(), "CLIENT");
    assert_eq!(CommandName::new(&[b'a'; 33]).as_str(), "");
    assert_eq!(CommandName::new("gét".as_bytes()).as_str(), "");
    assert_eq!(Request::from_argv(vec![]), None);
}

#[test]
fn unauthenticated_requests_are_bounded_at_their_headers() {
    let mut decoder = RequestDecoder::default();
    decoder.set_unauthenticated(true);
    // A 500 MB bulk is refused from its header alone, before any payload arrives.
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$500000000\r\n"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::UnauthenticatedBulkLength)
    );
    assert_eq!(
        ProtocolError::UnauthenticatedBulkLength.to_string(),
        "Protocol error: unauthenticated bulk length"
    );
    let mut decoder = RequestDecoder::default();
    decoder.set_unauthenticated(true);
    let mut buf = BytesMut::from(&b"*11\r\n"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::UnauthenticatedMultibulkLength)
    );
    assert_eq!(
        ProtocolError::UnauthenticatedMultibulkLength.to_string(),
        "Protocol error: unauthenticated multibulk length"
    );
    // At the bounds, and once authenticated, requests pass.
    let mut decoder = RequestDecoder::default();
    decoder.set_unauthenticated(true);
    let mut wire = b"*10\r\n".to_vec();
    for _ in 0..9 {
        wire.extend_from_slice(b"$1\r\nx\r\n");
    }
    wire.extend_from_slice(format!("$16384\r\n{}\r\n", "y".repeat(16384)).as_bytes());
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().argc(), 10);
    decoder.set_unauthenticated(false);
    let mut buf = BytesMut::from(&b"*11\r\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn the_query_buffer_limit_counts_the_request_not_yet_decoded() {
    let mut decoder = RequestDecoder::default();
    decoder.set_query_buffer_limit(Some(100));
    let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$60\r\n"[..]);
    buf.extend_from_slice(&[b'a'; 60]);
    buf.extend_from_slice(b"\r\n$1000\r\n");
    buf.extend_from_slice(&[b'b'; 30]);
    assert_eq!(decoder.decode(&mut buf), Ok(None), "63 + 30 bytes");
    assert!(decoder.buffered_bytes() >= 63);
    buf.extend_from_slice(&[b'b'; 30]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::QueryBufferLimit { limit: 100 })
    );
    // Complete requests of any size up to the limit pass, and the count restarts after each.
    let mut decoder = RequestDecoder::default();
    decoder.set_query_buffer_limit(Some(100));
    for _ in 0..3 {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$80\r\n"[..]);
        buf.extend_from_slice(&[b'k'; 80]);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().argc(), 2);
        assert_eq!(decoder.buffered_bytes(), 0);
    }
}

/// The malformed requests of Redis 7.0's `unit/protocol`, answered with Redis's messages.
#[test]
fn malformed_requests_get_redis_protocol_errors() {
    // A negative count is an empty request to Redis: skipped, the next request runs.
    let request = decode_one(b"*-10\r\n*1\r\n$4\r\nPING\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(request.name(), "PING");
    let cases: [(&[u8], &str); 6] = [
        (
            b"*3000000000\r\n",
            "Protocol error: invalid multibulk length",
        ),
        (b"*20\r\n*", "Protocol error: expected '$', got '*'"),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
            "Protocol error: expected '$', got 'f'",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n",
            "Protocol error: invalid bulk length",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
            "Protocol error: invalid bulk length",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
            "Protocol error: invalid bulk length",
        ),
    ];
    for (wire, expected) in cases {
        let error = decode_one(wire).expect_err("refused").to_string();
        assert!(
            error.starts_with(expected),
            "{}: {error}",
            String::from_utf8_lossy(wire)
        );
    }
    let unbalanced = decode_one(b"set \"\"\"test-key\"\"\" test-value\r\n");
    assert_eq!(
        unbalanced.expect_err("refused").to_string(),
        "Protocol error: unbalanced quotes in request"
    );
    let huge = vec![b'x'; 70 * 1024];
    let error = decode_one(&huge).expect_err("refused").to_string();
    assert!(
        error.starts_with("Protocol error: too big inline request"),
        "{error}"
    );
}
