//! Routing decisions for every category of command, against real slot maps.

use bytes::Bytes;
use flotilla_proxy::command::{Merge, PubSubKind, TxStep};
use flotilla_proxy::{
    key_slot, route, InvalidRequest, LocalCommand, PubSubTarget, Rejection, Route, ShardIndex,
    SlotMap,
};
use flotilla_resp::{Request, Value};

fn req(words: &[&str]) -> Request {
    Request::from_argv(
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect(),
    )
    .expect("non-empty")
}

fn three() -> SlotMap {
    SlotMap::even(3).unwrap()
}

fn route_of(words: &[&str]) -> Route {
    route(&req(words), &three()).route
}

fn slot(key: &str) -> Route {
    Route::Slot(key_slot(key.as_bytes()))
}

#[test]
fn single_key_commands_route_to_the_key_slot_whatever_the_case() {
    assert_eq!(route_of(&["get", "foo"]), Route::Slot(12182));
    assert_eq!(
        route_of(&["SET", "foo", "1", "EX", "10"]),
        Route::Slot(12182)
    );
    assert_eq!(route_of(&["HSET", "h", "f", "v"]), slot("h"));
    assert_eq!(route_of(&["ZADD", "z", "1", "m"]), slot("z"));
    assert_eq!(route_of(&["XADD", "s", "*", "f", "v"]), slot("s"));
    assert_eq!(route_of(&["PFADD", "hll", "a"]), slot("hll"));
    assert_eq!(route_of(&["GEOADD", "g", "1", "2", "m"]), slot("g"));
    assert_eq!(route_of(&["EXPIRE", "k", "5"]), slot("k"));
    assert_eq!(route_of(&["OBJECT", "ENCODING", "k"]), slot("k"));
    assert_eq!(route_of(&["xinfo", "stream", "s"]), slot("s"));
    assert_eq!(route_of(&["XGROUP", "CREATE", "s", "g", "$"]), slot("s"));
    assert_eq!(route_of(&["MEMORY", "USAGE", "k"]), slot("k"));
    let decision = route(&req(&["SET", "k", "v"]), &three());
    assert!(decision.write && !decision.blocking);
    assert!(!route(&req(&["GET", "k"]), &three()).write);
}

/// On a database of one shard every key is on that shard: multi-key commands, scripts and
/// WATCH of keys in different slots go whole to it, routed by their first key (as a Redis
/// Software database that is not clustered takes them), never `CROSSSLOT`.
#[test]
fn on_one_shard_keys_of_different_slots_are_not_crossslot() {
    let one = SlotMap::even(1).unwrap();
    let on_one = |words: &[&str]| route(&req(words), &one).route;
    assert_eq!(on_one(&["RENAME", "a", "b"]), slot("a"));
    assert_eq!(on_one(&["SINTER", "b", "a"]), slot("b"));
    assert_eq!(on_one(&["EVAL", "s", "2", "a", "b"]), slot("a"));
    assert_eq!(
        on_one(&["WATCH", "a", "b"]),
        Route::Transaction {
            step: TxStep::Watch,
            slot: Some(key_slot(b"a"))
        }
    );
    assert_eq!(route_of(&["WATCH", "a", "b"]), Route::CrossSlot);
}

#[test]
fn multi_key_commands_need_one_slot() {
    assert_eq!(route_of(&["RENAME", "a", "b"]), Route::CrossSlot);
    assert_eq!(route_of(&["RENAME", "{u}a", "{u}b"]), slot("u"));
    assert_eq!(
        route_of(&["SUNIONSTORE", "{t}d", "{t}1", "{t}2"]),
        slot("t")
    );
    assert_eq!(route_of(&["SINTER", "a", "b"]), Route::CrossSlot);
    assert_eq!(route_of(&["MSETNX", "a", "1", "b", "2"]), Route::CrossSlot);
    assert_eq!(route_of(&["MSETNX", "{x}a", "1", "{x}b", "2"]), slot("x"));
    assert_eq!(route_of(&["PFCOUNT", "a", "b"]), Route::CrossSlot);
    assert_eq!(route_of(&["PFMERGE", "{h}d", "{h}s"]), slot("h"));
    assert_eq!(
        route_of(&["BITOP", "AND", "{b}d", "{b}1", "{b}2"]),
        slot("b")
    );
    assert_eq!(route_of(&["BITOP", "AND", "d", "s"]), Route::CrossSlot);
    assert_eq!(
        route_of(&["LMOVE", "a", "b", "LEFT", "RIGHT"]),
        Route::CrossSlot
    );
    assert_eq!(route_of(&["COPY", "{c}a", "{c}b"]), slot("c"));
    assert_eq!(route_of(&["GEOSEARCHSTORE", "d", "s"]), Route::CrossSlot);
}

