//! The one answer to "was this request executed?", and the one place engine replies, shard
//! connection failures and the proxy's own answers are classified into it.
//!
//! Why one type: the answer decides two things that must agree. The resend policy may send a
//! request again only when it was *certainly not executed* (a demoted primary's refusal, a
//! connection that failed before sending); a request whose outcome is unknown (a connection
//! lost after sending) is never resent blindly (DESIGN.md, "Data path", step 5). The endpoint's
//! counters report the same answer to operators: executed, not executed, unknown.
//!
//! Each failure is tagged with its side, as Pingora tags its errors: the client (its request
//! was refused as sent), the proxy (a bound of its own ran out) or a shard (unreachable,
//! refused as a replica, connection lost).

use flotilla_resp::Value;

use crate::shard::ShardError;

/// Which side a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its request was refused as sent (malformed, unknown, not authenticated,
    /// cross-slot, not allowed through the proxy or in its current mode).
    Client,
    /// The proxy: a bound of its own ran out (a switchover hold, the wait for a new primary)
    /// or its own bookkeeping failed.
    Proxy,
    /// A shard: it could not be reached, refused the request as a replica, or its connection
    /// broke.
    Shard,
}

/// Why a request was certainly not executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The proxy answered the request itself with an error, without sending it anywhere.
    Refused,
    /// Its shard stayed held for a switchover past the hold timeout; it was never sent.
    HoldExpired,
    /// The shard could not be reached (or no such shard): nothing was sent.
    Unreachable,
    /// A primary that had become a replica refused it: `-READONLY` for a write, `-UNBLOCKED`
    /// for a blocked write given up at the demotion, `-EXECABORT` for `READONLY` for a
    /// transaction. Nothing ran.
    RefusedAsReplica,
    /// Refused as a replica, and no new primary was published within the hold timeout.
    NoNewPrimary,
    /// The proxy's own bookkeeping lost the connection the request was for; nothing was sent.
    Internal,
    /// The engine was still loading its data set (`-LOADING`, after a restart): it refused
    /// the request without running it.
    Loading,
}

/// Whether a request was executed, as far as the proxy can tell.
///
/// Exists so that resending (only [`Verdict::NotExecuted`] may be resent) and the endpoint's
/// counters read one classification instead of each matching reply texts of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An engine took the request and answered it. `error_reply`: the answer is an error reply
    /// (`-WRONGTYPE`, `-ERR value is not an integer`...), the command's own answer.
    Executed {
        /// Whether the engine's answer is an error reply.
        error_reply: bool,
    },
    /// Certainly not executed; the only verdict under which a request may be sent again.
    NotExecuted {
        /// The side that failed.
        side: Side,
        /// Why nothing ran.
        reason: Reason,
    },
    /// Sent, and the answer was lost: the request may or may not have run. Never resent
    /// blindly: a write goes again only once the shard's promoted replica proves it never got
    /// it (`outcome.rs`), which is then the outcome the client gets.
    Unknown {
        /// The side that failed.
        side: Side,
    },
}

/// How a demoted primary answers a client blocked in a write (BLPOP, BLMOVE...): the command
/// was given up without taking anything.
const UNBLOCKED_BY_DEMOTION: &[u8] =
    b"UNBLOCKED force unblock from blocking operation, instance state changed";

impl Verdict {
    /// An engine's reply that is not an error.
    pub const OK: Verdict = Verdict::Executed { error_reply: false };

    /// A request the proxy refused as the client sent it.
    pub const REFUSED: Verdict = Verdict::NotExecuted {
        side: Side::Client,
        reason: Reason::Refused,
    };

    /// The verdict of an engine's decoded reply.
    pub fn of_reply(reply: &Value) -> Verdict {
        match reply {
            Value::Error(text) | Value::BlobError(text) => Verdict::of_error_text(text),
            _ => Verdict::OK,
        }
    }

    /// [`Verdict::of_reply`] for a reply as the engine encoded it; a reply that is not an
    /// error costs one byte comparison.
    pub fn of_raw(raw: &[u8]) -> Verdict {
        match raw.split_first() {
            Some((b'-', text)) => Verdict::of_error_text(text),
            Some((b'!', blob)) => {
                let text = blob
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map_or(&[][..], |end| &blob[end + 2..]);
                Verdict::of_error_text(text)
            }
            _ => Verdict::OK,
        }
    }

