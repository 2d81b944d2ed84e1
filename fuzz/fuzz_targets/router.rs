//! The router (request -> route) on arbitrary requests and slot maps.
//!
//! Checks, beyond "no panic": a slot is within the 16,384 slots; a split has one part per
//! shard, each on the shard owning its keys, and its parts' key positions cover the request's
//! keys exactly once, so merging well-formed part replies gives one reply per key; a rejection
//! is written as one RESP error line.
#![no_main]

use bytes::{Bytes, BytesMut};
use flotilla_proxy::route::{route, Route, Split};
use flotilla_proxy::{key_slot, Merge, SlotMap, SLOT_COUNT};
use flotilla_resp::{Limits, Request, RequestDecoder, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&layout, input)) = data.split_first() else {
        return;
    };
    let slots = slot_map(layout);
    let mut decoder = RequestDecoder::new(Limits::for_requests());
    let mut buf = BytesMut::from(input);
    while let Ok(Some(request)) = decoder.decode(&mut buf) {
        check(&request, &slots);
    }
    // Also the words of the input as one request, the shape the fuzzer finds fastest.
    let words: Vec<Bytes> = input
        .split(|&b| b == b' ')
        .map(Bytes::copy_from_slice)
        .collect();
    if let Some(request) = Request::from_argv(words) {
        check(&request, &slots);
    }
});

/// An even map of 1-16 shards, or (odd layouts) one whose owners interleave.
fn slot_map(layout: u8) -> SlotMap {
    let shards = usize::from(layout % 16) + 1;
    if layout & 0x80 == 0 {
        return SlotMap::even(shards).expect("1-16 shards");
    }
    let owners = (0..usize::from(SLOT_COUNT))
        .map(|slot| ((slot / 7) % shards) as u16)
        .collect();
    SlotMap::from_owners(owners).expect("16384 owners")
}

fn check(request: &Request, slots: &SlotMap) {
    let decision = route(request, slots);
    if let Some(rejection) = decision.rejection(request) {
        let mut line = BytesMut::new();
        flotilla_resp::write_error(&mut line, &rejection.to_string());
        let body = &line[..line.len() - 2];
        assert!(line.ends_with(b"\r\n") && !body.contains(&b'\r') && !body.contains(&b'\n'));
    }
    match &decision.route {
        Route::Slot(slot) => assert!(*slot < SLOT_COUNT),
        Route::Split(split) => check_split(split, slots),
        Route::Scan(step) => assert!(step.shard.0 < slots.shard_count()),
        _ => {}
    }
}

fn check_split(split: &Split, slots: &SlotMap) {
    let mut seen = vec![false; split.key_count];
    for part in &split.parts {
        assert!(!part.positions.is_empty());
        for &position in &part.positions {
            assert!(!std::mem::replace(&mut seen[position], true), "key twice");
        }
        if let Some(key) = part.request.arg(1) {
            assert_eq!(slots.shard_of(key_slot(key)), part.shard);
        }
    }
    assert!(seen.iter().all(|&s| s), "a key in no part");
    if split.merge != Merge::ArrayInRequestOrder {
        return;
    }
    let replies = split
        .parts
        .iter()
        .map(|part| {
            let values = part
                .positions
                .iter()
                .map(|&p| Value::Integer(p as i64))
                .collect();
            Value::Array(values)
        })
        .collect();
    let expected = (0..split.key_count)
        .map(|p| Value::Integer(p as i64))
        .collect();
    assert_eq!(split.merge(replies), Value::Array(expected));
}