#[test]
fn numkeys_commands_find_their_keys() {
    assert_eq!(
        route_of(&[
            "ZUNIONSTORE",
            "{z}d",
            "2",
            "{z}a",
            "{z}b",
            "WEIGHTS",
            "1",
            "2"
        ]),
        slot("z")
    );
    // The destination counts as a key.
    assert_eq!(
        route_of(&["ZUNIONSTORE", "d", "1", "{e}a"]),
        Route::CrossSlot
    );
    assert_eq!(route_of(&["ZUNIONSTORE", "d", "1", "d"]), slot("d"));
    assert_eq!(route_of(&["ZINTER", "2", "a", "b"]), Route::CrossSlot);
    assert_eq!(
        route_of(&["ZDIFF", "2", "{q}a", "{q}b", "WITHSCORES"]),
        slot("q")
    );
    assert_eq!(route_of(&["SINTERCARD", "1", "s", "LIMIT", "5"]), slot("s"));
    assert_eq!(route_of(&["LMPOP", "2", "{l}a", "{l}b", "LEFT"]), slot("l"));
    // A numkeys the engine refuses too goes to any shard, for the engine's own words (Redis's
    // unit/type/list "LMPOP with illegal argument": an arity error for `LMPOP 1`).
    for words in [
        &["ZUNIONSTORE", "d", "x", "a"][..],
        &["ZINTER", "3", "a", "b"],
        &["EVAL", "s", "-1"],
        &["LMPOP", "1"],
        &["SINTERCARD", "a", "s"],
    ] {
        assert_eq!(route_of(words), Route::AnyShard, "{words:?}");
    }
    assert_eq!(
        route_of(&["LMPOP"]),
        Route::Invalid(InvalidRequest::WrongArity)
    );
}

/// A subcommand no engine knows gets the engine's words (Redis's unit/functions "test wrong
/// subcommand", unit/other "Subcommand syntax error crash"); `PARENT|SUB` is no command.
#[test]
fn unknown_subcommands_and_pipe_names_are_answered_as_the_engine_does() {
    for (words, expected) in [
        (
            &["FUNCTION", "bad_subcommand"][..],
            "ERR unknown subcommand 'bad_subcommand'. Try FUNCTION HELP.",
        ),
        (
            &["config", "GET_XX"],
            "ERR unknown subcommand 'GET_XX'. Try CONFIG HELP.",
        ),
        (
            &["SCRIPT", "nope"],
            "ERR unknown subcommand 'nope'. Try SCRIPT HELP.",
        ),
    ] {
        let request = req(words);
        let rejection = route(&request, &three()).rejection(&request);
        assert_eq!(rejection.unwrap().to_string(), expected, "{words:?}");
    }
    for words in [&["SCRIPT", "DEBUG", "YES"][..], &["CONFIG", "REWRITE"]] {
        let request = req(words);
        let rejection = route(&request, &three()).rejection(&request).unwrap();
        assert!(
            matches!(rejection, Rejection::Refused { .. }),
            "{words:?}: {rejection}"
        );
    }
    for words in [&["GET|"][..], &["GET|SET"], &["CONFIG|GET", "GET_XX"]] {
        assert_eq!(route_of(words), Route::Unknown, "{words:?}");
    }
}

/// Valkey 9's MSETEX (a count of key-value pairs, then options) and DELIFEQ route by key.
#[test]
fn valkey_9_msetex_and_delifeq_route_by_key() {
    assert_eq!(
        route_of(&["MSETEX", "2", "{m}a", "1", "{m}b", "2", "EX", "10"]),
        slot("m")
    );
    assert_eq!(route_of(&["MSETEX", "1", "a", "1", "NX"]), slot("a"));
    assert_eq!(
        route_of(&["MSETEX", "2", "a", "1", "b", "2"]),
        Route::CrossSlot
    );
    assert_eq!(route_of(&["MSETEX", "2", "a", "1"]), Route::AnyShard);
    assert_eq!(route_of(&["DELIFEQ", "k", "v"]), slot("k"));
    assert!(route(&req(&["DELIFEQ", "k", "v"]), &three()).write);
}

