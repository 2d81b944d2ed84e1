//! Every RESP2/RESP3 type: decoding from the wire, encoding back, and the RESP2 downgrade.

use bytes::{Bytes, BytesMut};
use flotilla_resp::{Decoder, Limits, Protocol, ProtocolError, Value};

fn decode_all(wire: &[u8]) -> Result<Option<Value>, ProtocolError> {
    let mut buf = BytesMut::from(wire);
    let value = Decoder::default().decode(&mut buf)?;
    if value.is_some() {
        assert!(buf.is_empty(), "leftover bytes after {wire:?}");
    }
    Ok(value)
}

/// Decodes `wire` to `expected` and encodes `expected` back to exactly `wire`.
fn round_trip(wire: &[u8], expected: Value) {
    assert_eq!(
        decode_all(wire),
        Ok(Some(expected.clone())),
        "decoding {wire:?}"
    );
    assert_eq!(&expected.to_bytes()[..], wire, "encoding {expected:?}");
}

fn resp2(value: &Value) -> Vec<u8> {
    let mut buf = BytesMut::new();
    value.encode_resp2(&mut buf);
    buf.to_vec()
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn resp2_scalars() {
    round_trip(b"+OK\r\n", Value::simple("OK"));
    round_trip(b"+\r\n", Value::simple(""));
    round_trip(b"-ERR unknown\r\n", Value::error("ERR unknown"));
    round_trip(b":0\r\n", Value::Integer(0));
    round_trip(b":-9223372036854775808\r\n", Value::Integer(i64::MIN));
    round_trip(b":9223372036854775807\r\n", Value::Integer(i64::MAX));
    round_trip(b"$5\r\nhello\r\n", Value::bulk("hello"));
    round_trip(b"$0\r\n\r\n", Value::bulk(""));
    round_trip(b"$4\r\na\r\nb\r\n", Value::bulk("a\r\nb"));
    round_trip(b"$-1\r\n", Value::NullBulkString);
}

#[test]
fn resp2_arrays() {
    round_trip(b"*0\r\n", Value::Array(vec![]));
    round_trip(b"*-1\r\n", Value::NullArray);
    round_trip(
        b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n$-1\r\n",
        Value::Array(vec![
            Value::Integer(1),
            Value::bulk("x"),
            Value::Array(vec![Value::NullBulkString]),
        ]),
    );
}

#[test]
fn resp3_scalars() {
    round_trip(b"_\r\n", Value::Null);
    round_trip(b"#t\r\n", Value::Boolean(true));
    round_trip(b"#f\r\n", Value::Boolean(false));
    round_trip(b",1.5\r\n", Value::Double(1.5));
    round_trip(b",-0.25\r\n", Value::Double(-0.25));
    round_trip(b",inf\r\n", Value::Double(f64::INFINITY));
    round_trip(b",-inf\r\n", Value::Double(f64::NEG_INFINITY));
    round_trip(b",1e300\r\n", Value::Double(1e300));
    round_trip(
        b"(3492890328409238509324850943850943825024385\r\n",
        Value::BigNumber(b("3492890328409238509324850943850943825024385")),
    );
    round_trip(b"(-12\r\n", Value::BigNumber(b("-12")));
    round_trip(
        b"!21\r\nSYNTAX invalid syntax\r\n",
        Value::BlobError(b("SYNTAX invalid syntax")),
    );
    round_trip(
        b"=15\r\ntxt:Some string\r\n",
        Value::VerbatimString {
            format: *b"txt",
            text: b("Some string"),
        },
    );
}

#[test]
fn resp3_doubles_accept_other_spellings() {
    assert_eq!(decode_all(b",10\r\n"), Ok(Some(Value::Double(10.0))));
    assert_eq!(decode_all(b",1.23E+2\r\n"), Ok(Some(Value::Double(123.0))));
    match decode_all(b",nan\r\n") {
        Ok(Some(Value::Double(d))) => assert!(d.is_nan()),
        other => panic!("nan decoded as {other:?}"),
    }
    assert_eq!(&Value::Double(f64::NAN).to_bytes()[..], b",nan\r\n");
}

#[test]
fn resp3_aggregates() {
    round_trip(
        b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
        Value::Map(vec![
            (Value::simple("first"), Value::Integer(1)),
            (Value::simple("second"), Value::Integer(2)),
        ]),
    );
    round_trip(b"%0\r\n", Value::Map(vec![]));
    round_trip(
        b"~2\r\n+a\r\n#f\r\n",
        Value::Set(vec![Value::simple("a"), Value::Boolean(false)]),
    );
    round_trip(
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        Value::Push(vec![
            Value::bulk("message"),
            Value::bulk("ch"),
            Value::bulk("hi"),
        ]),
    );
    round_trip(
        b"|1\r\n+ttl\r\n:3600\r\n*2\r\n:1\r\n:2\r\n",
        Value::Attribute {
            attributes: vec![(Value::simple("ttl"), Value::Integer(3600))],
            value: Box::new(Value::Array(vec![Value::Integer(1), Value::Integer(2)])),
        },
    );
    round_trip(
        b"*2\r\n|0\r\n_\r\n:5\r\n",
        Value::Array(vec![
            Value::Attribute {
                attributes: vec![],
                value: Box::new(Value::Null),
            },
            Value::Integer(5),
        ]),
    );
}

#[test]
fn resp2_downgrade_of_resp3_types() {
    let map = Value::Map(vec![(Value::bulk("k"), Value::Double(2.5))]);
    assert_eq!(resp2(&map), b"*2\r\n$1\r\nk\r\n$3\r\n2.5\r\n");
    assert_eq!(resp2(&Value::Null), b"$-1\r\n");
    assert_eq!(resp2(&Value::Boolean(true)), b":1\r\n");
    assert_eq!(resp2(&Value::Boolean(false)), b":0\r\n");
    assert_eq!(resp2(&Value::Set(vec![Value::Integer(1)])), b"*1\r\n:1\r\n");
    assert_eq!(
        resp2(&Value::Push(vec![Value::Integer(1)])),
        b"*1\r\n:1\r\n"
    );
    assert_eq!(resp2(&Value::BigNumber(b("123"))), b"$3\r\n123\r\n");
    assert_eq!(resp2(&Value::BlobError(b("ERR x\ny"))), b"-ERR x y\r\n");
    let verbatim = Value::VerbatimString {
        format: *b"txt",
        text: b("hi"),
    };
    assert_eq!(resp2(&verbatim), b"$2\r\nhi\r\n");
    let attribute = Value::Attribute {
        attributes: vec![(Value::bulk("a"), Value::Integer(1))],
        value: Box::new(Value::Integer(7)),
    };
    assert_eq!(resp2(&attribute), b":7\r\n");
    // RESP2 values are the same in both protocols.
    assert_eq!(resp2(&Value::NullArray), b"*-1\r\n");
    assert_eq!(resp2(&Value::simple("OK")), b"+OK\r\n");
}

#[test]
fn line_values_never_split_the_stream() {
    assert_eq!(&Value::error("ERR a\r\nb").to_bytes()[..], b"-ERR a  b\r\n");
    assert_eq!(&Value::simple("x\ny").to_bytes()[..], b"+x y\r\n");
}

#[test]
fn helpers_write_common_replies() {
    let mut buf = BytesMut::new();
    flotilla_resp::write_ok(&mut buf);
    flotilla_resp::write_error(&mut buf, "ERR Protocol error: x");
    flotilla_resp::write_integer(&mut buf, -3);
    flotilla_resp::write_bulk(&mut buf, b"v");
    flotilla_resp::write_null(&mut buf, Protocol::Resp2);
    flotilla_resp::write_null(&mut buf, Protocol::Resp3);
    flotilla_resp::write_null_array(&mut buf);
    flotilla_resp::write_array_header(&mut buf, 2);
    flotilla_resp::write_simple(&mut buf, b"PONG");
    flotilla_resp::write_map_header(&mut buf, 1, Protocol::Resp2);
    flotilla_resp::write_map_header(&mut buf, 1, Protocol::Resp3);
    assert_eq!(
        &buf[..],
        &b"+OK\r\n-ERR Protocol error: x\r\n:-3\r\n$1\r\nv\r\n$-1\r\n_\r\n*-1\r\n*2\r\n+PONG\r\n*2\r\n%1\r\n"[..]
    );
}

#[test]
fn several_values_in_one_buffer_come_out_in_order() {
    let mut buf = BytesMut::from(&b"+a\r\n:1\r\n$1\r\nz\r\n+par"[..]);
    let mut decoder = Decoder::default();
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Value::simple("a"))));
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Value::Integer(1))));
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Value::bulk("z"))));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"tial\r\n");
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Value::simple("partial"))));
}

