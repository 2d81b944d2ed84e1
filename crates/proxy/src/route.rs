//! The routing decision: given a parsed request and the database's slot map, where the proxy
//! sends it (one slot, split per shard, every shard, ...) or why it answers by itself.
//!
//! Pure and stateless: per-connection state (MULTI pinning, subscriptions, protocol) stays in
//! the proxy loop, which matches on [`Route`].

use bytes::Bytes;
use flotilla_resp::{Request, Value};

use crate::command::{
    lookup_request, Blocking, Class, CommandSpec, KeySpec, LocalCommand, Merge, PubSubKind, TxStep,
};
use crate::merge::{merge_replies, unexpected};
use crate::scan;
use crate::slot::{key_slot, ShardIndex, SlotMap};

/// What the proxy does with one request, plus the facts it needs to do it safely.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Where the request goes.
    pub route: Route,
    /// The table row used, `None` for unknown commands.
    pub spec: Option<&'static CommandSpec>,
    /// Whether the command may write: after an unknown outcome it must not be retried.
    /// Unknown commands count as writes.
    pub write: bool,
    /// Whether the command may block on the shard (needs its own shard connection and no
    /// pipelining behind it).
    pub blocking: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// To the shard owning this slot, unchanged.
    Slot(u16),
    /// To any one shard (keyless commands such as `TIME`, or `EVAL` with 0 keys).
    AnyShard,
    /// Split into per-shard requests whose replies [`Split::merge`] combines.
    Split(Split),
    /// To every shard, unchanged; replies combined with [`crate::merge_replies`].
    AllShards(Merge),
    /// SCAN: to one shard with its own cursor; the reply cursor is re-encoded with
    /// [`crate::scan::next_cursor`].
    Scan(ScanStep),
    /// A pub/sub command.
    PubSub {
        /// What it does to the connection.
        kind: PubSubKind,
        /// Which shard serves it.
        target: PubSubTarget,
    },
    /// A transaction step; `slot` is the slot a WATCH pins the transaction to.
    Transaction {
        /// The step.
        step: TxStep,
        /// For WATCH, the common slot of the watched keys.
        slot: Option<u16>,
    },
    /// Answered by the proxy.
    Local(LocalCommand),
    /// To every shard as the engines' admin user (see [`crate::Class::Admin`]).
    Admin(Merge),
    /// Keys in different slots for a command that cannot be split: answer
    /// `-CROSSSLOT Keys in request don't hash to the same slot`.
    CrossSlot,
    /// Not allowed through the proxy, for this reason.
    Refused(&'static str),
    /// Not in the command table: answered `-ERR unknown command`. Unknown commands are refused
    /// rather than routed by their first argument, since a keyless or multi-key command routed
    /// as if its first argument were a key would silently act on the wrong shard.
    Unknown,
    /// Arguments the keys cannot be found in (wrong arity, bad numkeys, bad cursor).
    Invalid(InvalidRequest),
}

/// Which shard serves a pub/sub command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubTarget {
    /// The database's pub/sub shard (shard 0): classic channels all live there.
    PubSubShard,
    /// The shard owning this slot (sharded pub/sub).
    Slot(u16),
    /// Every shard the connection has sharded subscriptions on (`SUNSUBSCRIBE` without
    /// channels).
    SubscribedShards,
}

/// Why a request's arguments cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidRequest {
    /// Too few arguments for the command's keys.
    WrongArity,
    /// A numkeys argument that is not an integer.
    NotAnInteger,
    /// A negative numkeys.
    NegativeKeys,
    /// A numkeys larger than the arguments that follow.
    TooManyKeys,
    /// XREAD/XREADGROUP without a key for every ID.
    UnbalancedStreams,
    /// An option the proxy does not know before `STREAMS`, or no `STREAMS`.
    Syntax,
    /// A SCAN cursor that is not one the proxy handed out.
    InvalidCursor,
}

impl InvalidRequest {
    /// Whether the engine refuses such a request too, before it touches any key: a numkeys
    /// that is not a count of the arguments that follow. Such a keyed request goes to any
    /// shard so that the client gets the engine's own words, which differ by command
    /// (`numkeys should be greater than 0`, an arity error for `LMPOP 1`, FCALL's `Bad number
    /// of keys provided`...).
    pub fn engine_refuses(self) -> bool {
        matches!(
            self,
            InvalidRequest::NotAnInteger
                | InvalidRequest::NegativeKeys
                | InvalidRequest::TooManyKeys
        )
    }
}