#[test]
fn scripts_route_by_declared_keys_or_to_any_shard() {
    assert_eq!(route_of(&["EVAL", "return 1", "0"]), Route::AnyShard);
    assert_eq!(route_of(&["EVALSHA", "abc", "0", "arg"]), Route::AnyShard);
    assert_eq!(route_of(&["EVAL", "s", "1", "k", "argv1"]), slot("k"));
    assert_eq!(route_of(&["EVAL", "s", "2", "a", "b"]), Route::CrossSlot);
    assert_eq!(
        route_of(&["FCALL", "f", "2", "{f}a", "{f}b", "x"]),
        slot("f")
    );
    assert_eq!(route_of(&["FCALL_RO", "f", "0"]), Route::AnyShard);
    assert_eq!(
        route_of(&["SCRIPT", "LOAD", "return 1"]),
        Route::AllShards(Merge::Same)
    );
    assert_eq!(
        route_of(&["SCRIPT", "EXISTS", "a", "b"]),
        Route::AllShards(Merge::ElementwiseMin)
    );
    assert_eq!(route_of(&["FUNCTION", "LIST"]), Route::AnyShard);
    assert_eq!(
        route_of(&["SCRIPT", "KILL"]),
        Route::AllShards(Merge::AnyOk)
    );
    assert!(matches!(
        route_of(&["SCRIPT", "DEBUG", "YES"]),
        Route::Refused(_)
    ));
}

#[test]
fn mget_splits_per_shard_and_merges_in_request_order() {
    let slots = three();
    let keys = ["foo", "bar", "hello", "{foo}x"];
    let mut words = vec!["MGET"];
    words.extend(keys);
    let request = req(&words);
    let Route::Split(split) = route(&request, &slots).route else {
        panic!("MGET across shards must split");
    };
    assert_eq!(split.key_count, 4);
    assert_eq!(split.merge, Merge::ArrayInRequestOrder);
    // foo (12182) and {foo}x share shard 2; bar (5061) and hello (866) are on shard 0.
    assert_eq!(split.parts.len(), 2);
    let shard2 = &split.parts[0];
    assert_eq!(shard2.shard, ShardIndex(2));
    assert_eq!(shard2.positions, vec![0, 3]);
    assert_eq!(
        shard2.request.argv()[1..],
        [Bytes::from("foo"), Bytes::from("{foo}x")]
    );
    assert_eq!(split.parts[1].shard, ShardIndex(0));
    assert_eq!(split.parts[1].positions, vec![1, 2]);
    for part in &split.parts {
        assert_eq!(part.request.name(), "MGET");
        for key in &part.request.argv()[1..] {
            assert_eq!(slots.shard_of_key(key), part.shard);
        }
    }
    let merged = split.merge(vec![
        Value::Array(vec![Value::bulk("F"), Value::bulk("FX")]),
        Value::Array(vec![Value::NullBulkString, Value::bulk("H")]),
    ]);
    assert_eq!(
        merged,
        Value::Array(vec![
            Value::bulk("F"),
            Value::NullBulkString,
            Value::bulk("H"),
            Value::bulk("FX")
        ])
    );
    assert_eq!(
        split.merge(vec![Value::Array(vec![]), Value::Array(vec![])]),
        Value::error("ERR unexpected reply from a shard")
    );
}

#[test]
fn mset_splits_key_value_pairs() {
    let Route::Split(split) = route_of(&["MSET", "foo", "1", "bar", "2"]) else {
        panic!("MSET across shards must split");
    };
    assert_eq!(split.merge, Merge::AllOk);
    let argvs: Vec<Vec<Bytes>> = split
        .parts
        .iter()
        .map(|p| p.request.argv().to_vec())
        .collect();
    assert_eq!(
        argvs,
        vec![
            vec![Bytes::from("MSET"), Bytes::from("foo"), Bytes::from("1")],
            vec![Bytes::from("MSET"), Bytes::from("bar"), Bytes::from("2")],
        ]
    );
    assert_eq!(
        split.merge(vec![Value::simple("OK"), Value::simple("OK")]),
        Value::simple("OK")
    );
    assert_eq!(
        route_of(&["MSET", "a", "1", "b"]),
        Route::Invalid(InvalidRequest::WrongArity)
    );
}

