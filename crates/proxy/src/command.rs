//! The command table: for every command the proxy knows, where its keys are and how it is
//! routed (by key slot, split across shards, fanned out, answered locally, or refused).
//!
//! Key positions follow Redis's key specs (argument 0 is the command name). The table is also
//! rendered as `COMMANDS.md` by [`commands_markdown`], checked by a test so the two cannot drift.

use std::collections::HashMap;
use std::sync::OnceLock;

use flotilla_resp::{CommandName, Request};

/// Where a command's keys are among its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// The command takes no key.
    None,
    /// Keys at `first`, `first + step`, ... up to `last` (negative: counted from the end, -1
    /// being the last argument). With `step` 2 each key is followed by its value (MSET).
    Range {
        /// Index of the first key.
        first: usize,
        /// Index of the last key; negative counts from the end.
        last: isize,
        /// Distance between keys.
        step: usize,
    },
    /// A key count at `numkeys_at` followed by that many keys, plus an optional destination
    /// key at `dest` (EVAL, ZUNIONSTORE, LMPOP...).
    NumKeys {
        /// Index of the count argument.
        numkeys_at: usize,
        /// Index of a destination key before the count, if any.
        dest: Option<usize>,
    },
    /// A count of key-value pairs at `numkeys_at` followed by that many pairs, then options
    /// (Valkey 9's MSETEX).
    NumPairs {
        /// Index of the count argument.
        numkeys_at: usize,
    },
    /// The keys are the first half of the arguments after `STREAMS` (XREAD, XREADGROUP).
    Streams,
    /// A key at 1, plus the argument after `STORE` or `STOREDIST` if present (SORT, GEORADIUS).
    KeyAndStore,
    /// The second argument is a subcommand with its own entry (`OBJECT ENCODING key`).
    Subcommand,
}

/// How the proxy merges replies of a command sent to several shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Integers added up (DBSIZE, and DEL/EXISTS... when split).
    SumIntegers,
    /// Arrays concatenated in shard order (KEYS).
    ConcatArrays,
    /// `+OK` if every shard said so, else the first error (FLUSHALL, MSET when split).
    AllOk,
    /// The first non-null reply in shard order, else null (RANDOMKEY).
    FirstNonNull,
    /// Every shard returns the same value (SCRIPT LOAD's sha); the first one is the answer.
    Same,
    /// Arrays of integers combined element by element with `min` (SCRIPT EXISTS: a script
    /// exists only if every shard has it; WAITAOF).
    ElementwiseMin,
    /// The smallest integer (WAIT: replicas reached by every shard).
    MinInteger,
    /// `+OK` if any shard said so, else the first error (FUNCTION KILL: the one
    /// shard running a script kills it, the others answer `NOTBUSY`).
    AnyOk,
    /// Values of a split MGET put back at their keys' positions in the request.
    ArrayInRequestOrder,
    /// Log entries (arrays whose second element is their unix time) of every shard, newest
    /// first, at most the count the request asks for (SLOWLOG GET).
    NewestFirst,
    /// INFO: the shards' sections combined as the engine of the whole database would answer
    /// (counters summed, see `info.rs`), plus the endpoint's own `# Flotilla` section.
    Info,
}

/// The kind of a pub/sub command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubKind {
    /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE: the connection enters subscribed mode.
    Subscribe,
    /// UNSUBSCRIBE, PUNSUBSCRIBE, SUNSUBSCRIBE.
    Unsubscribe,
    /// PUBLISH, SPUBLISH.
    Publish,
    /// PUBSUB CHANNELS / NUMSUB / NUMPAT.
    Introspect,
}

/// A step of a MULTI/EXEC transaction, which the proxy tracks per client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStep {
    /// MULTI: start queueing; the transaction is pinned to the slot of its first keyed command.
    Multi,
    /// EXEC: run the queued commands on the pinned shard.
    Exec,
    /// DISCARD: drop the queue.
    Discard,
    /// WATCH keys: they must share a slot, which pins the transaction.
    Watch,
    /// UNWATCH.
    Unwatch,
}

