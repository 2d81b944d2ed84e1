//! The REST request bodies, decoded the way the API's `parse` does (serde_path_to_error over
//! serde_json), then the checks the handlers run on them.
//!
//! Input: one selector byte (which body) and the body. Checks, beyond "no panic": an accepted
//! body re-encodes to JSON that decodes to the same request; the client limits a database body
//! asks for apply and check without panicking, and an engine version parses or is refused.
#![no_main]

use flotilla_model::rest::{
    BdbCreate, BdbUpdate, BdbUpgrade, BootstrapRequest, ClusterUpdate, ClusterUpgradeRequest,
    NodeUpgradeRequest, PrimaryNodeChange, ShardMigrateRequest,
};
use flotilla_model::{ClientLimits, ClientLimitsChange, EngineVersion};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => {
            if let Some(create) = round_trip::<BdbCreate>(body) {
                limits(&create.limits());
                if let Some(version) = &create.redis_version {
                    let _ = version.parse::<EngineVersion>();
                }
            }
        }
        1 => {
            if let Some(update) = round_trip::<BdbUpdate>(body) {
                limits(&update.limits());
            }
        }
        2 => drop(round_trip::<BdbUpgrade>(body)),
        3 => drop(round_trip::<BootstrapRequest>(body)),
        4 => drop(round_trip::<ClusterUpdate>(body)),
        5 => drop(round_trip::<ShardMigrateRequest>(body)),
        6 => drop(round_trip::<PrimaryNodeChange>(body)),
        7 => drop(round_trip::<NodeUpgradeRequest>(body)),
        _ => drop(round_trip::<ClusterUpgradeRequest>(body)),
    }
});

/// Decodes `body` as the API does; an accepted body must survive its own encoding.
fn round_trip<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let mut json = serde_json::Deserializer::from_slice(body);
    let request: T = serde_path_to_error::deserialize(&mut json).ok()?;
    let encoded = serde_json::to_string(&request).expect("a request encodes");
    let decoded: T =
        serde_json::from_str(&encoded).unwrap_or_else(|e| panic!("{encoded} does not decode: {e}"));
    assert_eq!(decoded, request, "{encoded}");
    Some(request)
}

/// The handlers' use of asked limits: applied to the defaults, then checked.
fn limits(change: &ClientLimitsChange) {
    let mut limits = ClientLimits::default();
    limits.apply(change);
    let _ = limits.check();
}