/// A request split per shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// One request per shard involved, in order of first key.
    pub parts: Vec<SplitPart>,
    /// How the parts' replies combine.
    pub merge: Merge,
    /// Number of keys in the original request.
    pub key_count: usize,
}

/// The part of a split request for one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPart {
    /// The shard to send it to.
    pub shard: ShardIndex,
    /// The request: the original command with this shard's keys (and their values).
    pub request: Request,
    /// For each key of this part, its position among the original request's keys.
    pub positions: Vec<usize>,
}

/// One SCAN call on one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanStep {
    /// The shard to scan.
    pub shard: ShardIndex,
    /// The SCAN request with the client cursor replaced by the shard's cursor.
    pub request: Request,
}

/// The error a client gets for a request the proxy does not send anywhere.
///
/// Exists so the proxy loop writes `-{rejection}`; the text is Redis's where Redis has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Keys in different slots.
    #[error("CROSSSLOT Keys in request don't hash to the same slot")]
    CrossSlot,
    /// A refused command.
    #[error("ERR command '{command}' is not allowed through the proxy: {reason}")]
    Refused {
        /// The command, lower-case.
        command: String,
        /// Why.
        reason: &'static str,
    },
    /// An unknown command.
    #[error("ERR unknown command '{command}', with args beginning with: {args}")]
    Unknown {
        /// The command as sent (truncated).
        command: String,
        /// The first arguments, quoted (truncated).
        args: String,
    },
    /// Too few arguments.
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity {
        /// The command, lower-case.
        command: String,
    },
    /// A numkeys that is not an integer.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    /// A numkeys of FCALL/FCALL_RO that is not an integer (their own message).
    #[error("ERR Bad number of keys provided")]
    BadNumberOfKeys,
    /// A negative numkeys.
    #[error("ERR Number of keys can't be negative")]
    NegativeKeys,
    /// Too large a numkeys.
    #[error("ERR Number of keys can't be greater than number of args")]
    TooManyKeys,
    /// XREAD without an ID per key.
    #[error("ERR Unbalanced '{command}' list of streams: for each stream key an ID or '$' must be specified.")]
    UnbalancedStreams {
        /// The command, lower-case.
        command: String,
    },
    /// A subcommand no engine knows, in the engine's words.
    #[error("ERR unknown subcommand '{subcommand}'. Try {command} HELP.")]
    UnknownSubcommand {
        /// The subcommand as sent (truncated).
        subcommand: String,
        /// The command, upper-case.
        command: String,
    },
    /// A syntax error.
    #[error("ERR syntax error")]
    Syntax,
    /// A foreign SCAN cursor.
    #[error("ERR invalid cursor")]
    InvalidCursor,
}

impl Decision {
    /// The error to answer instead of routing, if any.
    pub fn rejection(&self, request: &Request) -> Option<Rejection> {
        let command = || {
            self.spec
                .map_or_else(|| request.name(), |s| s.name)
                .to_lowercase()
        };
        Some(match &self.route {
            Route::CrossSlot => Rejection::CrossSlot,
            Route::Refused(_) if crate::command::unknown_subcommand(request) => {
                Rejection::UnknownSubcommand {
                    subcommand: String::from_utf8_lossy(request.arg(1).map_or(&[][..], |a| &a[..]))
                        .chars()
                        .take(128)
                        .collect(),
                    command: request.name().to_ascii_uppercase(),
                }
            }
            Route::Refused(reason) => Rejection::Refused {
                command: command(),
                reason,
            },
            Route::Unknown => unknown(request),
            Route::Invalid(invalid) => match invalid {
                InvalidRequest::WrongArity => Rejection::WrongArity { command: command() },
                InvalidRequest::NotAnInteger if command().starts_with("fcall") => {
                    Rejection::BadNumberOfKeys
                }
                InvalidRequest::NotAnInteger => Rejection::NotAnInteger,
                InvalidRequest::NegativeKeys => Rejection::NegativeKeys,
                InvalidRequest::TooManyKeys => Rejection::TooManyKeys,
                InvalidRequest::UnbalancedStreams => {
                    Rejection::UnbalancedStreams { command: command() }
                }
                InvalidRequest::Syntax => Rejection::Syntax,
                InvalidRequest::InvalidCursor => Rejection::InvalidCursor,
            },
            _ => return None,
        })
    }
}