/// Commands the proxy answers itself, without a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCommand {
    /// PING [message].
    Ping,
    /// ECHO message.
    Echo,
    /// SELECT index: only 0 exists behind a proxy.
    Select,
    /// AUTH [user] password: checked against the database password.
    Auth,
    /// HELLO [protover [AUTH u p] [SETNAME n]]: protocol switch and handshake.
    Hello,
    /// QUIT: reply +OK and close.
    Quit,
    /// RESET: back to a fresh connection state.
    Reset,
    /// CLIENT SETNAME name.
    ClientSetName,
    /// CLIENT GETNAME.
    ClientGetName,
    /// CLIENT ID: the proxy's own connection id.
    ClientId,
    /// CLIENT INFO: the proxy's view of this connection.
    ClientInfo,
    /// CLIENT SETINFO lib-name/lib-ver.
    ClientSetInfo,
    /// CLIENT NO-EVICT / NO-TOUCH and similar per-connection switches: accepted, +OK.
    ClientNoop,
    /// ACL WHOAMI: the user the client authenticated as (the database's one user, `default`).
    AclWhoami,
    /// READONLY / READWRITE: cluster-client handshakes, accepted with +OK.
    ReadMode,
    /// CONFIG GET/SET/RESETSTAT: the database's settings, through the node (see `admin.rs`).
    Config,
    /// CLIENT REPLY ON|OFF|SKIP: the session suppresses the caller's replies.
    ClientReply,
    /// CLIENT TRACKING/CACHING/GETREDIR/TRACKINGINFO: client-side caching, tracked by the
    /// engines on the caller's own shard connections (see `tracking.rs`).
    ClientTracking,
    /// CLIENT LIST: the caller's own line only.
    ClientList,
    /// CLIENT KILL: the endpoint's clients its filters name.
    ClientKill,
    /// MONITOR: every shard's stream of its clients' commands (see `monitor.rs`).
    Monitor,
}

/// How a command is routed, before looking at its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// To the shard owning its keys, which must share one slot; without keys, to any shard.
    Keyed,
    /// Split by shard, the sub-requests' replies merged.
    Split(Merge),
    /// Sent to every shard, replies merged.
    AllShards(Merge),
    /// SCAN: one shard at a time, the shard index carried in the cursor.
    Scan,
    /// Classic pub/sub: every channel lives on the database's pub/sub shard (shard 0), since
    /// shards are separate engines that do not share messages.
    PubSub(PubSubKind),
    /// Sharded pub/sub: the channels are keys and route by slot.
    ShardedPubSub(PubSubKind),
    /// A transaction step.
    Transaction(TxStep),
    /// Answered by the proxy.
    Local(LocalCommand),
    /// Sent to every shard over a connection of its own as the engines' admin user (the
    /// proxy's data-path user may not run it, also not from scripts), replies merged.
    Admin(Merge),
    /// Not allowed through the proxy, with the reason told to the client.
    Refused(&'static str),
}

/// When a command may block its connection on the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    /// Never blocks.
    Never,
    /// Always may block (BLPOP...): needs a dedicated shard connection.
    Always,
    /// Blocks only with a `BLOCK` argument (XREAD, XREADGROUP).
    WithBlockArg,
}

/// One row of the command table.
///
/// Exists so everything the proxy must know about a command (where its keys are, how to route
/// it, whether it writes or blocks) is in one place, shared by routing, `COMMAND` replies and
/// the documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Upper-case name; a subcommand is written `PARENT|SUB`.
    pub name: &'static str,
    /// Where the keys are.
    pub keys: KeySpec,
    /// How it is routed.
    pub class: Class,
    /// Whether it may modify data (a retry after an unknown outcome is not safe).
    pub write: bool,
    /// Whether it may block.
    pub blocking: Blocking,
}

impl CommandSpec {
    /// Whether it runs a script or function (EVAL, EVALSHA, FCALL and their `_RO` forms),
    /// which may run for as long as the script loops: the client that sends one moves to
    /// connections of its own (see the session's links), so that a long script does not
    /// stall other clients' requests queued behind it on a shared engine connection, and
    /// they get `-BUSY` from the engine, as direct clients do, until SCRIPT KILL.
    pub fn runs_script(&self) -> bool {
        matches!(
            self.name,
            "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO"
        )
    }
}

const NO_KEY: KeySpec = KeySpec::None;
const K1: KeySpec = range(1, 1, 1);
const K12: KeySpec = range(1, 2, 1);
const K_ALL: KeySpec = range(1, -1, 1);
const K2: KeySpec = range(2, 2, 1);
const SUB: KeySpec = KeySpec::Subcommand;

const fn range(first: usize, last: isize, step: usize) -> KeySpec {
    KeySpec::Range { first, last, step }
}

const fn numkeys(numkeys_at: usize, dest: Option<usize>) -> KeySpec {
    KeySpec::NumKeys { numkeys_at, dest }
}

const fn spec(name: &'static str, keys: KeySpec, class: Class, write: bool) -> CommandSpec {
    CommandSpec {
        name,
        keys,
        class,
        write,
        blocking: Blocking::Never,
    }
}

/// A read by key slot.
const fn read(name: &'static str, keys: KeySpec) -> CommandSpec {
    spec(name, keys, Class::Keyed, false)
}

/// A write by key slot.
const fn write(name: &'static str, keys: KeySpec) -> CommandSpec {
    spec(name, keys, Class::Keyed, true)
}

