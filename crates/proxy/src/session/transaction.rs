//! A client connection's transaction state: the MULTI in progress (queued requests, the slot
//! they are pinned to, whether one was refused) and the WATCH, with the rules of MULTI, EXEC,
//! DISCARD, WATCH, UNWATCH and RESET as pure decisions. The session carries the decisions out
//! (sends, replies); nothing here touches a socket, so each rule has a unit test.
//!
//! Why the proxy queues MULTI itself: a transaction runs on one shard, which is known only once
//! its first keyed request (or the WATCH) pins a slot; the queue is sent as MULTI ... EXEC to
//! that shard at EXEC.

use flotilla_resp::{Protocol, Request, Value};

use crate::command::{LocalCommand, Merge, TxStep};
use crate::handover::{TransactionState, WatchState};
use crate::route::{Decision, Route};
use crate::slot::ShardIndex;

/// A MULTI in progress: requests are queued here and sent with EXEC.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Transaction {
    /// The slot every keyed request must hash to, once one (or the WATCH) pinned it.
    pub slot: Option<u16>,
    /// The requests queued, in order.
    pub queued: Vec<Request>,
    /// A request was refused while queueing: EXEC answers `-EXECABORT`.
    pub aborted: bool,
}

/// Keys watched on one shard connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Watch {
    /// The slot of the watched keys; a later MULTI is pinned to it.
    pub slot: u16,
    /// The index of the shard whose connection holds the watch.
    pub shard: usize,
    /// Which connection to that shard holds it: a watch does not survive a reconnect.
    pub generation: u64,
}

/// What EXEC does.
#[derive(Debug, PartialEq)]
pub(super) enum Exec {
    /// Answer `reply` without sending anything; `unwatch` is the watch to drop (told to the
    /// shard if its connection is still the one that watched).
    Refuse {
        /// The error to answer.
        reply: Value,
        /// The watch to drop.
        unwatch: Option<Watch>,
    },
    /// The watch was lost (its connection was replaced, e.g. by a new primary's, or it is on
    /// another shard than the transaction's): answered as an aborted EXEC (null), as when a
    /// watched key changed, rather than risk running unwatched. Nothing is sent.
    WatchLost,
    /// Send MULTI, `queued` and EXEC to `shard`; only EXEC's reply reaches the client.
    Send {
        /// The shard of the pinned slot (a keyless transaction's: the client's any-shard).
        shard: ShardIndex,
        /// The requests queued.
        queued: Vec<Request>,
        /// Whether a WATCH guards it.
        watched: bool,
    },
}

/// One client connection's MULTI and WATCH.
#[derive(Debug, Default)]
pub(super) struct TxState {
    tx: Option<Transaction>,
    watch: Option<Watch>,
}

impl TxState {
    /// Whether a MULTI is in progress.
    #[cfg(test)]
    fn in_multi(&self) -> bool {
        self.tx.is_some()
    }

    /// How many commands the MULTI in progress queued (`None`: no MULTI; CLIENT INFO's `multi`).
    pub fn queued(&self) -> Option<usize> {
        self.tx.as_ref().map(|tx| tx.queued.len())
    }

    /// Whether a request routed as `route` is queued (inside MULTI) rather than acted on.
    pub fn queues(&self, route: &Route) -> bool {
        self.tx.is_some() && !runs_inside_multi(route)
    }

    /// The slot the transaction in progress is pinned to, if any.
    pub fn pinned_slot(&self) -> Option<u16> {
        self.tx.as_ref().and_then(|tx| tx.slot)
    }

    /// MULTI: starts a transaction, pinned to the watched slot if any.
    pub fn multi(&mut self) -> Value {
        if self.tx.is_some() {
            return Value::error("ERR MULTI calls can not be nested");
        }
        self.tx = Some(Transaction {
            slot: self.watch.map(|w| w.slot),
            ..Transaction::default()
        });
        Value::simple("OK")
    }