#[test]
fn counting_commands_split_and_sum() {
    for command in ["DEL", "UNLINK", "EXISTS", "TOUCH"] {
        let Route::Split(split) = route_of(&[command, "foo", "bar", "foo"]) else {
            panic!("{command} across shards must split");
        };
        assert_eq!(split.merge, Merge::SumIntegers);
        assert_eq!(
            split.merge(vec![Value::Integer(2), Value::Integer(1)]),
            Value::Integer(3)
        );
    }
}

#[test]
fn splittable_commands_in_one_slot_are_not_split() {
    assert_eq!(route_of(&["MGET", "{u}a", "{u}b"]), slot("u"));
    assert_eq!(route_of(&["DEL", "k"]), slot("k"));
    assert_eq!(route_of(&["MSET", "{u}a", "1", "{u}b", "2"]), slot("u"));
}

#[test]
fn one_shard_databases_still_split_by_shard_once() {
    let one = SlotMap::even(1).unwrap();
    let Route::Split(split) = route(&req(&["DEL", "a", "b", "c"]), &one).route else {
        panic!("different slots split, even on one shard");
    };
    assert_eq!(split.parts.len(), 1);
    assert_eq!(split.parts[0].positions, vec![0, 1, 2]);
}

#[test]
fn fan_out_commands_go_to_every_shard() {
    assert_eq!(route_of(&["DBSIZE"]), Route::AllShards(Merge::SumIntegers));
    assert_eq!(
        route_of(&["KEYS", "*"]),
        Route::AllShards(Merge::ConcatArrays)
    );
    assert_eq!(route_of(&["FLUSHALL"]), Route::AllShards(Merge::AllOk));
    assert_eq!(
        route_of(&["FLUSHDB", "ASYNC"]),
        Route::AllShards(Merge::AllOk)
    );
    assert_eq!(
        route_of(&["RANDOMKEY"]),
        Route::AllShards(Merge::FirstNonNull)
    );
    let wait = route(&req(&["WAIT", "1", "100"]), &three());
    assert_eq!(wait.route, Route::AllShards(Merge::MinInteger));
    assert!(wait.blocking);
    assert_eq!(route_of(&["TIME"]), Route::AnyShard);
    assert_eq!(route_of(&["INFO"]), Route::AllShards(Merge::Info));
    assert_eq!(
        route_of(&["INFO", "keyspace", "server"]),
        Route::AllShards(Merge::Info)
    );
}

/// The engine's own command table answers COMMAND, its subcommands included (GETKEYS of a
/// command the proxy routes by key names the keys routing uses; the flotilla tests check it
/// against a real engine), and ACL CAT and the read-only FUNCTION subcommands are the same
/// on every shard.
#[test]
fn engine_tables_come_from_any_shard() {
    for words in [
        &["COMMAND"][..],
        &["COMMAND", "COUNT"],
        &["COMMAND", "GETKEYS", "SET", "a", "b"],
        &["COMMAND", "DOCS", "GET"],
        &["ACL", "CAT"],
        &["FUNCTION", "STATS"],
        &["FUNCTION", "LIST"],
    ] {
        assert_eq!(route_of(words), Route::AnyShard, "{words:?}");
    }
}

#[test]
fn scan_cursor_carries_the_shard() {
    let Route::Scan(step) = route_of(&["SCAN", "0", "MATCH", "a*"]) else {
        panic!("SCAN is a scan step");
    };
    assert_eq!(step.shard, ShardIndex(0));
    assert_eq!(step.request.argv()[1], Bytes::from("0"));
    assert_eq!(
        step.request.argv()[2..],
        [Bytes::from("MATCH"), Bytes::from("a*")]
    );
    let cursor = flotilla_proxy::scan::encode_cursor(ShardIndex(2), 99).unwrap();
    let Route::Scan(step) = route_of(&["SCAN", &cursor.to_string()]) else {
        panic!("SCAN is a scan step");
    };
    assert_eq!(step.shard, ShardIndex(2));
    assert_eq!(step.request.argv()[1], Bytes::from("99"));
    assert_eq!(
        route_of(&["SCAN", "abc"]),
        Route::Invalid(InvalidRequest::InvalidCursor)
    );
}