/// A blocking command by key slot.
const fn blocking(name: &'static str, keys: KeySpec, write: bool, how: Blocking) -> CommandSpec {
    CommandSpec {
        blocking: how,
        ..spec(name, keys, Class::Keyed, write)
    }
}

const fn local(name: &'static str, command: LocalCommand) -> CommandSpec {
    spec(name, NO_KEY, Class::Local(command), false)
}

const fn refused(name: &'static str, reason: &'static str) -> CommandSpec {
    spec(name, NO_KEY, Class::Refused(reason), true)
}

const fn admin(name: &'static str, merge: Merge, write: bool) -> CommandSpec {
    spec(name, NO_KEY, Class::Admin(merge), write)
}

const fn all_shards(name: &'static str, merge: Merge, write: bool) -> CommandSpec {
    spec(name, NO_KEY, Class::AllShards(merge), write)
}

const ADMIN: &str = "cluster administration goes through the flotilla CLI or REST API";
const REPLICATION: &str = "replication is managed by flotilla";
const PERSISTENCE: &str = "persistence is managed by flotilla";
const CONNECTIONS: &str = "it acts on other clients' engine connections, which the proxy does not expose (CLIENT LIST and CLIENT KILL act on the endpoint's own clients)";
const ONE_DB: &str = "a flotilla database has only database 0";
const UNSUPPORTED: &str = "not supported through the flotilla proxy";
const ONE_ENGINE: &str =
    "it describes one engine process, not the database; INFO has the database's totals";