/// Redis's unknown-command error: name and arguments quoted, about 128 characters at most.
fn unknown(request: &Request) -> Rejection {
    const MAX: usize = 128;
    let truncate = |raw: &[u8], room: usize| -> String {
        String::from_utf8_lossy(raw).chars().take(room).collect()
    };
    let mut args = String::new();
    for arg in request.args() {
        if args.len() >= MAX {
            break;
        }
        args.push_str(&format!("'{}' ", truncate(arg, MAX - args.len())));
    }
    Rejection::Unknown {
        command: truncate(request.raw_name(), MAX),
        args,
    }
}

/// Decides where `request` goes for a database whose slots are laid out as `slots`.
pub fn route(request: &Request, slots: &SlotMap) -> Decision {
    let Some(spec) = lookup_request(request) else {
        return Decision {
            route: Route::Unknown,
            spec: None,
            write: true,
            blocking: false,
        };
    };
    let route = route_spec(spec, request, slots).unwrap_or_else(Route::Invalid);
    Decision {
        route,
        spec: Some(spec),
        write: spec.write,
        blocking: is_blocking(spec, request),
    }
}

/// The keys the proxy routes `request` by, in argument order (a destination key first when
/// it comes before the others); none for a command the table does not know.
///
/// Exists so tests can hold the routing's key positions against the engine's own (`COMMAND
/// GETKEYS`), which the endpoint answers from the engine's table.
pub fn request_keys(request: &Request) -> Result<Vec<Bytes>, InvalidRequest> {
    let Some(spec) = lookup_request(request) else {
        return Ok(Vec::new());
    };
    let positions = key_positions(spec, request)?;
    Ok(positions
        .iter()
        .map(|i| request.argv()[i].clone())
        .collect())
}

fn is_blocking(spec: &CommandSpec, request: &Request) -> bool {
    match spec.blocking {
        Blocking::Never => false,
        Blocking::Always => true,
        Blocking::WithBlockArg => stream_options(request).is_ok_and(|o| o.block),
    }
}

fn route_spec(
    spec: &CommandSpec,
    request: &Request,
    slots: &SlotMap,
) -> Result<Route, InvalidRequest> {
    if spec.keys == KeySpec::Subcommand && request.argc() < 2 {
        return Err(InvalidRequest::WrongArity);
    }
    Ok(match spec.class {
        Class::Refused(reason) => Route::Refused(reason),
        Class::Local(command) => Route::Local(command),
        Class::Admin(merge) => Route::Admin(merge),
        Class::AllShards(merge) => Route::AllShards(merge),
        Class::Scan => Route::Scan(scan_step(request, slots)?),
        Class::Keyed => match key_positions(spec, request) {
            Ok(keys) => match slot_of_keys(request, keys, slots) {
                SlotOf::NoKey => Route::AnyShard,
                SlotOf::One(slot) => Route::Slot(slot),
                SlotOf::Cross => Route::CrossSlot,
            },
            Err(invalid) if invalid.engine_refuses() => Route::AnyShard,
            Err(invalid) => return Err(invalid),
        },
        Class::Split(merge) => split(spec, request, slots, merge)?,
        Class::PubSub(kind) => Route::PubSub {
            kind,
            target: PubSubTarget::PubSubShard,
        },
        Class::ShardedPubSub(kind) => sharded_pubsub(spec, request, slots, kind)?,
        Class::Transaction(step) => transaction(spec, request, slots, step)?,
    })
}

/// Argument indices of a request's keys: `start..end` by `step`, plus one `extra` key.
#[derive(Debug, Clone, Copy)]
struct KeyPositions {
    start: usize,
    end: usize,
    step: usize,
    extra: Option<usize>,
}

impl KeyPositions {
    const NONE: KeyPositions = KeyPositions {
        start: 0,
        end: 0,
        step: 1,
        extra: None,
    };

    fn iter(self) -> impl Iterator<Item = usize> {
        self.extra
            .into_iter()
            .chain((self.start..self.end).step_by(self.step))
    }
}

