//! The store's command decoding: the JSON of a [`Command`] as it arrives in a Raft log entry,
//! applied to a cluster state.
//!
//! Input: commands, one JSON document per line. Checks, beyond "no panic": a decoded command
//! re-encodes to JSON that decodes to the same command and encodes the same again; applying any
//! decoded command to a state (a fresh one holding a cluster, two nodes and a database) never
//! panics, and the state after it survives its own JSON (what a Raft snapshot holds).
#![no_main]

use flotilla_model::{ClusterState, Command};
use libfuzzer_sys::fuzz_target;

/// A cluster with two nodes and a replicated database, so commands have objects to act on.
const PRELUDE: &[&str] = &[
    r#"{"kind":"create_cluster","name":"c1","credentials":{"username":"admin","password_hash":"$argon2id$v=19$x"},"secret":"s3cret","created_at":1700000000,"node":{"addr":"127.0.0.11","software_version":"0.2.0","os":"Debian GNU/Linux 12 (bookworm)"},"cluster_version":"0.2.0"}"#,
    r#"{"kind":"add_node","node":{"addr":"127.0.0.12","software_version":"0.2.0","os":"Debian GNU/Linux 12 (bookworm)"}}"#,
    r#"{"kind":"create_bdb","bdb":{"name":"db1","port":12000,"memory_size":104857600,"shards_count":2,"replication":true,"data_persistence":"aof","redis_version":"redis-7.0","authentication_redis_pass":"pw"},"created_at":1700000001,"shards":[{"node_uid":1,"role":"master","assigned_slots":"0-8191","port":20001},{"node_uid":2,"role":"slave","assigned_slots":"0-8191","port":20001},{"node_uid":2,"role":"master","assigned_slots":"8192-16383","port":20002},{"node_uid":1,"role":"slave","assigned_slots":"8192-16383","port":20002}]}"#,
];

fuzz_target!(|data: &[u8]| {
    let mut state = ClusterState::default();
    for line in PRELUDE {
        state.apply(serde_json::from_str(line).expect("prelude decodes"));
    }
    for line in data.split(|&b| b == b'\n').take(16) {
        let Ok(command) = serde_json::from_slice::<Command>(line) else {
            continue;
        };
        let encoded = serde_json::to_string(&command).expect("a command encodes");
        let decoded: Command = serde_json::from_str(&encoded)
            .unwrap_or_else(|e| panic!("{encoded} does not decode: {e}"));
        assert_eq!(decoded, command, "{encoded}");
        assert_eq!(serde_json::to_string(&decoded).unwrap(), encoded);
        let _ = command.introduced_in();
        state.apply(command);
        let snapshot = serde_json::to_vec(&state).expect("a state encodes");
        let restored: ClusterState = serde_json::from_slice(&snapshot).unwrap_or_else(|e| {
            panic!(
                "{} does not decode: {e}",
                String::from_utf8_lossy(&snapshot)
            )
        });
        assert_eq!(restored, state);
    }
});