/// Every command the proxy knows. Commands not listed are unknown and refused.
pub static COMMANDS: &[CommandSpec] = &[
    // Strings
    read("GET", K1),
    write("SET", K1),
    write("SETNX", K1),
    write("SETEX", K1),
    write("PSETEX", K1),
    write("GETSET", K1),
    write("GETDEL", K1),
    write("GETEX", K1),
    spec(
        "MGET",
        K_ALL,
        Class::Split(Merge::ArrayInRequestOrder),
        false,
    ),
    spec("MSET", range(1, -1, 2), Class::Split(Merge::AllOk), true),
    write("MSETNX", range(1, -1, 2)),
    write("MSETEX", KeySpec::NumPairs { numkeys_at: 1 }),
    write("DELIFEQ", K1),
    write("APPEND", K1),
    read("STRLEN", K1),
    write("INCR", K1),
    write("DECR", K1),
    write("INCRBY", K1),
    write("DECRBY", K1),
    write("INCRBYFLOAT", K1),
    read("GETRANGE", K1),
    write("SETRANGE", K1),
    read("SUBSTR", K1),
    read("LCS", K12),
    // Bitmaps
    write("SETBIT", K1),
    read("GETBIT", K1),
    read("BITCOUNT", K1),
    read("BITPOS", K1),
    write("BITFIELD", K1),
    read("BITFIELD_RO", K1),
    write("BITOP", range(2, -1, 1)),
    // Generic keyspace
    spec("DEL", K_ALL, Class::Split(Merge::SumIntegers), true),
    spec("UNLINK", K_ALL, Class::Split(Merge::SumIntegers), true),
    spec("EXISTS", K_ALL, Class::Split(Merge::SumIntegers), false),
    spec("TOUCH", K_ALL, Class::Split(Merge::SumIntegers), false),
    read("TYPE", K1),
    write("EXPIRE", K1),
    write("PEXPIRE", K1),
    write("EXPIREAT", K1),
    write("PEXPIREAT", K1),
    read("EXPIRETIME", K1),
    read("PEXPIRETIME", K1),
    read("TTL", K1),
    read("PTTL", K1),
    write("PERSIST", K1),
    write("RENAME", K12),
    write("RENAMENX", K12),
    write("COPY", K12),
    read("DUMP", K1),
    write("RESTORE", K1),
    write("SORT", KeySpec::KeyAndStore),
    read("SORT_RO", K1),
    spec("OBJECT", SUB, Class::Keyed, false),
    read("OBJECT|ENCODING", K2),
    read("OBJECT|FREQ", K2),
    read("OBJECT|IDLETIME", K2),
    read("OBJECT|REFCOUNT", K2),
    read("OBJECT|HELP", NO_KEY),
    spec("MEMORY", SUB, Class::Refused(ONE_ENGINE), false),
    read("MEMORY|USAGE", K2),
    spec("KEYS", NO_KEY, Class::AllShards(Merge::ConcatArrays), false),
    spec("SCAN", NO_KEY, Class::Scan, false),
    all_shards("RANDOMKEY", Merge::FirstNonNull, false),
    all_shards("DBSIZE", Merge::SumIntegers, false),
    all_shards("FLUSHALL", Merge::AllOk, true),
    all_shards("FLUSHDB", Merge::AllOk, true),
    read("TIME", NO_KEY),
    read("LOLWUT", NO_KEY),
    read("LASTSAVE", NO_KEY),
    CommandSpec {
        blocking: Blocking::Always,
        ..all_shards("WAIT", Merge::MinInteger, false)
    },
    CommandSpec {
        blocking: Blocking::Always,
        ..all_shards("WAITAOF", Merge::ElementwiseMin, false)
    },
    // Hashes
    write("HSET", K1),
    write("HSETNX", K1),
    write("HMSET", K1),
    read("HGET", K1),
    read("HMGET", K1),
    write("HDEL", K1),
    read("HEXISTS", K1),
    read("HLEN", K1),
    read("HKEYS", K1),
    read("HVALS", K1),
    read("HGETALL", K1),
    write("HINCRBY", K1),
    write("HINCRBYFLOAT", K1),
    read("HSTRLEN", K1),
    read("HRANDFIELD", K1),
    read("HSCAN", K1),
    write("HEXPIRE", K1),
    write("HPEXPIRE", K1),
    write("HEXPIREAT", K1),
    write("HPEXPIREAT", K1),
    write("HPERSIST", K1),
    read("HTTL", K1),
    read("HPTTL", K1),
    read("HEXPIRETIME", K1),
    read("HPEXPIRETIME", K1),
    write("HGETDEL", K1),
    write("HGETEX", K1),
    write("HSETEX", K1),
    // Lists
    write("LPUSH", K1),
    write("RPUSH", K1),
    write("LPUSHX", K1),
    write("RPUSHX", K1),
    write("LPOP", K1),
    write("RPOP", K1),
    read("LLEN", K1),
    read("LRANGE", K1),
    read("LINDEX", K1),
    write("LSET", K1),
    write("LREM", K1),
    write("LTRIM", K1),
    write("LINSERT", K1),
    read("LPOS", K1),
    write("RPOPLPUSH", K12),
    write("LMOVE", K12),
    write("LMPOP", numkeys(1, None)),
    blocking("BLPOP", range(1, -2, 1), true, Blocking::Always),
    blocking("BRPOP", range(1, -2, 1), true, Blocking::Always),
    blocking("BRPOPLPUSH", K12, true, Blocking::Always),
    blocking("BLMOVE", K12, true, Blocking::Always),
    blocking("BLMPOP", numkeys(2, None), true, Blocking::Always),
    // Sets
    write("SADD", K1),
    write("SREM", K1),
    read("SMEMBERS", K1),
    read("SISMEMBER", K1),
    read("SMISMEMBER", K1),
    read("SCARD", K1),
    write("SPOP", K1),
    read("SRANDMEMBER", K1),
    write("SMOVE", K12),
    read("SINTER", K_ALL),
    read("SUNION", K_ALL),
    read("SDIFF", K_ALL),
    write("SINTERSTORE", K_ALL),
    write("SUNIONSTORE", K_ALL),
    write("SDIFFSTORE", K_ALL),
    read("SINTERCARD", numkeys(1, None)),
    read("SSCAN", K1),
    // Sorted sets
    write("ZADD", K1),
    write("ZINCRBY", K1),
    write("ZREM", K1),
    read("ZCARD", K1),
    read("ZCOUNT", K1),
    read("ZSCORE", K1),
    read("ZMSCORE", K1),
    read("ZRANK", K1),
    read("ZREVRANK", K1),
    read("ZRANGE", K1),
    read("ZREVRANGE", K1),
    read("ZRANGEBYSCORE", K1),
    read("ZREVRANGEBYSCORE", K1),
    read("ZRANGEBYLEX", K1),
    read("ZREVRANGEBYLEX", K1),
    read("ZLEXCOUNT", K1),
    write("ZREMRANGEBYRANK", K1),
    write("ZREMRANGEBYSCORE", K1),
    write("ZREMRANGEBYLEX", K1),
    write("ZPOPMIN", K1),
    write("ZPOPMAX", K1),
    read("ZRANDMEMBER", K1),
    read("ZSCAN", K1),
    write("ZRANGESTORE", K12),
    write("ZUNIONSTORE", numkeys(2, Some(1))),
    write("ZINTERSTORE", numkeys(2, Some(1))),
    write("ZDIFFSTORE", numkeys(2, Some(1))),
    read("ZUNION", numkeys(1, None)),
    read("ZINTER", numkeys(1, None)),
    read("ZDIFF", numkeys(1, None)),
    read("ZINTERCARD", numkeys(1, None)),
    write("ZMPOP", numkeys(1, None)),
    blocking("BZPOPMIN", range(1, -2, 1), true, Blocking::Always),
    blocking("BZPOPMAX", range(1, -2, 1), true, Blocking::Always),
    blocking("BZMPOP", numkeys(2, None), true, Blocking::Always),
    // Streams
    write("XADD", K1),
    read("XLEN", K1),
    read("XRANGE", K1),
    read("XREVRANGE", K1),
    write("XDEL", K1),
    write("XTRIM", K1),
    write("XACK", K1),
    write("XCLAIM", K1),
    write("XAUTOCLAIM", K1),
    read("XPENDING", K1),
    write("XSETID", K1),
    blocking("XREAD", KeySpec::Streams, false, Blocking::WithBlockArg),
    blocking("XREADGROUP", KeySpec::Streams, true, Blocking::WithBlockArg),
    spec("XGROUP", SUB, Class::Keyed, true),
    write("XGROUP|CREATE", K2),
    write("XGROUP|SETID", K2),
    write("XGROUP|DESTROY", K2),
    write("XGROUP|CREATECONSUMER", K2),
    write("XGROUP|DELCONSUMER", K2),
    read("XGROUP|HELP", NO_KEY),
    spec("XINFO", SUB, Class::Keyed, false),
    read("XINFO|STREAM", K2),
    read("XINFO|GROUPS", K2),
    read("XINFO|CONSUMERS", K2),
    read("XINFO|HELP", NO_KEY),
    // HyperLogLog
    write("PFADD", K1),
    read("PFCOUNT", K_ALL),
    write("PFMERGE", K_ALL),
    refused("PFDEBUG", UNSUPPORTED),
    refused("PFSELFTEST", UNSUPPORTED),
    // Geo
    write("GEOADD", K1),
    read("GEODIST", K1),
    read("GEOHASH", K1),
    read("GEOPOS", K1),
    write("GEORADIUS", KeySpec::KeyAndStore),
    write("GEORADIUSBYMEMBER", KeySpec::KeyAndStore),
    read("GEORADIUS_RO", K1),
    read("GEORADIUSBYMEMBER_RO", K1),
    read("GEOSEARCH", K1),
    write("GEOSEARCHSTORE", K12),
    // Scripting and functions: declared keys must share a slot.
    write("EVAL", numkeys(2, None)),
    write("EVALSHA", numkeys(2, None)),
    read("EVAL_RO", numkeys(2, None)),
    read("EVALSHA_RO", numkeys(2, None)),
    write("FCALL", numkeys(2, None)),
    read("FCALL_RO", numkeys(2, None)),
    spec("SCRIPT", SUB, Class::Refused(UNSUPPORTED), false),
    all_shards("SCRIPT|LOAD", Merge::Same, false),
    all_shards("SCRIPT|EXISTS", Merge::ElementwiseMin, false),
    all_shards("SCRIPT|FLUSH", Merge::AllOk, false),
    all_shards("SCRIPT|KILL", Merge::AnyOk, false),
    spec("FUNCTION", SUB, Class::Refused(UNSUPPORTED), false),
    all_shards("FUNCTION|LOAD", Merge::Same, true),
    all_shards("FUNCTION|DELETE", Merge::AllOk, true),
    all_shards("FUNCTION|FLUSH", Merge::AllOk, true),
    all_shards("FUNCTION|RESTORE", Merge::AllOk, true),
    read("FUNCTION|LIST", NO_KEY),
    read("FUNCTION|DUMP", NO_KEY),
    read("FUNCTION|STATS", NO_KEY),
    all_shards("FUNCTION|KILL", Merge::AnyOk, false),
    read("FUNCTION|HELP", NO_KEY),
    // Transactions
    spec("MULTI", NO_KEY, Class::Transaction(TxStep::Multi), false),
    spec("EXEC", NO_KEY, Class::Transaction(TxStep::Exec), true),
    spec(
        "DISCARD",
        NO_KEY,
        Class::Transaction(TxStep::Discard),
        false,
    ),
    spec("WATCH", K_ALL, Class::Transaction(TxStep::Watch), false),
    spec(
        "UNWATCH",
        NO_KEY,
        Class::Transaction(TxStep::Unwatch),
        false,
    ),
    // Pub/sub
    spec(
        "SUBSCRIBE",
        NO_KEY,
        Class::PubSub(PubSubKind::Subscribe),
        false,
    ),
    spec(
        "PSUBSCRIBE",
        NO_KEY,
        Class::PubSub(PubSubKind::Subscribe),
        false,
    ),
    spec(
        "UNSUBSCRIBE",
        NO_KEY,
        Class::PubSub(PubSubKind::Unsubscribe),
        false,
    ),
    spec(
        "PUNSUBSCRIBE",
        NO_KEY,
        Class::PubSub(PubSubKind::Unsubscribe),
        false,
    ),
    spec("PUBLISH", NO_KEY, Class::PubSub(PubSubKind::Publish), false),
    spec("PUBSUB", SUB, Class::PubSub(PubSubKind::Introspect), false),
    spec(
        "PUBSUB|SHARDCHANNELS",
        NO_KEY,
        Class::AllShards(Merge::ConcatArrays),
        false,
    ),
    spec("PUBSUB|SHARDNUMSUB", range(2, -1, 1), Class::Keyed, false),
    spec(
        "SSUBSCRIBE",
        K_ALL,
        Class::ShardedPubSub(PubSubKind::Subscribe),
        false,
    ),
    spec(
        "SUNSUBSCRIBE",
        K_ALL,
        Class::ShardedPubSub(PubSubKind::Unsubscribe),
        false,
    ),
    spec(
        "SPUBLISH",
        K1,
        Class::ShardedPubSub(PubSubKind::Publish),
        false,
    ),
    // Connection: answered by the proxy
    // PING reaches an engine (the client's any-shard), as a direct client's reaches its
    // server: a client learns from it whether the database answers, and gets the engine's
    // `-BUSY` while a script loops (Redis's unit/scripting and unit/functions wait for that
    // before they kill the script). A RESP2 subscriber's PING is answered by the endpoint.
    read("PING", NO_KEY),
    local("ECHO", LocalCommand::Echo),
    local("SELECT", LocalCommand::Select),
    local("AUTH", LocalCommand::Auth),
    local("HELLO", LocalCommand::Hello),
    local("QUIT", LocalCommand::Quit),
    local("RESET", LocalCommand::Reset),
    // The engine's own command table (its key positions are the ones routing uses).
    read("COMMAND", NO_KEY),
    all_shards("INFO", Merge::Info, false),
    local("READONLY", LocalCommand::ReadMode),
    local("READWRITE", LocalCommand::ReadMode),
    spec("CLIENT", SUB, Class::Refused(CONNECTIONS), true),
    local("CLIENT|SETNAME", LocalCommand::ClientSetName),
    local("CLIENT|GETNAME", LocalCommand::ClientGetName),
    local("CLIENT|ID", LocalCommand::ClientId),
    local("CLIENT|INFO", LocalCommand::ClientInfo),
    local("CLIENT|SETINFO", LocalCommand::ClientSetInfo),
    local("CLIENT|NO-EVICT", LocalCommand::ClientNoop),
    local("CLIENT|NO-TOUCH", LocalCommand::ClientNoop),
    local("CLIENT|REPLY", LocalCommand::ClientReply),
    local("CLIENT|TRACKING", LocalCommand::ClientTracking),
    local("CLIENT|CACHING", LocalCommand::ClientTracking),
    local("CLIENT|GETREDIR", LocalCommand::ClientTracking),
    local("CLIENT|TRACKINGINFO", LocalCommand::ClientTracking),
    local("CLIENT|LIST", LocalCommand::ClientList),
    local("CLIENT|KILL", LocalCommand::ClientKill),
    refused("CLIENT|PAUSE", crate::client::PAUSE),
    refused("CLIENT|UNPAUSE", crate::client::NO_PAUSE),
    // Refused: the cluster manages these, or they reach past the proxy.
    spec(
        "CONFIG",
        SUB,
        Class::Refused(crate::config::CONFIG_OTHERS),
        true,
    ),
    local("CONFIG|GET", LocalCommand::Config),
    local("CONFIG|SET", LocalCommand::Config),
    local("CONFIG|RESETSTAT", LocalCommand::Config),
    refused("SHUTDOWN", ADMIN),
    refused("DEBUG", ADMIN),
    local("MONITOR", LocalCommand::Monitor),
    refused(
        "CLUSTER",
        "flotilla databases are not in Redis Cluster mode; the proxy routes by slot",
    ),
    refused("FAILOVER", REPLICATION),
    refused("REPLICAOF", REPLICATION),
    refused("SLAVEOF", REPLICATION),
    refused("SYNC", REPLICATION),
    refused("PSYNC", REPLICATION),
    refused("REPLCONF", REPLICATION),
    refused("ROLE", REPLICATION),
    refused("SAVE", PERSISTENCE),
    refused("BGSAVE", PERSISTENCE),
    refused("BGREWRITEAOF", PERSISTENCE),
    spec("ACL", SUB, Class::Refused(ADMIN), true),
    local("ACL|WHOAMI", LocalCommand::AclWhoami),
    read("ACL|CAT", NO_KEY),
    refused("MODULE", ADMIN),
    // Engine logs: every shard's, read and reset as the engines' admin user.
    spec("SLOWLOG", SUB, Class::Refused(UNSUPPORTED), false),
    admin("SLOWLOG|GET", Merge::NewestFirst, false),
    admin("SLOWLOG|LEN", Merge::SumIntegers, false),
    admin("SLOWLOG|RESET", Merge::AllOk, true),
    admin("SLOWLOG|HELP", Merge::Same, false),
    spec("LATENCY", SUB, Class::Refused(ONE_ENGINE), false),
    admin("LATENCY|LATEST", Merge::ConcatArrays, false),
    admin("LATENCY|HISTORY", Merge::ConcatArrays, false),
    admin("LATENCY|RESET", Merge::SumIntegers, true),
    admin("LATENCY|HELP", Merge::Same, false),
    refused("SWAPDB", ONE_DB),
    refused("MOVE", ONE_DB),
    refused("MIGRATE", UNSUPPORTED),
];