/// Found by the router fuzz target: `SCAN 8` on three shards names shard 8, which this
/// endpoint never handed out; the router refuses it instead of routing to no shard.
#[test]
fn scan_cursor_naming_a_shard_the_map_lacks_is_invalid() {
    let foreign = flotilla_proxy::scan::encode_cursor(ShardIndex(3), 5).unwrap();
    for cursor in ["8".to_string(), foreign.to_string()] {
        assert_eq!(
            route_of(&["SCAN", &cursor]),
            Route::Invalid(InvalidRequest::InvalidCursor),
            "{cursor}"
        );
    }
}

#[test]
fn connection_commands_are_local() {
    assert_eq!(
        route_of(&["PING"]),
        Route::AnyShard,
        "PING reaches an engine"
    );
    assert_eq!(route_of(&["echo", "x"]), Route::Local(LocalCommand::Echo));
    assert_eq!(
        route_of(&["SELECT", "0"]),
        Route::Local(LocalCommand::Select)
    );
    assert_eq!(route_of(&["AUTH", "pw"]), Route::Local(LocalCommand::Auth));
    assert_eq!(route_of(&["HELLO", "3"]), Route::Local(LocalCommand::Hello));
    assert_eq!(route_of(&["QUIT"]), Route::Local(LocalCommand::Quit));
    assert_eq!(
        route_of(&["ACL", "WHOAMI"]),
        Route::Local(LocalCommand::AclWhoami)
    );
    assert_eq!(
        route_of(&["client", "setname", "app"]),
        Route::Local(LocalCommand::ClientSetName)
    );
    assert_eq!(
        route_of(&["CLIENT", "GETNAME"]),
        Route::Local(LocalCommand::ClientGetName)
    );
    assert_eq!(
        route_of(&["CLIENT", "ID"]),
        Route::Local(LocalCommand::ClientId)
    );
}

#[test]
fn transactions_pin_to_one_slot() {
    assert_eq!(
        route_of(&["MULTI"]),
        Route::Transaction {
            step: TxStep::Multi,
            slot: None
        }
    );
    assert_eq!(
        route_of(&["EXEC"]),
        Route::Transaction {
            step: TxStep::Exec,
            slot: None
        }
    );
    assert_eq!(
        route_of(&["WATCH", "{a}1", "{a}2"]),
        Route::Transaction {
            step: TxStep::Watch,
            slot: Some(key_slot(b"a"))
        }
    );
    assert_eq!(route_of(&["WATCH", "x", "y"]), Route::CrossSlot);
    assert!(matches!(
        route_of(&["DISCARD"]),
        Route::Transaction {
            step: TxStep::Discard,
            ..
        }
    ));
    assert!(matches!(
        route_of(&["UNWATCH"]),
        Route::Transaction {
            step: TxStep::Unwatch,
            ..
        }
    ));
}

#[test]
fn pubsub_goes_to_the_pubsub_shard_or_the_channel_slot() {
    let global = |kind| Route::PubSub {
        kind,
        target: PubSubTarget::PubSubShard,
    };
    assert_eq!(
        route_of(&["SUBSCRIBE", "a", "b"]),
        global(PubSubKind::Subscribe)
    );
    assert_eq!(
        route_of(&["PSUBSCRIBE", "a*"]),
        global(PubSubKind::Subscribe)
    );
    assert_eq!(route_of(&["UNSUBSCRIBE"]), global(PubSubKind::Unsubscribe));
    assert_eq!(route_of(&["PUNSUBSCRIBE"]), global(PubSubKind::Unsubscribe));
    assert_eq!(
        route_of(&["PUBLISH", "ch", "m"]),
        global(PubSubKind::Publish)
    );
    assert_eq!(
        route_of(&["PUBSUB", "CHANNELS"]),
        global(PubSubKind::Introspect)
    );
    assert_eq!(
        route_of(&["SPUBLISH", "ch", "m"]),
        Route::PubSub {
            kind: PubSubKind::Publish,
            target: PubSubTarget::Slot(key_slot(b"ch"))
        }
    );
    assert_eq!(route_of(&["SSUBSCRIBE", "a", "b"]), Route::CrossSlot);
    assert_eq!(
        route_of(&["SUNSUBSCRIBE"]),
        Route::PubSub {
            kind: PubSubKind::Unsubscribe,
            target: PubSubTarget::SubscribedShards
        }
    );
}

