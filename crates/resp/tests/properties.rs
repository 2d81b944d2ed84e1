//! Seeded randomized tests of both decoders (thousands of cases per run, deterministic):
//! hostile bytes never panic and never make a decoder reserve memory beyond a bound; every
//! valid encoding decodes back to its value, whole or split at any byte boundaries; and a
//! truncated valid frame asks for more bytes instead of failing.
//!
//! Set `RESP_PROPTEST_SEED` to explore other seeds and `RESP_PROPTEST_CASES` for more cases.

use bytes::{Bytes, BytesMut};
use flotilla_resp::{Decoder, Limits, Request, RequestDecoder, Value};

/// SplitMix64: tiny, seedable, good enough to drive test-case generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, max_len: usize, alphabet: Option<&[u8]>) -> Bytes {
        let len = self.below(max_len + 1);
        let data: Vec<u8> = (0..len)
            .map(|_| match alphabet {
                Some(a) => a[self.below(a.len())],
                None => self.next() as u8,
            })
            .collect();
        Bytes::from(data)
    }
}

fn seed() -> u64 {
    std::env::var("RESP_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F10A)
}

fn cases() -> usize {
    std::env::var("RESP_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

const LINE_SAFE: &[u8] = b"abcXYZ 019:-_+*$%~#,.(){}|!=\t";
const MARKERS: &[u8] = b"+-:$*_#,(!=%~>|?";

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(13) {
        0 => Value::SimpleString(rng.bytes(12, Some(LINE_SAFE))),
        1 => Value::Error(rng.bytes(12, Some(LINE_SAFE))),
        2 => Value::Integer(rng.next() as i64 >> rng.below(64)),
        3 => Value::BulkString(rng.bytes(40, None)),
        4 => Value::NullBulkString,
        5 => Value::NullArray,
        6 => Value::Null,
        7 => Value::Double(double(rng)),
        8 => Value::Boolean(rng.chance(2)),
        9 => Value::BigNumber(big_number(rng)),
        10 => Value::BlobError(rng.bytes(20, None)),
        11 => Value::VerbatimString {
            format: [rng.next() as u8, rng.next() as u8, rng.next() as u8],
            text: rng.bytes(20, None),
        },
        _ => Value::BulkString(Bytes::new()),
    }
}

/// Any double but NaN (NaN != NaN would break equality checks; it has its own unit test).
fn double(rng: &mut Rng) -> f64 {
    match rng.below(4) {
        0 => f64::INFINITY,
        1 => f64::NEG_INFINITY,
        2 => (rng.next() as i32) as f64 / 64.0,
        _ => {
            let d = f64::from_bits(rng.next());
            if d.is_nan() {
                0.5
            } else {
                d
            }
        }
    }
}

fn big_number(rng: &mut Rng) -> Bytes {
    let mut digits = rng.bytes(30, Some(b"0123456789")).to_vec();
    if digits.is_empty() {
        digits.push(b'7');
    }
    if rng.chance(3) {
        digits.insert(0, b'-');
    }
    Bytes::from(digits)
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    if depth == 0 || rng.chance(2) {
        return scalar(rng);
    }
    let len = rng.below(5);
    let items = |rng: &mut Rng| (0..len).map(|_| value(rng, depth - 1)).collect::<Vec<_>>();
    let pairs = |rng: &mut Rng| {
        (0..len)
            .map(|_| (value(rng, depth - 1), value(rng, depth - 1)))
            .collect::<Vec<_>>()
    };
    match rng.below(5) {
        0 => Value::Array(items(rng)),
        1 => Value::Set(items(rng)),
        2 => Value::Push(items(rng)),
        3 => Value::Map(pairs(rng)),
        _ => Value::Attribute {
            attributes: pairs(rng),
            value: Box::new(value(rng, depth - 1)),
        },
    }
}

/// Feeds `wire` in chunks whose sizes `rng` picks (or one byte at a time), checking that every
/// call before the last bytes arrive asks for more, and returns the decoded values.
fn decode_in_chunks(wire: &[u8], rng: &mut Rng, byte_by_byte: bool) -> Vec<Value> {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let step = if byte_by_byte { 1 } else { 1 + rng.below(17) };
        let end = (at + step).min(wire.len());
        buf.extend_from_slice(&wire[at..end]);
        at = end;
        while let Some(v) = decoder.decode(&mut buf).expect("valid input must decode") {
            out.push(v);
        }
    }
    assert!(buf.is_empty() && !decoder.is_mid_frame());
    out
}

#[test]
fn valid_values_round_trip_whole_split_and_truncated() {
    let mut rng = Rng(seed());
    for case in 0..cases() {
        let original = value(&mut rng, 4);
        let wire = original.to_bytes();

        // (b) whole
        let mut buf = wire.clone();
        let decoded = Decoder::default().decode(&mut buf);
        assert_eq!(decoded, Ok(Some(original.clone())), "case {case}: {wire:?}");
        assert!(buf.is_empty(), "case {case}");

        // (c) split at random boundaries, and at every boundary for small frames
        let chunked = decode_in_chunks(&wire, &mut rng, wire.len() < 200 || case % 10 == 0);
        assert_eq!(chunked, vec![original.clone()], "case {case}: {wire:?}");

        // (d) a fresh decoder given a strict prefix needs more bytes
        if !wire.is_empty() {
            let cut = rng.below(wire.len());
            let mut prefix = BytesMut::from(&wire[..cut]);
            assert_eq!(
                Decoder::default().decode(&mut prefix),
                Ok(None),
                "case {case}: prefix {cut} of {wire:?}"
            );
        }
    }
}

#[test]
fn pipelined_values_decode_in_order() {
    let mut rng = Rng(seed() ^ 1);
    for _ in 0..cases() / 10 {
        let values: Vec<Value> = (0..1 + rng.below(8)).map(|_| value(&mut rng, 3)).collect();
        let mut wire = BytesMut::new();
        values.iter().for_each(|v| v.encode(&mut wire));
        assert_eq!(decode_in_chunks(&wire, &mut rng, false), values);
    }
}

/// Random bytes biased toward RESP syntax, or a valid frame damaged a little.
fn hostile(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => rng.bytes(300, None).to_vec(),
        1 => {
            let mut alphabet = MARKERS.to_vec();
            alphabet.extend_from_slice(b"0123456789-?\r\n\r\n\r\ntf");
            rng.bytes(300, Some(&alphabet)).to_vec()
        }
        _ => {
            let mut wire = value(rng, 5).to_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                mutate(rng, &mut wire);
            }
            wire
        }
    }
}