/// Table indexes built once: top-level names, and subcommands per container.
struct Index {
    commands: HashMap<&'static str, &'static CommandSpec>,
    subcommands: HashMap<&'static str, HashMap<&'static str, &'static CommandSpec>>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = Index {
            commands: HashMap::new(),
            subcommands: HashMap::new(),
        };
        for spec in COMMANDS {
            match spec.name.split_once('|') {
                Some((parent, sub)) => {
                    index
                        .subcommands
                        .entry(parent)
                        .or_default()
                        .insert(sub, spec);
                }
                None => {
                    index.commands.insert(spec.name, spec);
                }
            }
        }
        index
    })
}

/// The table row for an upper-case command name (containers such as `OBJECT` included).
pub fn lookup(name: &str) -> Option<&'static CommandSpec> {
    index().commands.get(name).copied()
}

/// The table row that applies to `request`: its subcommand's row when it has one, else the
/// command's own row (for containers, the fallback for unlisted subcommands).
pub fn lookup_request(request: &Request) -> Option<&'static CommandSpec> {
    let spec = lookup(request.name())?;
    if spec.keys != KeySpec::Subcommand {
        return Some(spec);
    }
    let sub = request.arg(1).map(|raw| CommandName::new(raw));
    let found = sub.and_then(|sub| {
        index()
            .subcommands
            .get(spec.name)
            .and_then(|subs| subs.get(sub.as_str()).copied())
    });
    Some(found.unwrap_or(spec))
}