    /// Queues a request inside MULTI after checking it can run in the pinned slot; a refused
    /// one aborts the transaction. Returns the client's reply (`+QUEUED` or the refusal).
    ///
    /// On a database of `one_shard`, every request runs where the transaction does: any slot,
    /// and commands the proxy otherwise splits or sends to every shard (MSET, FLUSHALL,
    /// DBSIZE, KEYS...), whose one engine's reply is the answer.
    pub fn queue(&mut self, request: Request, decision: &Decision, one_shard: bool) -> Value {
        let Some(tx) = self.tx.as_mut() else {
            return Value::error("ERR internal: queueing outside MULTI");
        };
        let error = match (decision.rejection(&request), &decision.route) {
            (Some(rejection), _) => Some(rejection.to_string()),
            (None, Route::Slot(_)) if one_shard && tx.slot.is_some() => None,
            (None, Route::Slot(slot)) => tx.pin(*slot),
            // INFO's engine reply is rewritten for the client (`info.rs`: the shard's own
            // addresses, config file and replicas are not the database's), so it is not
            // queued raw.
            (None, Route::AllShards(merge)) if one_shard && *merge != Merge::Info => None,
            (None, Route::Split(_)) if one_shard => None,
            (None, Route::AnyShard)
            | (None, Route::Local(LocalCommand::Ping | LocalCommand::Echo))
            | (None, Route::Transaction { .. }) => None,
            (None, _) => Some(format!(
                "ERR {} cannot run inside MULTI through the proxy: a transaction runs on one shard",
                request.name()
            )),
        };
        match error {
            Some(error) => {
                tx.aborted = true;
                Value::error(error)
            }
            None => {
                tx.queued.push(request);
                Value::simple("QUEUED")
            }
        }
    }

    /// DISCARD: drops the transaction and the watch (returned, to be dropped at the shard), or
    /// says there is no transaction.
    pub fn discard(&mut self) -> Result<Option<Watch>, Value> {
        if self.tx.take().is_none() {
            return Err(Value::error("ERR DISCARD without MULTI"));
        }
        Ok(self.watch.take())
    }

    /// EXEC: what to send or answer. `shard_of` is the shard of a pinned slot (of `None`: the
    /// client's shard for keyless commands); `current` says whether a watch's connection is
    /// still the one that watched.
    pub fn exec(
        &mut self,
        shard_of: impl FnOnce(Option<u16>) -> ShardIndex,
        current: impl FnOnce(&Watch) -> bool,
    ) -> Exec {
        let Some(tx) = self.tx.take() else {
            return Exec::Refuse {
                reply: Value::error("ERR EXEC without MULTI"),
                unwatch: None,
            };
        };
        if tx.aborted {
            return Exec::Refuse {
                reply: Value::error("EXECABORT Transaction discarded because of previous errors."),
                unwatch: self.watch.take(),
            };
        }
        let shard = shard_of(tx.slot);
        match self.watch.take() {
            Some(watch) if !current(&watch) || watch.shard != usize::from(shard.0) => {
                Exec::WatchLost
            }
            watch => Exec::Send {
                shard,
                queued: tx.queued,
                watched: watch.is_some(),
            },
        }
    }

    /// WATCH with the common slot of its keys: the slot to watch, or why not (inside MULTI, no
    /// keys, keys in another slot than an earlier WATCH, unless the database is of
    /// `one_shard`). The session sends it, then records the watch with [`TxState::watching`].
    pub fn watch(&self, slot: Option<u16>, one_shard: bool) -> Result<u16, Value> {
        if self.tx.is_some() {
            return Err(Value::error("ERR WATCH inside MULTI is not allowed"));
        }
        let Some(slot) = slot else {
            return Err(Value::error(
                "ERR wrong number of arguments for 'watch' command",
            ));
        };
        if self.watch.is_some_and(|w| w.slot != slot && !one_shard) {
            return Err(Value::error(
                "CROSSSLOT Keys in request don't hash to the same slot (already watching another slot)",
            ));
        }
        Ok(slot)
    }

    /// Records a WATCH sent on a shard connection.
    pub fn watching(&mut self, watch: Watch) {
        self.watch = Some(watch);
    }

    /// UNWATCH: drops the watch (returned, to be dropped at the shard).
    pub fn unwatch(&mut self) -> Option<Watch> {
        self.watch.take()
    }

    /// RESET: drops the transaction and the watch (returned, to be dropped at the shard).
    pub fn reset(&mut self) -> Option<Watch> {
        self.tx = None;
        self.watch.take()
    }

    /// The watch, if any (its connection is pinned for the in-place handover).
    pub fn current_watch(&self) -> Option<Watch> {
        self.watch
    }

    /// The state an in-place handover carries: the transaction and the watch (without its
    /// connection's generation, which is this process's).
    pub fn capture(&self) -> (Option<TransactionState>, Option<WatchState>) {
        let tx = self.tx.as_ref().map(|tx| TransactionState {
            queued: tx
                .queued
                .iter()
                .map(|r| r.argv().iter().map(|a| a.to_vec()).collect())
                .collect(),
            slot: tx.slot,
            aborted: tx.aborted,
        });
        let watch = self.watch.map(|w| WatchState {
            slot: w.slot,
            shard: w.shard as u16,
        });
        (tx, watch)
    }