#[test]
fn malformed_input_is_an_error() {
    let cases: &[(&[u8], ProtocolError)] = &[
        (b"?x\r\n", ProtocolError::InvalidType(b'?')),
        (b":12a\r\n", ProtocolError::InvalidInteger),
        (b":\r\n", ProtocolError::InvalidInteger),
        (b"$-2\r\n", ProtocolError::InvalidBulkLength),
        (b"$x\r\n", ProtocolError::InvalidBulkLength),
        (b"$3\r\nabcde", ProtocolError::ExpectedCrlf),
        (b"*-2\r\n", ProtocolError::InvalidMultibulkLength),
        (b"%-1\r\n", ProtocolError::InvalidMultibulkLength),
        (b"#x\r\n", ProtocolError::InvalidBoolean),
        (b"_x\r\n", ProtocolError::InvalidNull),
        (b",abc\r\n", ProtocolError::InvalidDouble),
        (b"(12a\r\n", ProtocolError::InvalidBigNumber),
        (b"(\r\n", ProtocolError::InvalidBigNumber),
        (b"=3\r\ntxt\r\n", ProtocolError::InvalidVerbatim),
        (b"=5\r\ntxt;x\r\n", ProtocolError::InvalidVerbatim),
        (b"$?\r\n", ProtocolError::Streamed),
        (b"*?\r\n", ProtocolError::Streamed),
        (b"+a\rb\r\n", ProtocolError::ExpectedCrlf),
    ];
    for (wire, error) in cases {
        assert_eq!(decode_all(wire).as_ref(), Err(error), "input {wire:?}");
    }
}