fn key_positions(spec: &CommandSpec, request: &Request) -> Result<KeyPositions, InvalidRequest> {
    let argc = request.argc();
    match spec.keys {
        KeySpec::None | KeySpec::Subcommand => Ok(KeyPositions::NONE),
        KeySpec::Range { first, last, step } => range_positions(argc, first, last, step),
        KeySpec::NumKeys { numkeys_at, dest } => numkeys_positions(request, numkeys_at, dest, 1),
        KeySpec::NumPairs { numkeys_at } => numkeys_positions(request, numkeys_at, None, 2),
        KeySpec::Streams => {
            let at = stream_options(request)?.streams_at;
            let rest = argc - at - 1;
            if rest == 0 || rest % 2 != 0 {
                return Err(InvalidRequest::UnbalancedStreams);
            }
            Ok(KeyPositions {
                start: at + 1,
                end: at + 1 + rest / 2,
                step: 1,
                extra: None,
            })
        }
        KeySpec::KeyAndStore => {
            if argc < 2 {
                return Err(InvalidRequest::WrongArity);
            }
            let store = (2..argc.saturating_sub(1)).find(|&i| {
                let arg = &request.argv()[i];
                arg.eq_ignore_ascii_case(b"STORE") || arg.eq_ignore_ascii_case(b"STOREDIST")
            });
            Ok(KeyPositions {
                start: 1,
                end: 2,
                step: 1,
                extra: store.map(|i| i + 1),
            })
        }
    }
}

fn range_positions(
    argc: usize,
    first: usize,
    last: isize,
    step: usize,
) -> Result<KeyPositions, InvalidRequest> {
    let end = if last < 0 {
        argc as isize + last + 1
    } else {
        last + 1
    };
    if argc <= first || end <= first as isize || end > argc as isize {
        return Err(InvalidRequest::WrongArity);
    }
    let end = end as usize;
    if last == -1 && step > 1 && (argc - first) % step != 0 {
        return Err(InvalidRequest::WrongArity);
    }
    Ok(KeyPositions {
        start: first,
        end,
        step,
        extra: None,
    })
}

/// The keys after a count at `numkeys_at`, each `step` arguments apart (2: key-value pairs).
fn numkeys_positions(
    request: &Request,
    numkeys_at: usize,
    dest: Option<usize>,
    step: usize,
) -> Result<KeyPositions, InvalidRequest> {
    let raw = request.arg(numkeys_at).ok_or(InvalidRequest::WrongArity)?;
    let count: i64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(InvalidRequest::NotAnInteger)?;
    if count < 0 {
        return Err(InvalidRequest::NegativeKeys);
    }
    let start = numkeys_at + 1;
    let width = (count as u64).saturating_mul(step as u64);
    if width > (request.argc() - start) as u64 {
        return Err(InvalidRequest::TooManyKeys);
    }
    Ok(KeyPositions {
        start,
        end: start + width as usize,
        step,
        extra: dest,
    })
}

/// What XREAD/XREADGROUP's options say.
struct StreamOptions {
    /// Index of the `STREAMS` keyword.
    streams_at: usize,
    /// Whether `BLOCK` was given.
    block: bool,
}

/// Walks XREAD/XREADGROUP options up to `STREAMS`, skipping option values, so that a group or
/// consumer literally named "streams" is not mistaken for the keyword.
fn stream_options(request: &Request) -> Result<StreamOptions, InvalidRequest> {
    let argv = request.argv();
    let mut block = false;
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        let word = flotilla_resp::CommandName::new(arg);
        i += match word.as_str() {
            "STREAMS" => {
                return Ok(StreamOptions {
                    streams_at: i,
                    block,
                })
            }
            "BLOCK" => {
                block = true;
                2
            }
            "COUNT" | "CLAIM" => 2,
            "GROUP" => 3,
            "NOACK" => 1,
            _ => return Err(InvalidRequest::Syntax),
        };
    }
    Err(InvalidRequest::Syntax)
}

/// The slot shared by a request's keys.
enum SlotOf {
    NoKey,
    One(u16),
    Cross,
}

/// The slot a request's keys share, for a command that must run whole on one shard. On a
/// database of one shard every key is on that shard, so keys in different slots are not
/// CROSSSLOT there (as on a Redis Software database that is not clustered): the request goes
/// whole to the one shard, routed by its first key.
fn slot_of_keys(request: &Request, keys: KeyPositions, slots: &SlotMap) -> SlotOf {
    match common_slot(request, keys) {
        SlotOf::Cross if slots.shard_count() == 1 => keys
            .iter()
            .next()
            .map_or(SlotOf::Cross, |i| SlotOf::One(key_slot(&request.argv()[i]))),
        found => found,
    }
}

fn common_slot(request: &Request, keys: KeyPositions) -> SlotOf {
    let mut found = SlotOf::NoKey;
    for i in keys.iter() {
        let slot = key_slot(&request.argv()[i]);
        match found {
            SlotOf::NoKey => found = SlotOf::One(slot),
            SlotOf::One(s) if s == slot => {}
            _ => return SlotOf::Cross,
        }
    }
    found
}