/// Every subcommand the engines (Redis 7.x, Valkey 8-9) know of the containers listed, which
/// the proxy answers or refuses in part: a subcommand none of them knows is answered as the
/// engine answers it (`unknown subcommand`), not with the proxy's refusal of the container.
const ENGINE_SUBCOMMANDS: &[(&str, &[&str])] = &[
    ("CONFIG", &["GET", "SET", "RESETSTAT", "REWRITE", "HELP"]),
    (
        "FUNCTION",
        &[
            "DELETE", "DUMP", "FLUSH", "HELP", "KILL", "LIST", "LOAD", "RESTORE", "STATS",
        ],
    ),
    (
        "SCRIPT",
        &["DEBUG", "EXISTS", "FLUSH", "HELP", "KILL", "LOAD", "SHOW"],
    ),
    ("SLOWLOG", &["GET", "HELP", "LEN", "RESET"]),
    (
        "LATENCY",
        &[
            "DOCTOR",
            "GRAPH",
            "HELP",
            "HISTOGRAM",
            "HISTORY",
            "LATEST",
            "RESET",
        ],
    ),
    (
        "MEMORY",
        &["DOCTOR", "HELP", "MALLOC-STATS", "PURGE", "STATS", "USAGE"],
    ),
];

/// Whether `request` names a subcommand that no engine knows of a container in
/// [`ENGINE_SUBCOMMANDS`].
pub fn unknown_subcommand(request: &Request) -> bool {
    let Some(sub) = request.arg(1) else {
        return false;
    };
    let sub = CommandName::new(sub);
    let name = request.name().to_ascii_uppercase();
    ENGINE_SUBCOMMANDS
        .iter()
        .find(|(container, _)| *container == name)
        .is_some_and(|(_, known)| !known.contains(&sub.as_str()))
}