#[test]
fn blocking_commands_route_by_key_and_say_they_block() {
    let blpop = route(&req(&["BLPOP", "{q}a", "{q}b", "0"]), &three());
    assert_eq!(blpop.route, slot("q"));
    assert!(blpop.blocking && blpop.write);
    assert_eq!(route_of(&["BRPOP", "a", "b", "1"]), Route::CrossSlot);
    assert_eq!(
        route_of(&["BLMOVE", "{m}a", "{m}b", "LEFT", "LEFT", "0"]),
        slot("m")
    );
    assert_eq!(route_of(&["BZPOPMIN", "z", "0"]), slot("z"));
    assert_eq!(route_of(&["BZPOPMAX", "z", "0"]), slot("z"));
    assert_eq!(route_of(&["BLMPOP", "0", "1", "l", "LEFT"]), slot("l"));

    let xread = route(
        &req(&[
            "XREAD", "COUNT", "2", "BLOCK", "0", "STREAMS", "{s}a", "{s}b", "$", "$",
        ]),
        &three(),
    );
    assert_eq!(xread.route, slot("s"));
    assert!(xread.blocking);
    let plain = route(&req(&["XREAD", "STREAMS", "s", "0"]), &three());
    assert_eq!(plain.route, slot("s"));
    assert!(!plain.blocking);
    assert_eq!(
        route_of(&["XREAD", "STREAMS", "a", "b", "0", "0"]),
        Route::CrossSlot
    );
    // A group named "streams" is not the STREAMS keyword.
    assert_eq!(
        route_of(&[
            "XREADGROUP",
            "GROUP",
            "streams",
            "c",
            "NOACK",
            "STREAMS",
            "s",
            ">"
        ]),
        slot("s")
    );
    assert_eq!(
        route_of(&["XREAD", "STREAMS", "a", "b", "0"]),
        Route::Invalid(InvalidRequest::UnbalancedStreams)
    );
}

#[test]
fn store_options_add_a_key() {
    assert_eq!(route_of(&["SORT", "list", "LIMIT", "0", "5"]), slot("list"));
    assert_eq!(
        route_of(&["SORT", "list", "STORE", "dst"]),
        Route::CrossSlot
    );
    assert_eq!(route_of(&["SORT", "{l}a", "store", "{l}b"]), slot("l"));
    assert_eq!(
        route_of(&["GEORADIUS", "g", "0", "0", "1", "km", "STOREDIST", "other"]),
        Route::CrossSlot
    );
}

/// SLOWLOG and LATENCY's database-wide forms go to every shard as the admin user; the
/// reports about one engine stay refused.
#[test]
fn engine_logs_are_read_as_the_admin_user() {
    assert_eq!(
        route_of(&["SLOWLOG", "GET", "5"]),
        Route::Admin(Merge::NewestFirst)
    );
    assert_eq!(
        route_of(&["slowlog", "len"]),
        Route::Admin(Merge::SumIntegers)
    );
    assert_eq!(route_of(&["SLOWLOG", "RESET"]), Route::Admin(Merge::AllOk));
    assert_eq!(
        route_of(&["LATENCY", "LATEST"]),
        Route::Admin(Merge::ConcatArrays)
    );
    assert_eq!(
        route_of(&["FUNCTION", "KILL"]),
        Route::AllShards(Merge::AnyOk)
    );
    assert_eq!(
        route_of(&["FCALL", "f", "bad"]),
        Route::AnyShard,
        "FCALL's own message for a bad numkeys is the engine's"
    );
    for words in [&["LATENCY", "DOCTOR"][..], &["MEMORY", "STATS"]] {
        assert!(matches!(route_of(words), Route::Refused(_)), "{words:?}");
    }
}