#[test]
fn limits_are_enforced_before_the_bytes_arrive() {
    let limits = Limits {
        max_bulk_len: 10,
        max_elements: 3,
        max_depth: 2,
        max_line_len: 8,
    };
    let decode = |wire: &[u8]| Decoder::new(limits).decode(&mut BytesMut::from(wire));
    assert_eq!(
        decode(b"$11\r\n"),
        Err(ProtocolError::BulkTooLong { len: 11, limit: 10 })
    );
    assert_eq!(decode(b"$10\r\n"), Ok(None));
    assert_eq!(
        decode(b"*4\r\n"),
        Err(ProtocolError::TooManyElements { count: 4, limit: 3 })
    );
    assert_eq!(
        decode(b"%4\r\n"),
        Err(ProtocolError::TooManyElements { count: 4, limit: 3 })
    );
    assert_eq!(
        decode(b"*1\r\n*1\r\n*1\r\n"),
        Err(ProtocolError::TooDeep { limit: 2 })
    );
    assert_eq!(
        decode(b"*1\r\n*1\r\n*0\r\n"),
        Ok(Some(Value::Array(vec![Value::Array(vec![Value::Array(
            vec![]
        )])])))
    );
    assert_eq!(
        decode(b"+123456789"),
        Err(ProtocolError::LineTooLong { limit: 8 })
    );
    assert_eq!(
        Decoder::default().decode(&mut BytesMut::from(&b"$99999999999999999999999\r\n"[..])),
        Err(ProtocolError::InvalidBulkLength)
    );
}

#[test]
fn a_huge_claimed_count_reserves_little() {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"*16000000\r\n:1\r\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(decoder.is_mid_frame());
    assert!(
        decoder.reserved_bytes() < 1024 * 1024,
        "{}",
        decoder.reserved_bytes()
    );
}