/// The command table as a markdown table (command, routing, notes), the content of
/// `COMMANDS.md`.
///
/// Exists so the documentation is generated from the table the proxy uses and cannot drift.
pub fn commands_markdown() -> String {
    let mut out = String::from(
        "# Commands through the Flotilla proxy\n\n\
         Generated from `crates/proxy/src/command.rs` (`cargo test -p flotilla-proxy` checks it;\n\
         `FLOTILLA_BLESS=1 cargo test -p flotilla-proxy` rewrites it). Commands not listed are\n\
         answered `-ERR unknown command`. Key positions count the command name as 0.\n\n\
         Keyed commands whose keys hash to different slots get\n\
         `-CROSSSLOT Keys in request don't hash to the same slot`; use `{hashtags}` to group keys.\n\
         Inside MULTI, every queued command must use the slot the transaction is pinned to.\n\
         On a database of one shard neither applies: every key is on that shard, so keyed\n\
         commands, WATCH and transactions take keys of any slots, as the engine does.\n\
         Scripts (EVAL, FCALL) move their client to engine connections of its own, so a\n\
         script that loops leaves other clients `-BUSY` until `SCRIPT KILL` or\n\
         `FUNCTION KILL` (sent to every shard).\n\n\
         | command | routing | notes |\n| --- | --- | --- |\n",
    );
    for spec in COMMANDS {
        let name = spec.name.replace('|', " ");
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            name,
            routing_text(spec),
            notes_text(spec)
        ));
    }
    out
}