    /// The state [`TxState::capture`] took, in a new process; `watch_generation` is the
    /// generation of the connection that holds the watch there (one never issued when the
    /// watch's connection did not come along: EXEC then answers null, as for a lost watch).
    pub fn restore(
        tx: Option<TransactionState>,
        watch: Option<WatchState>,
        watch_generation: u64,
    ) -> TxState {
        let tx = tx.map(|tx| Transaction {
            queued: tx
                .queued
                .into_iter()
                .filter_map(|argv| Request::from_argv(argv.into_iter().map(Into::into).collect()))
                .collect(),
            slot: tx.slot,
            aborted: tx.aborted,
        });
        let watch = watch.map(|w| Watch {
            slot: w.slot,
            shard: usize::from(w.shard),
            generation: watch_generation,
        });
        TxState { tx, watch }
    }
}

impl Transaction {
    /// Pins the transaction to `slot`, or says why it cannot be.
    fn pin(&mut self, slot: u16) -> Option<String> {
        match self.slot {
            Some(pinned) if pinned != slot => Some(
                "CROSSSLOT Keys in request don't hash to the same slot (the transaction is pinned to another slot)"
                    .into(),
            ),
            _ => {
                self.slot = Some(slot);
                None
            }
        }
    }
}

/// Commands that act immediately inside MULTI instead of being queued.
fn runs_inside_multi(route: &Route) -> bool {
    matches!(
        route,
        Route::Transaction {
            step: TxStep::Multi | TxStep::Exec | TxStep::Discard | TxStep::Watch,
            ..
        } | Route::Local(LocalCommand::Quit | LocalCommand::Reset)
    )
}