    /// The verdict of an engine's error text: a demoted primary's refusals and a loading
    /// engine's ran nothing; any other error is the command's own answer.
    fn of_error_text(text: &[u8]) -> Verdict {
        if text.starts_with(b"LOADING") {
            return Verdict::NotExecuted {
                side: Side::Shard,
                reason: Reason::Loading,
            };
        }
        let refused_as_replica = text.starts_with(b"READONLY")
            || text.starts_with(UNBLOCKED_BY_DEMOTION)
            || (text.starts_with(b"EXECABORT") && text.windows(8).any(|w| w == b"READONLY"));
        if refused_as_replica {
            Verdict::NotExecuted {
                side: Side::Shard,
                reason: Reason::RefusedAsReplica,
            }
        } else {
            Verdict::Executed { error_reply: true }
        }
    }

    /// The verdict of a reply the proxy wrote itself to the client's request: an error means
    /// the request was refused as sent and nothing ran.
    pub fn of_local(reply: &Value) -> Verdict {
        if reply.is_error() {
            Verdict::REFUSED
        } else {
            Verdict::OK
        }
    }

    /// The verdict of a request whose shard connection failed.
    pub fn of_shard_error(error: &ShardError) -> Verdict {
        match error {
            ShardError::Unavailable { .. } => Verdict::NotExecuted {
                side: Side::Shard,
                reason: Reason::Unreachable,
            },
            ShardError::Lost { .. } => Verdict::Unknown { side: Side::Shard },
        }
    }

    /// The verdict of a request whose reply combines several shards' (`parts`): a reply that
    /// is not an error executed; an error with any part unknown is unknown; an error whose
    /// parts all did not execute did not execute (the first part's reason); otherwise some
    /// part ran and answered an error.
    pub fn combined(reply: &Value, parts: &[Verdict]) -> Verdict {
        if !reply.is_error() {
            return Verdict::OK;
        }
        if let Some(unknown) = parts.iter().find(|v| matches!(v, Verdict::Unknown { .. })) {
            return *unknown;
        }
        match parts.first() {
            Some(first @ Verdict::NotExecuted { .. })
                if parts.iter().all(Verdict::not_executed) =>
            {
                *first
            }
            _ => Verdict::Executed { error_reply: true },
        }
    }

    /// Whether the request certainly did not run.
    pub fn not_executed(&self) -> bool {
        matches!(self, Verdict::NotExecuted { .. })
    }

    /// Whether a demoted primary refused the request (nothing ran): it belongs on the shard's
    /// next primary.
    pub fn refused_as_replica(&self) -> bool {
        matches!(
            self,
            Verdict::NotExecuted {
                reason: Reason::RefusedAsReplica,
                ..
            }
        )
    }

    /// Whether the shard could not be reached, so nothing was sent.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            Verdict::NotExecuted {
                reason: Reason::Unreachable,
                ..
            }
        )
    }

    /// Whether the engine refused the request while loading its data set: it will take it
    /// once loaded.
    pub fn loading(&self) -> bool {
        matches!(
            self,
            Verdict::NotExecuted {
                reason: Reason::Loading,
                ..
            }
        )
    }

    /// The counter this verdict is counted in.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Verdict::Executed { error_reply: false } => Kind::Ok,
            Verdict::Executed { error_reply: true } => Kind::ErrorReply,
            Verdict::NotExecuted { .. } => Kind::NotExecuted,
            Verdict::Unknown { .. } => Kind::Unknown,
        }
    }
}

/// The endpoint counters verdicts are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Executed, answered without an error.
    Ok = 0,
    /// Executed, answered with an engine's error reply.
    ErrorReply = 1,
    /// Certainly not executed.
    NotExecuted = 2,
    /// Outcome unknown.
    Unknown = 3,
}