fn keys_text(keys: KeySpec) -> String {
    match keys {
        KeySpec::None => "no key".into(),
        KeySpec::Range {
            first,
            last,
            step: 1,
        } if last == first as isize => format!("key at {first}"),
        KeySpec::Range { first, last, step } => {
            let last = if last < 0 {
                format!("argc{last}")
            } else {
                last.to_string()
            };
            format!("keys {first}..={last} step {step}")
        }
        KeySpec::NumKeys {
            numkeys_at,
            dest: Some(dest),
        } => format!("key at {dest}, numkeys at {numkeys_at}, keys after it"),
        KeySpec::NumKeys { numkeys_at, .. } => format!("numkeys at {numkeys_at}, keys after it"),
        KeySpec::NumPairs { numkeys_at } => {
            format!("pair count at {numkeys_at}, key-value pairs after it")
        }
        KeySpec::Streams => "keys: first half of the arguments after STREAMS".into(),
        KeySpec::KeyAndStore => "key at 1, plus the STORE/STOREDIST key".into(),
        KeySpec::Subcommand => "see subcommands".into(),
    }
}

fn routing_text(spec: &CommandSpec) -> String {
    let keys = keys_text(spec.keys);
    match spec.class {
        Class::Keyed if spec.keys == KeySpec::None => "any shard".into(),
        Class::Keyed => format!("slot of keys ({keys}); one slot required"),
        Class::Split(merge) => format!("split by shard ({keys}), merge: {}", merge_text(merge)),
        Class::AllShards(merge) => format!("all shards, merge: {}", merge_text(merge)),
        Class::Scan => "one shard at a time; cursor carries the shard index".into(),
        Class::PubSub(_) => "pub/sub shard (shard 0)".into(),
        Class::ShardedPubSub(_) => format!("slot of channels ({keys})"),
        Class::Transaction(TxStep::Watch) => format!("transaction: pins the slot ({keys})"),
        Class::Transaction(_) => "transaction step, tracked by the proxy".into(),
        Class::Local(LocalCommand::ClientTracking) => tracking_routing(spec.name).into(),
        Class::Local(_) => "answered by the proxy".into(),
        Class::Admin(merge) => format!(
            "all shards, as the engines' admin user, merge: {}",
            merge_text(merge)
        ),
        Class::Refused(_) => "refused".into(),
    }
}

/// How CLIENT TRACKING and its kin reach the engines (see `tracking.rs`).
fn tracking_routing(name: &str) -> &'static str {
    match name {
        "CLIENT|TRACKING" => {
            "the caller's own connection to every shard, tracking redirected to the session's \
             inbox there; invalidations come from the engines (see `tracking.rs`)"
        }
        "CLIENT|CACHING" => {
            "answered by the proxy; sent ahead of the next command to each shard it goes to"
        }
        _ => "answered by the proxy (the tracking the session set on the shards)",
    }
}

fn merge_text(merge: Merge) -> &'static str {
    match merge {
        Merge::SumIntegers => "sum of integers",
        Merge::ConcatArrays => "arrays concatenated",
        Merge::AllOk => "+OK if all +OK",
        Merge::FirstNonNull => "first non-null",
        Merge::Same => "first reply (all equal)",
        Merge::ElementwiseMin => "element-wise minimum",
        Merge::MinInteger => "minimum",
        Merge::AnyOk => "+OK if any +OK",
        Merge::ArrayInRequestOrder => "array in request order",
        Merge::NewestFirst => "newest first, at most the count asked for",
        Merge::Info => "sections combined (counters summed), plus `# Flotilla`",
    }
}

fn notes_text(spec: &CommandSpec) -> String {
    let mut notes = Vec::new();
    if let Class::Refused(reason) = spec.class {
        notes.push(reason.to_owned());
    }
    if spec.keys == KeySpec::Subcommand {
        notes.push("unlisted subcommands: as the command".into());
    }
    match spec.blocking {
        Blocking::Always => notes.push("blocking".into()),
        Blocking::WithBlockArg => notes.push("blocking with BLOCK".into()),
        Blocking::Never => {}
    }
    if spec.write && !matches!(spec.class, Class::Refused(_)) {
        notes.push("write".into());
    }
    notes.join("; ")
}