fn split(
    spec: &CommandSpec,
    request: &Request,
    slots: &SlotMap,
    merge: Merge,
) -> Result<Route, InvalidRequest> {
    let keys = key_positions(spec, request)?;
    match common_slot(request, keys) {
        SlotOf::NoKey => return Ok(Route::AnyShard),
        SlotOf::One(slot) => return Ok(Route::Slot(slot)),
        SlotOf::Cross => {}
    }
    let argv = request.argv();
    let mut part_of_shard = vec![usize::MAX; usize::from(slots.shard_count())];
    let mut parts: Vec<(ShardIndex, Vec<Bytes>, Vec<usize>)> = Vec::new();
    let mut key_count = 0;
    for (ordinal, i) in keys.iter().enumerate() {
        let shard = slots.shard_of_key(&argv[i]);
        let slot = &mut part_of_shard[usize::from(shard.0)];
        if *slot == usize::MAX {
            *slot = parts.len();
            parts.push((shard, vec![argv[0].clone()], Vec::new()));
        }
        let (_, args, positions) = &mut parts[*slot];
        args.extend_from_slice(&argv[i..(i + keys.step).min(argv.len())]);
        positions.push(ordinal);
        key_count += 1;
    }
    let parts = parts
        .into_iter()
        .filter_map(|(shard, args, positions)| {
            Some(SplitPart {
                shard,
                request: Request::from_argv(args)?,
                positions,
            })
        })
        .collect();
    Ok(Route::Split(Split {
        parts,
        merge,
        key_count,
    }))
}

/// The SCAN call a client cursor stands for; a cursor naming a shard the map does not have was
/// not handed out by this endpoint (found by the router fuzz target).
fn scan_step(request: &Request, slots: &SlotMap) -> Result<ScanStep, InvalidRequest> {
    let raw = request.arg(1).ok_or(InvalidRequest::WrongArity)?;
    let cursor: u64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(InvalidRequest::InvalidCursor)?;
    let (shard, shard_cursor) = scan::decode_cursor(cursor);
    if shard.0 >= slots.shard_count() {
        return Err(InvalidRequest::InvalidCursor);
    }
    let mut argv = request.argv().to_vec();
    argv[1] = Bytes::from(shard_cursor.to_string());
    let request = Request::from_argv(argv).ok_or(InvalidRequest::WrongArity)?;
    Ok(ScanStep { shard, request })
}

fn sharded_pubsub(
    spec: &CommandSpec,
    request: &Request,
    slots: &SlotMap,
    kind: PubSubKind,
) -> Result<Route, InvalidRequest> {
    if kind == PubSubKind::Unsubscribe && request.argc() == 1 {
        return Ok(Route::PubSub {
            kind,
            target: PubSubTarget::SubscribedShards,
        });
    }
    Ok(
        match slot_of_keys(request, key_positions(spec, request)?, slots) {
            SlotOf::One(slot) => Route::PubSub {
                kind,
                target: PubSubTarget::Slot(slot),
            },
            SlotOf::NoKey => return Err(InvalidRequest::WrongArity),
            SlotOf::Cross => Route::CrossSlot,
        },
    )
}

fn transaction(
    spec: &CommandSpec,
    request: &Request,
    slots: &SlotMap,
    step: TxStep,
) -> Result<Route, InvalidRequest> {
    let slot = match slot_of_keys(request, key_positions(spec, request)?, slots) {
        SlotOf::NoKey => None,
        SlotOf::One(slot) => Some(slot),
        SlotOf::Cross => return Ok(Route::CrossSlot),
    };
    Ok(Route::Transaction { step, slot })
}

impl Split {
    /// Combines the parts' replies (one per part, in `parts` order) into the client's reply.
    pub fn merge(&self, replies: Vec<Value>) -> Value {
        if replies.len() != self.parts.len() {
            return unexpected();
        }
        if self.merge != Merge::ArrayInRequestOrder {
            return merge_replies(self.merge, replies);
        }
        if let Some(error) = replies.iter().find(|r| r.is_error()) {
            return error.clone();
        }
        let mut ordered = vec![Value::NullBulkString; self.key_count];
        for (part, reply) in self.parts.iter().zip(replies) {
            let Value::Array(values) = reply else {
                return unexpected();
            };
            if values.len() != part.positions.len() {
                return unexpected();
            }
            for (&position, value) in part.positions.iter().zip(values) {
                ordered[position] = value;
            }
        }
        Value::Array(ordered)
    }
}