fn mutate(rng: &mut Rng, wire: &mut Vec<u8>) {
    let at = rng.below(wire.len() + 1);
    match rng.below(4) {
        0 if at < wire.len() => wire[at] = rng.next() as u8,
        1 if at < wire.len() => {
            wire.remove(at);
        }
        2 => {
            let huge: &[u8] = [&b"99999999999"[..], b"-5", b"4294967296", b"1048577"][rng.below(4)];
            wire.splice(at..at, huge.iter().copied());
        }
        _ => wire.insert(at, MARKERS[rng.below(MARKERS.len())]),
    }
}

#[test]
fn hostile_bytes_never_panic_and_reserve_bounded_memory() {
    let mut rng = Rng(seed() ^ 2);
    let limits = Limits {
        max_depth: 8,
        ..Limits::for_replies()
    };
    let bound = limits.max_depth * (1024 + 8) * std::mem::size_of::<Value>() + 64 * 1024;
    for _ in 0..cases() * 3 {
        let wire = hostile(&mut rng);
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        for chunk in wire.chunks(1 + rng.below(64)) {
            buf.extend_from_slice(chunk);
            let mut result = decoder.decode(&mut buf);
            while let Ok(Some(_)) = result {
                result = decoder.decode(&mut buf);
            }
            assert!(decoder.reserved_bytes() <= bound, "{wire:?}");
            if result.is_err() {
                break;
            }
        }
    }
}

#[test]
fn hostile_bytes_never_panic_the_request_decoder() {
    let mut rng = Rng(seed() ^ 3);
    let bound = (1024 + 300) * std::mem::size_of::<Bytes>();
    for _ in 0..cases() * 3 {
        let wire = match rng.below(2) {
            0 => hostile(&mut rng),
            _ => {
                let mut wire = request(&mut rng).0;
                mutate(&mut rng, &mut wire);
                wire
            }
        };
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::from(&wire[..]);
        while let Ok(Some(request)) = decoder.decode(&mut buf) {
            assert!(request.argc() >= 1);
        }
        assert!(decoder.reserved_bytes() <= bound, "{wire:?}");
    }
}

/// A random request: its wire form (multibulk or, for plain words, sometimes inline) and argv.
fn request(rng: &mut Rng) -> (Vec<u8>, Vec<Bytes>) {
    let argc = 1 + rng.below(6);
    let inline = rng.chance(3);
    let argv: Vec<Bytes> = (0..argc)
        .map(|_| {
            if inline {
                let mut word = rng.bytes(8, Some(b"abcXYZ019:-_")).to_vec();
                word.push(b'w');
                Bytes::from(word)
            } else {
                rng.bytes(30, None)
            }
        })
        .collect();
    let mut wire = BytesMut::new();
    if inline {
        let line: Vec<u8> = argv.join(&b' ');
        wire.extend_from_slice(&line);
        wire.extend_from_slice(if rng.chance(2) { b"\r\n" } else { b"\n" });
    } else {
        Request::from_argv(argv.clone()).unwrap().encode(&mut wire);
    }
    (wire.to_vec(), argv)
}

#[test]
fn requests_round_trip_whole_and_split() {
    let mut rng = Rng(seed() ^ 4);
    for case in 0..cases() {
        let batch: Vec<(Vec<u8>, Vec<Bytes>)> =
            (0..1 + rng.below(4)).map(|_| request(&mut rng)).collect();
        let wire: Vec<u8> = batch.iter().flat_map(|(w, _)| w.clone()).collect();
        let expected: Vec<Vec<Bytes>> = batch.into_iter().map(|(_, a)| a).collect();

        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let end = (at + 1 + rng.below(9)).min(wire.len());
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            while let Some(request) = decoder.decode(&mut buf).expect("valid request") {
                got.push(request.into_argv());
            }
        }
        assert_eq!(got, expected, "case {case}: {wire:?}");
        assert!(buf.is_empty());
    }
}