/// How many [`Kind`]s there are.
pub(crate) const KINDS: usize = 4;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    const REFUSED_AS_REPLICA: Verdict = Verdict::NotExecuted {
        side: Side::Shard,
        reason: Reason::RefusedAsReplica,
    };
    const ERROR_REPLY: Verdict = Verdict::Executed { error_reply: true };

    /// The decoded and the raw form of an engine's reply agree.
    fn both(raw: &[u8]) -> Verdict {
        let mut buffer = bytes::BytesMut::from(raw);
        let value = flotilla_resp::Decoder::new(flotilla_resp::Limits::for_replies())
            .decode(&mut buffer)
            .unwrap()
            .unwrap();
        let decoded = Verdict::of_reply(&value);
        assert_eq!(
            decoded,
            Verdict::of_raw(raw),
            "{}",
            String::from_utf8_lossy(raw)
        );
        decoded
    }

    #[test]
    fn replies_that_are_not_errors_executed() {
        assert_eq!(both(b"+OK\r\n"), Verdict::OK);
        assert_eq!(both(b"$8\r\nREADONLY\r\n"), Verdict::OK);
        assert_eq!(both(b":1\r\n"), Verdict::OK);
        assert_eq!(both(b"*-1\r\n"), Verdict::OK);
    }

    #[test]
    fn engine_error_replies_are_the_commands_own_answer() {
        assert_eq!(both(b"-ERR value is not an integer\r\n"), ERROR_REPLY);
        assert_eq!(both(b"-WRONGTYPE Operation against a key\r\n"), ERROR_REPLY);
        assert_eq!(
            both(b"-EXECABORT Transaction discarded because of previous errors.\r\n"),
            ERROR_REPLY
        );
        assert_eq!(
            both(b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"),
            ERROR_REPLY
        );
        assert_eq!(both(b"!9\r\nERR other\r\n"), ERROR_REPLY);
    }

    #[test]
    fn a_demoted_primarys_refusals_did_not_execute() {
        assert_eq!(
            both(b"-READONLY You can't write against a read only replica.\r\n"),
            REFUSED_AS_REPLICA
        );
        assert_eq!(
            both(b"-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)\r\n"),
            REFUSED_AS_REPLICA
        );
        assert_eq!(
            both(b"-EXECABORT Transaction discarded because of: READONLY You can't write against a read only replica.\r\n"),
            REFUSED_AS_REPLICA
        );
        assert_eq!(both(b"!12\r\nREADONLY now\r\n"), REFUSED_AS_REPLICA);
        assert!(REFUSED_AS_REPLICA.refused_as_replica() && REFUSED_AS_REPLICA.not_executed());
        assert!(!REFUSED_AS_REPLICA.unreachable());
    }

    #[test]
    fn shard_failures_before_sending_did_not_execute_and_after_are_unknown() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let reason = String::from("refused");
        let unavailable = ShardError::Unavailable {
            shard: 3,
            addr,
            reason: reason.clone(),
        };
        let verdict = Verdict::of_shard_error(&unavailable);
        assert!(verdict.unreachable() && verdict.not_executed());
        assert_eq!(
            verdict,
            Verdict::NotExecuted {
                side: Side::Shard,
                reason: Reason::Unreachable
            }
        );
        let lost = ShardError::Lost {
            shard: 3,
            addr,
            reason,
            position: None,
        };
        let verdict = Verdict::of_shard_error(&lost);
        assert_eq!(verdict, Verdict::Unknown { side: Side::Shard });
        assert!(!verdict.not_executed());
    }

    #[test]
    fn the_proxys_own_error_answers_did_not_execute() {
        assert_eq!(
            Verdict::of_local(&Value::error("NOAUTH x")),
            Verdict::REFUSED
        );
        assert_eq!(Verdict::of_local(&Value::simple("OK")), Verdict::OK);
    }

    #[test]
    fn combined_replies_take_the_weakest_part() {
        let unknown = Verdict::Unknown { side: Side::Shard };
        let unreachable = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::Unreachable,
        };
        let error = Value::error("ERR x");
        let ok = Value::Integer(2);
        assert_eq!(Verdict::combined(&ok, &[unknown, unreachable]), Verdict::OK);
        assert_eq!(Verdict::combined(&error, &[Verdict::OK, unknown]), unknown);
        assert_eq!(
            Verdict::combined(&error, &[unreachable, REFUSED_AS_REPLICA]),
            unreachable
        );
        assert_eq!(
            Verdict::combined(&error, &[Verdict::OK, unreachable]),
            ERROR_REPLY
        );
        assert_eq!(Verdict::combined(&error, &[ERROR_REPLY]), ERROR_REPLY);
    }

    #[test]
    fn a_loading_engines_refusal_did_not_execute() {
        let text = b"-LOADING Valkey is loading the dataset in memory\r\n";
        let loading = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::Loading,
        };
        assert_eq!(both(text), loading);
        assert!(loading.loading() && loading.not_executed() && !loading.unreachable());
        assert!(!both(b"-ERR LOADING is not a command\r\n").loading());
    }

    #[test]
    fn verdicts_are_counted_by_kind() {
        assert_eq!(Verdict::OK.kind(), Kind::Ok);
        assert_eq!(ERROR_REPLY.kind(), Kind::ErrorReply);
        assert_eq!(REFUSED_AS_REPLICA.kind(), Kind::NotExecuted);
        assert_eq!(
            Verdict::Unknown { side: Side::Client }.kind(),
            Kind::Unknown
        );
    }
}