#[test]
fn admin_commands_are_refused_with_a_reason() {
    for words in [
        &["CONFIG", "REWRITE"][..],
        &["SHUTDOWN"],
        &["REPLICAOF", "NO", "ONE"],
        &["SLAVEOF", "h", "1"],
        &["DEBUG", "SLEEP", "0"],
        &["CLUSTER", "INFO"],
        &["FAILOVER"],
        &["SYNC"],
        &["PSYNC", "?", "-1"],
        &["BGSAVE"],
        &["SAVE"],
        &["BGREWRITEAOF"],
        &["ACL", "LIST"],
        &["MODULE", "LIST"],
        &["CLIENT", "PAUSE", "100"],
        &["CLIENT", "UNPAUSE"],
    ] {
        let request = req(words);
        let decision = route(&request, &three());
        assert!(matches!(decision.route, Route::Refused(_)), "{words:?}");
        let message = decision.rejection(&request).unwrap().to_string();
        assert!(message.starts_with("ERR command '"), "{message}");
    }
    // CLIENT KILL and LIST are answered by the proxy over the endpoint's own clients, MONITOR
    // over connections of its own to every shard.
    for words in [
        &["CLIENT", "KILL", "ID", "1"][..],
        &["CLIENT", "LIST"],
        &["MONITOR"],
    ] {
        let route = route(&req(words), &three()).route;
        assert!(matches!(route, Route::Local(_)), "{words:?}");
    }
    // CONFIG GET/SET/RESETSTAT reach the database's settings; the rest is refused.
    let request = req(&["config", "rewrite"]);
    assert_eq!(
        route(&request, &three())
            .rejection(&request)
            .unwrap()
            .to_string(),
        "ERR command 'config' is not allowed through the proxy: \
         a database's settings are kept by the cluster: CONFIG GET/SET/RESETSTAT of the settings \
         Redis Software allows; the rest through the flotilla CLI or REST API"
    );
    let request = req(&["config", "get", "x"]);
    assert_eq!(
        route(&request, &three()).route,
        Route::Local(flotilla_proxy::LocalCommand::Config)
    );
}

#[test]
fn unknown_commands_are_refused_like_redis() {
    let request = req(&["FOO", "a", "b"]);
    let decision = route(&request, &three());
    assert_eq!(decision.route, Route::Unknown);
    assert!(decision.write);
    assert_eq!(
        decision.rejection(&request).unwrap().to_string(),
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    let long = "x".repeat(300);
    let request = req(&["FOO", &long, "b"]);
    let Some(Rejection::Unknown { args, .. }) = route(&request, &three()).rejection(&request)
    else {
        panic!("unknown");
    };
    assert!(args.len() <= 131, "{}", args.len());
}

#[test]
fn missing_arguments_are_wrong_arity() {
    for words in [
        &["GET"][..],
        &["RENAME", "a"],
        &["MGET"],
        &["BLPOP", "a"],
        &["OBJECT"],
        &["EVAL", "s"],
        &["SCAN"],
    ] {
        let request = req(words);
        let decision = route(&request, &three());
        assert!(
            matches!(decision.route, Route::Invalid(InvalidRequest::WrongArity)),
            "{words:?}: {:?}",
            decision.route
        );
        let message = decision.rejection(&request).unwrap().to_string();
        assert!(
            message.starts_with("ERR wrong number of arguments for '"),
            "{message}"
        );
    }
    let request = req(&["GET"]);
    assert_eq!(
        route(&request, &three())
            .rejection(&request)
            .unwrap()
            .to_string(),
        "ERR wrong number of arguments for 'get' command"
    );
    let request = req(&["MGET", "a", "b"]);
    assert_eq!(
        route(&request, &three())
            .rejection(&request)
            .map(|r| r.to_string()),
        None::<String>
    );
    let request = req(&["RENAME", "a", "b"]);
    assert_eq!(
        route(&request, &three())
            .rejection(&request)
            .unwrap()
            .to_string(),
        "CROSSSLOT Keys in request don't hash to the same slot"
    );
}

#[test]
fn commands_markdown_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/COMMANDS.md");
    let generated = flotilla_proxy::command::commands_markdown();
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "COMMANDS.md is stale: run FLOTILLA_BLESS=1 cargo test -p flotilla-proxy"
    );
    assert!(generated.contains("| MGET | split by shard"));
}

#[test]
fn every_table_row_is_reachable_by_lookup() {
    for spec in flotilla_proxy::command::COMMANDS {
        let words: Vec<&str> = spec.name.split('|').collect();
        let found = flotilla_proxy::lookup_request(&req(&words)).unwrap();
        assert_eq!(found.name, spec.name);
    }
}