/// The null reply of an aborted EXEC.
pub(super) fn null_array(protocol: Protocol) -> Value {
    match protocol {
        Protocol::Resp2 => Value::NullArray,
        Protocol::Resp3 => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::slot::{key_slot, SlotMap};

    fn req(words: &[&str]) -> Request {
        Request::from_argv(words.iter().map(|w| Bytes::from(w.to_string())).collect()).unwrap()
    }

    fn decision(words: &[&str]) -> Decision {
        crate::route(&req(words), &SlotMap::even(2).unwrap())
    }

    /// Queues `words` as the client sends them, returning the reply.
    fn queue(tx: &mut TxState, words: &[&str]) -> Value {
        let decision = decision(words);
        assert!(tx.queues(&decision.route), "{words:?} is queued");
        tx.queue(req(words), &decision, false)
    }

    /// FLUSHDB inside MULTI: refused where the database has several shards (a transaction
    /// runs on one), queued where it has one (Redis's unit/tracking flushes inside MULTI).
    #[test]
    fn an_all_shards_command_is_queued_only_in_a_one_shard_database() {
        let words = ["FLUSHDB"];
        let mut tx = TxState::default();
        tx.multi();
        assert!(queue(&mut tx, &words).is_error());
        let mut tx = TxState::default();
        tx.multi();
        let reply = tx.queue(req(&words), &decision(&words), true);
        assert_eq!(reply, Value::simple("QUEUED"));
    }

    /// INFO inside MULTI is refused even on one shard: its engine reply would reach the client
    /// raw (the shard's addresses, config file and replicas), not as `info.rs` rewrites it.
    #[test]
    fn info_is_not_queued_raw_in_a_one_shard_database() {
        let words = ["INFO"];
        let mut tx = TxState::default();
        tx.multi();
        let reply = tx.queue(req(&words), &decision(&words), true);
        assert!(reply.is_error(), "{reply:?}");
    }

    fn watch_on(tx: &mut TxState, key: &str, shard: usize, generation: u64) {
        let slot = tx.watch(Some(key_slot(key.as_bytes())), false).unwrap();
        tx.watching(Watch {
            slot,
            shard,
            generation,
        });
    }

    fn shard_of(slot: Option<u16>) -> ShardIndex {
        slot.map_or(ShardIndex(0), |s| SlotMap::even(2).unwrap().shard_of(s))
    }

    /// `tx` after WATCH k (on k's shard, by the connection of `generation`), MULTI, SET k v.
    fn watched_set(tx: &mut TxState, generation: u64) {
        let shard = usize::from(shard_of(Some(key_slot(b"k"))).0);
        watch_on(tx, "k", shard, generation);
        tx.multi();
        queue(tx, &["SET", "k", "v"]);
    }

    #[test]
    fn multi_cannot_be_nested() {
        let mut tx = TxState::default();
        assert_eq!(tx.multi(), Value::simple("OK"));
        assert!(tx.in_multi());
        assert_eq!(
            tx.multi(),
            Value::error("ERR MULTI calls can not be nested")
        );
        assert!(tx.in_multi(), "the transaction goes on");
    }

    #[test]
    fn exec_and_discard_need_a_multi() {
        let mut tx = TxState::default();
        assert_eq!(
            tx.exec(shard_of, |_| true),
            Exec::Refuse {
                reply: Value::error("ERR EXEC without MULTI"),
                unwatch: None
            }
        );
        assert_eq!(tx.discard(), Err(Value::error("ERR DISCARD without MULTI")));
    }

    #[test]
    fn discard_drops_the_transaction_and_the_watch() {
        let mut tx = TxState::default();
        watch_on(&mut tx, "k", 1, 3);
        tx.multi();
        assert_eq!(queue(&mut tx, &["SET", "k", "v"]), Value::simple("QUEUED"));
        let dropped = tx.discard().unwrap();
        assert_eq!(dropped.map(|w| w.generation), Some(3));
        assert!(!tx.in_multi() && tx.current_watch().is_none());
    }

    #[test]
    fn watch_is_refused_inside_multi_without_keys_and_across_slots() {
        let mut tx = TxState::default();
        assert_eq!(
            tx.watch(None, false),
            Err(Value::error(
                "ERR wrong number of arguments for 'watch' command"
            ))
        );
        watch_on(&mut tx, "a", 0, 1);
        assert!(
            tx.watch(Some(key_slot(b"a")), false).is_ok(),
            "the same slot again"
        );
        let other = tx.watch(Some(key_slot(b"b")), false).unwrap_err();
        assert!(matches!(&other, Value::Error(t) if t.starts_with(b"CROSSSLOT")));
        tx.multi();
        assert_eq!(
            tx.watch(Some(key_slot(b"a")), false),
            Err(Value::error("ERR WATCH inside MULTI is not allowed"))
        );
        assert!(
            !tx.queues(&decision(&["WATCH", "a"]).route),
            "WATCH acts inside MULTI"
        );
    }

    /// On a database of one shard (Redis's unit/multi runs on one): keys of any slots, WATCH
    /// of several slots and commands sent to every shard all run in the one transaction.
    #[test]
    fn on_one_shard_a_transaction_takes_any_slot() {
        let one = SlotMap::even(1).unwrap();
        let mut tx = TxState::default();
        let slot = tx.watch(Some(key_slot(b"a")), true).unwrap();
        tx.watching(Watch {
            slot,
            shard: 0,
            generation: 1,
        });
        assert!(tx.watch(Some(key_slot(b"b")), true).is_ok());
        tx.multi();
        for words in [
            &["SET", "a", "1"][..],
            &["SET", "b", "2"],
            &["MSET", "x", "1", "y", "2"],
            &["DBSIZE"],
            &["FLUSHALL"],
        ] {
            let decision = crate::route(&req(words), &one);
            assert!(tx.queues(&decision.route));
            assert_eq!(
                tx.queue(req(words), &decision, true),
                Value::simple("QUEUED"),
                "{words:?}"
            );
        }
        assert!(matches!(
            tx.exec(|_| ShardIndex(0), |_| true),
            Exec::Send { queued, watched: true, .. } if queued.len() == 5
        ));
    }

    #[test]
    fn a_transaction_is_pinned_to_one_slot() {
        let mut tx = TxState::default();
        tx.multi();
        assert_eq!(
            queue(&mut tx, &["SET", "{u}a", "1"]),
            Value::simple("QUEUED")
        );
        assert_eq!(queue(&mut tx, &["PING"]), Value::simple("QUEUED"));
        assert_eq!(tx.pinned_slot(), Some(key_slot(b"u")));
        let refused = queue(&mut tx, &["SET", "other", "2"]);
        assert!(matches!(&refused, Value::Error(t) if t.starts_with(b"CROSSSLOT")));
        let refused = queue(&mut tx, &["DBSIZE"]);
        assert!(
            matches!(&refused, Value::Error(t) if t.ends_with(b"a transaction runs on one shard"))
        );
    }

    #[test]
    fn a_watch_pins_the_next_multi() {
        let mut tx = TxState::default();
        watch_on(&mut tx, "k", 1, 5);
        tx.multi();
        assert_eq!(tx.pinned_slot(), Some(key_slot(b"k")));
        let refused = queue(&mut tx, &["SET", "{other}", "2"]);
        assert!(refused.is_error());
    }

    #[test]
    fn an_aborted_transaction_answers_execabort_and_drops_the_watch() {
        let mut tx = TxState::default();
        watch_on(&mut tx, "k", 1, 5);
        tx.multi();
        assert!(queue(&mut tx, &["NOSUCHCOMMAND"]).is_error());
        assert_eq!(queue(&mut tx, &["SET", "k", "v"]), Value::simple("QUEUED"));
        let Exec::Refuse { reply, unwatch } = tx.exec(shard_of, |_| true) else {
            panic!("an aborted transaction is not sent");
        };
        assert_eq!(
            reply,
            Value::error("EXECABORT Transaction discarded because of previous errors.")
        );
        assert_eq!(unwatch.map(|w| w.generation), Some(5));
        assert!(!tx.in_multi());
    }

    #[test]
    fn exec_sends_the_queue_to_the_pinned_shard() {
        let mut tx = TxState::default();
        tx.multi();
        queue(&mut tx, &["SET", "foo", "1"]);
        queue(&mut tx, &["INCR", "foo"]);
        let Exec::Send {
            shard,
            queued,
            watched,
        } = tx.exec(shard_of, |_| true)
        else {
            panic!("sent");
        };
        assert_eq!(shard, shard_of(Some(key_slot(b"foo"))));
        assert_eq!(
            queued,
            vec![req(&["SET", "foo", "1"]), req(&["INCR", "foo"])]
        );
        assert!(!watched);
        assert!(!tx.in_multi());
    }

    #[test]
    fn a_watch_lost_with_its_connection_answers_null() {
        let mut tx = TxState::default();
        watched_set(&mut tx, 5);
        let replaced = |w: &Watch| w.generation == 6;
        assert_eq!(tx.exec(shard_of, replaced), Exec::WatchLost);
        assert!(tx.current_watch().is_none() && !tx.in_multi());
        assert_eq!(null_array(Protocol::Resp2), Value::NullArray);
        assert_eq!(null_array(Protocol::Resp3), Value::Null);

        watched_set(&mut tx, 6);
        let Exec::Send { watched, .. } = tx.exec(shard_of, replaced) else {
            panic!("the watch holds");
        };
        assert!(watched);
    }

    #[test]
    fn a_watch_on_another_shard_than_the_transaction_answers_null() {
        let mut tx = TxState::default();
        watch_on(&mut tx, "k", 7, 5);
        tx.multi();
        assert_eq!(tx.exec(shard_of, |_| true), Exec::WatchLost);
    }

    #[test]
    fn reset_and_unwatch_drop_the_watch() {
        let mut tx = TxState::default();
        watch_on(&mut tx, "k", 0, 2);
        assert_eq!(tx.unwatch().map(|w| w.generation), Some(2));
        assert_eq!(tx.unwatch(), None);
        watch_on(&mut tx, "k", 0, 3);
        tx.multi();
        queue(&mut tx, &["SET", "k", "v"]);
        assert_eq!(tx.reset().map(|w| w.generation), Some(3));
        assert!(!tx.in_multi() && tx.current_watch().is_none());
        assert!(
            !TxState::default().queues(&decision(&["RESET"]).route),
            "RESET acts inside MULTI"
        );
    }

    #[test]
    fn quit_reset_and_transaction_steps_act_inside_multi_and_others_queue() {
        let mut tx = TxState::default();
        tx.multi();
        for words in [
            &["QUIT"][..],
            &["RESET"],
            &["EXEC"],
            &["DISCARD"],
            &["MULTI"],
        ] {
            assert!(!tx.queues(&decision(words).route), "{words:?}");
        }
        for words in [
            &["UNWATCH"][..],
            &["GET", "k"],
            &["PING"],
            &["CLIENT", "ID"],
        ] {
            assert!(tx.queues(&decision(words).route), "{words:?}");
        }
    }

    #[test]
    fn the_state_survives_capture_and_restore() {
        let mut tx = TxState::default();
        watched_set(&mut tx, 5);
        let (state, watch) = tx.capture();
        let mut back = TxState::restore(state.clone(), watch, 9);
        assert_eq!(back.capture(), (state, watch));
        assert_eq!(back.current_watch().map(|w| w.generation), Some(9));
        assert_eq!(back.pinned_slot(), tx.pinned_slot());
        let Exec::Send { queued, .. } = back.exec(shard_of, |_| true) else {
            panic!("sent");
        };
        assert_eq!(queued, vec![req(&["SET", "k", "v"])]);
    }
}
