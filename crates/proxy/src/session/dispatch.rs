//! What one routed request does: answered by the proxy, queued in a transaction, or sent to
//! shards with its reply queued. This is the glue between the session's parts; it owns no
//! state of its own.

use flotilla_resp::{Request, Value};

use crate::admin;
use crate::client::{LocalOutcome, ReplyMode};
use crate::client_line::{KillFilter, ListFilter};
use crate::command::{LocalCommand, Merge, PubSubKind, TxStep};
use crate::info::InfoContext;
use crate::pubsub::{self, Answer, SubKind};
use crate::route::{Decision, PubSubTarget, Route, ScanStep, Split};
use crate::slot::ShardIndex;
use crate::verdict::Verdict;

use super::links::Opened;
use super::replies::{Combine, Pending, Source};
use super::transaction::{null_array, Exec, Watch};
use super::Session;

/// The channel of the command that makes a client's own shard connection count the writes it
/// made over shared ones before its first WAIT (see [`Session::leave_shared`]); nobody
/// subscribes to it, so publishing there costs one replicated message.
const OFFSET_MARKER_CHANNEL: &str = "__flotilla__:wait-offset";

/// What the endpoint of an Active-Active instance does with a request (see
/// [`Session::crdt_screen`]).
pub(super) enum CrdtStep {
    /// The ordinary path.
    Pass,
    /// Refused; the reply is queued.
    Answered,
    /// Runs through the CRDT layer of this instance.
    Run(crate::topology::CrdtInstance),
}

impl Session {
    /// Routes one request: answers it, queues it in a transaction, or sends it to shards; its
    /// replies are suppressed as CLIENT REPLY asks (see [`Session::mute_replies`]).
    pub(super) async fn dispatch(&mut self, request: Request, decision: Decision) {
        let queued = self.replies.len();
        self.state.note_command(decision.spec);
        let reply_command = decision.route == Route::Local(LocalCommand::ClientReply);
        let mode = self.state.reply;
        self.send_caching(&request, &decision).await;
        self.route_request(request, decision).await;
        self.mute_replies(queued, reply_command, mode);
    }

    /// CLIENT REPLY: the replies queued from `queued` on are dropped while the mode (`before`
    /// the request) is OFF, or SKIP for the one request after CLIENT REPLY SKIP; CLIENT REPLY
    /// OFF/SKIP itself is not answered.
    pub(super) fn mute_replies(&mut self, queued: usize, reply_command: bool, before: ReplyMode) {
        let mute = if reply_command {
            self.state.reply != ReplyMode::On
        } else {
            if before == ReplyMode::Skip {
                self.state.reply = ReplyMode::On;
            }
            before != ReplyMode::On
        };
        if mute {
            self.replies.mute_from(queued);
        }
    }

    /// On an Active-Active instance's endpoint (see `crdt.rs`): whether `request` takes the
    /// ordinary path, was refused (answered), or runs through the CRDT layer. Only for an
    /// authenticated client outside RESP2 subscribed mode (the ordinary path answers the
    /// others).
    pub(super) fn crdt_screen(&mut self, request: &Request, decision: &Decision) -> CrdtStep {
        let Some(crdt) = self.view.current.crdt() else {
            return CrdtStep::Pass;
        };
        if !self.state.authenticated || self.subs.resp2_mode(self.state.protocol) {
            return CrdtStep::Pass;
        }
        match crate::crdt::screen(request, decision) {
            crate::crdt::Screen::Pass => CrdtStep::Pass,
            crate::crdt::Screen::Refuse(message) => {
                self.answer_here(Value::error(message), decision);
                CrdtStep::Answered
            }
            crate::crdt::Screen::Run => CrdtStep::Run(crdt),
        }
    }

    /// Runs `request` through the CRDT layer and queues its reply. A write the shard's primary
    /// refused `READONLY` (demoted: the script wrote nothing) runs again on the primary the next
    /// topology names, within the hold timeout, as the ordinary path resends such writes.
    pub(super) async fn run_crdt(
        &mut self,
        crdt: crate::topology::CrdtInstance,
        request: &Request,
        decision: &Decision,
    ) {
        let deadline = self.hold.deadline();
        let reply = loop {
            let topology = self.view.current.clone();
            let protocol = self.state.protocol;
            let reply = if request.name() == "INFO" {
                let context = self.info_context(request);
                crate::crdt::info(&topology, request, &context, protocol).await
            } else {
                crate::crdt::run(&topology, crdt, request, decision, protocol).await
            };
            if !crate::crdt::refused_readonly(&reply) {
                break reply;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.view.changed()).await {
                Ok(true) => {
                    self.adopt_topology();
                    self.links.drop_stale(&self.view.current);
                }
                _ => break reply,
            }
        };
        self.answer_here(reply, decision);
    }

    /// Queues a reply made here for a request that bypassed [`Session::dispatch`], with what
    /// dispatch notes of every request (last command, CLIENT REPLY muting).
    fn answer_here(&mut self, reply: Value, decision: &Decision) {
        let queued = self.replies.len();
        self.state.note_command(decision.spec);
        let mode = self.state.reply;
        self.ready(reply);
        self.mute_replies(queued, false, mode);
    }

    async fn route_request(&mut self, request: Request, decision: Decision) {
        if !self.state.authenticated && !allowed_before_auth(&request) {
            self.ready(Value::error("NOAUTH Authentication required."));
            return;
        }
        if self.subs.resp2_mode(self.state.protocol) {
            if !pubsub::allowed_when_subscribed(request.name()) {
                self.ready(pubsub::refused_when_subscribed(request.name()));
                return;
            }
            if request.name() == "PING" && request.argc() <= 2 {
                self.ready(pubsub::subscribed_pong(request.arg(1)));
                return;
            }
        }
        if self.tx.queues(&decision.route) {
            let one_shard = self.view.current.shard_count() == 1;
            let reply = self.tx.queue(request, &decision, one_shard);
            self.ready(reply);
            return;
        }
        if let Some(rejection) = decision.rejection(&request) {
            self.ready(Value::error(rejection.to_string()));
            return;
        }
        let (write, blocking) = (decision.write, decision.blocking);
        match decision.route {
            Route::Slot(slot) => {
                let shard = self.view.current.slots().shard_of(slot);
                self.forward(shard, request, write, blocking).await;
            }
            Route::AnyShard => {
                let shard = self.any_shard();
                if request.name() == "PING" && self.view.current.is_held(shard) {
                    // Its engine is being switched over: the endpoint answers for it rather
                    // than hold a liveness check (see `held_shard`).
                    self.local(LocalCommand::Ping, &request);
                    return;
                }
                self.forward(shard, request, write, blocking).await;
            }
            Route::Split(split) => self.split(split, write).await,
            Route::AllShards(merge) => self.all_shards(merge, &request, write).await,
            Route::Scan(step) => self.scan(step).await,
            Route::PubSub { kind, target } => self.pubsub(kind, target, &request).await,
            Route::Transaction { step, slot } => self.transaction(step, slot, &request).await,
            Route::Local(LocalCommand::Config) => {
                let topology = &self.view.current;
                let reply =
                    crate::config::config(topology.admin(), topology.bdb_uid(), &request).await;
                self.ready(reply);
            }
            Route::Local(LocalCommand::ClientTracking) => self.tracking_command(&request).await,
            Route::Local(command @ (LocalCommand::ClientInfo | LocalCommand::ClientList)) => {
                let reply = match self.client_line(command, &request).await {
                    // A verbatim string, as the engine answers it (a bulk string in RESP2).
                    Value::BulkString(text) => Value::VerbatimString {
                        format: *b"txt",
                        text,
                    },
                    other => other,
                };
                self.ready(reply);
            }
            Route::Local(LocalCommand::Monitor) => {
                let reply = match crate::monitor::Monitors::start(&self.view.current).await {
                    Ok(monitors) => {
                        self.monitors = monitors;
                        Value::simple("OK")
                    }
                    Err(reply) => reply,
                };
                self.ready(reply);
            }
            Route::Local(LocalCommand::ClientKill) => {
                let reply = self.client_kill(&request).await;
                self.ready(reply);
            }
            Route::Local(command) => self.local(command, &request),
            Route::Admin(merge) => {
                let reply = admin::ask(&self.view.current, merge, &request, self.state.protocol);
                self.ready(reply.await);
            }
            Route::CrossSlot | Route::Refused(_) | Route::Unknown | Route::Invalid(_) => {
                self.ready(Value::error("ERR internal: unrouted request"));
            }
        }
    }

    /// The held shard `request` would be sent to, if any (see `hold.rs`). PING never waits
    /// for a held shard: the endpoint answers it while its shard is held.
    pub(super) fn held_shard(&self, request: &Request, decision: &Decision) -> Option<ShardIndex> {
        let topology = &self.view.current;
        if !topology.any_held()
            || request.name() == "PING"
            || (!self.state.authenticated && !allowed_before_auth(request))
            || self.tx.queues(&decision.route)
            || decision.rejection(request).is_some()
        {
            return None;
        }
        let slots = topology.slots();
        let held = |shard: &ShardIndex| topology.is_held(*shard);
        match &decision.route {
            Route::Slot(slot) => Some(slots.shard_of(*slot)).filter(held),
            Route::AnyShard => Some(self.any_shard()).filter(held),
            Route::Split(split) => split.parts.iter().map(|p| p.shard).find(held),
            Route::AllShards(_) => (0..topology.shard_count()).map(ShardIndex).find(held),
            Route::Scan(step) => Some(step.shard).filter(held),
            Route::PubSub { target, .. } => match target {
                PubSubTarget::Slot(slot) => Some(slots.shard_of(*slot)),
                _ => Some(ShardIndex(0)),
            }
            .filter(held),
            Route::Transaction {
                step: TxStep::Exec, ..
            } => Some(
                self.tx
                    .pinned_slot()
                    .map_or_else(|| self.any_shard(), |slot| slots.shard_of(slot)),
            )
            .filter(held),
            Route::Transaction {
                step: TxStep::Watch,
                slot: Some(slot),
            } => Some(slots.shard_of(*slot)).filter(held),
            _ => None,
        }
    }

    /// Moves this client to connections of its own for good. Before a WAIT (or WAITAOF),
    /// each shard connection first runs a command that replicates, so the engine's count of
    /// this connection's writes covers those the client made over shared connections.
    pub(super) async fn leave_shared(&mut self, request: &Request) {
        let used_shared = self.links.leave_shared();
        if !(used_shared && matches!(request.name(), "WAIT" | "WAITAOF")) {
            return;
        }
        let marker = Request::new("PUBLISH", [OFFSET_MARKER_CHANNEL.into(), "".into()]);
        for shard in 0..self.view.current.shard_count() {
            if let Source::Shard(index) = self.open(ShardIndex(shard)).await {
                self.links.send(index, &marker);
                self.replies.push(Pending::Discard(Source::Shard(index)));
            }
        }
    }

    /// Queues a reply the proxy wrote itself (see [`Verdict::of_local`]).
    pub(super) fn ready(&mut self, value: Value) {
        let verdict = Verdict::of_local(&value);
        self.replies
            .push(Pending::Ready(value, self.state.protocol, verdict));
    }

    /// A keyless command's shard: spread over shards by client id.
    pub(super) fn any_shard(&self) -> ShardIndex {
        let count = u64::from(self.view.current.shard_count().max(1));
        ShardIndex((self.state.id % count) as u16)
    }

    /// The connection to `shard`, opened if needed and switched to the client's protocol,
    /// and set up to track for the client when it tracks (see `track.rs`).
    pub(super) async fn open(&mut self, shard: ShardIndex) -> Source {
        match self.open_conn(shard).await {
            Source::Shard(index) => self.arm_if_tracking(shard, index).await,
            other => other,
        }
    }

    /// The connection to `shard`, opened if needed and switched to the client's protocol.
    pub(super) async fn open_conn(&mut self, shard: ShardIndex) -> Source {
        let protocol = self.state.protocol;
        match self.links.open(shard, &self.view.current, protocol).await {
            Ok(Opened { index, hello }) => {
                if hello {
                    self.replies.push(Pending::Discard(Source::Shard(index)));
                }
                Source::Shard(index)
            }
            Err(e) => Source::Failed(e),
        }
    }

    /// Appends `request` to `shard`'s pipeline; returns where its reply will come from. A
    /// `write` keeps a copy of the request to resend it if it certainly did not run; a request
    /// whose shard could not be reached is kept to be sent once it can (see `resend.rs`).
    async fn send(&mut self, shard: ShardIndex, request: &Request, write: bool) -> Source {
        let source = self.open(shard).await;
        let Source::Shard(index) = source else {
            return source.unsent(shard, request.clone());
        };
        self.links.send(index, request);
        if write {
            Source::Write(index, request.clone())
        } else {
            source
        }
    }

    /// [`Session::send`] for one shard's part of a multi-shard request (MGET, DBSIZE, KEYS,
    /// SCAN...): a read part also keeps its request, so a part whose shard cannot be reached,
    /// is loading or lost it is asked again within the hold (see `resend.rs`) and the merge of
    /// the parts only sees whole answers.
    async fn send_part(&mut self, shard: ShardIndex, request: &Request, write: bool) -> Source {
        match self.send(shard, request, write).await {
            Source::Shard(index) if !write => Source::Read(index, request.clone()),
            source => source,
        }
    }

    /// [`Session::send`] for a request the session owns: the request itself is kept (its
    /// arguments are slices of the client's input buffer), so nothing is copied.
    async fn send_owned(&mut self, shard: ShardIndex, request: Request, write: bool) -> Source {
        let source = self.open(shard).await;
        let Source::Shard(index) = source else {
            return source.unsent(shard, request);
        };
        self.links.send(index, &request);
        if write {
            Source::Write(index, request)
        } else {
            Source::Read(index, request)
        }
    }

    /// Sends `request` to `shard`; its reply goes to the client as is. A `blocking` one's
    /// reply may come long after: the client can be handed over while it waits.
    async fn forward(&mut self, shard: ShardIndex, request: Request, write: bool, blocking: bool) {
        let source = self.send_owned(shard, request, write).await;
        let protocol = self.state.protocol;
        self.replies.push(if blocking {
            Pending::Blocking(source, protocol)
        } else {
            Pending::Forward(source, protocol)
        });
    }

    async fn split(&mut self, split: Split, write: bool) {
        let mut sources = Vec::with_capacity(split.parts.len());
        for part in &split.parts {
            sources.push(self.send_part(part.shard, &part.request, write).await);
        }
        let protocol = self.state.protocol;
        self.replies
            .push(Pending::Combine(sources, Combine::Split(split), protocol));
    }

    async fn all_shards(&mut self, merge: Merge, request: &Request, write: bool) {
        let mut sources = Vec::new();
        for shard in 0..self.view.current.shard_count() {
            sources.push(self.send_part(ShardIndex(shard), request, write).await);
        }
        let combine = match merge {
            Merge::Info => Combine::Info(self.info_context(request)),
            merge => Combine::Merge(merge),
        };
        let protocol = self.state.protocol;
        self.replies
            .push(Pending::Combine(sources, combine, protocol));
    }

    /// What INFO reports about the endpoint itself (see `info.rs`).
    fn info_context(&self, request: &Request) -> InfoContext {
        let topology = &self.view.current;
        InfoContext::of(
            request,
            self.stats.connections_current(),
            self.state.local.port(),
            topology.bdb_uid(),
            topology.shard_count(),
        )
    }

    async fn scan(&mut self, step: ScanStep) {
        let count = self.view.current.shard_count();
        if step.shard.0 >= count {
            self.ready(Value::error("ERR invalid cursor"));
            return;
        }
        let source = self.send_part(step.shard, &step.request, false).await;
        let protocol = self.state.protocol;
        self.replies
            .push(Pending::Scan(source, step.shard, count, protocol));
    }

    async fn pubsub(&mut self, kind: PubSubKind, target: PubSubTarget, request: &Request) {
        let shard = match target {
            PubSubTarget::Slot(slot) => self.view.current.slots().shard_of(slot),
            PubSubTarget::PubSubShard | PubSubTarget::SubscribedShards => ShardIndex(0),
        };
        let Some((sub_kind, _)) = SubKind::of(request.name()) else {
            let source = self.send(shard, request, false).await;
            self.replies
                .push(Pending::Forward(source, self.state.protocol));
            return;
        };
        let protocol = self.state.protocol;
        let index = usize::from(shard.0);
        let answers = match (kind, target) {
            (PubSubKind::Subscribe, _) => {
                let open = self.links.connect(shard, &self.view.current, protocol);
                vec![self.subs.subscribe(index, sub_kind, request, open).await]
            }
            (_, PubSubTarget::SubscribedShards) => self
                .subs
                .unsubscribe_everywhere(sub_kind, request, protocol),
            _ => vec![self.subs.unsubscribe(index, sub_kind, request, protocol)],
        };
        for answer in answers {
            let entry = match answer {
                Answer::Confirmations { shard, replies } => Pending::PubSub {
                    shard,
                    replies,
                    protocol,
                    forward: true,
                },
                Answer::Frames(frames) => Pending::Frames(frames, protocol),
                Answer::Refused(reply) => Pending::Ready(reply, protocol, Verdict::REFUSED),
                Answer::Failed(e) => {
                    Pending::Ready(e.reply(), protocol, Verdict::of_shard_error(&e))
                }
            };
            self.replies.push(entry);
        }
    }

    /// CLIENT INFO, and CLIENT LIST: the caller's line and the endpoint's other clients' (as
    /// its directory has them) that the filters keep, in the engine's field list (see
    /// `client_line.rs`).
    async fn client_line(&mut self, command: LocalCommand, request: &Request) -> Value {
        let filter = match command {
            LocalCommand::ClientList => {
                if let Some(refused) =
                    crate::client_line::engine_refuses(&self.view.current, request).await
                {
                    return refused;
                }
                match ListFilter::parse(request) {
                    Ok(filter) => Some(filter),
                    Err(reply) => return reply,
                }
            }
            _ => None,
        };
        let template = self.engine_line().await.map(str::to_owned);
        let subscriptions = self.subs.counts();
        let mine = self.state.facts(subscriptions, self.tx.queued());
        let Some(filter) = filter else {
            return Value::bulk(mine.render(template.as_deref()));
        };
        let subscribed = subscriptions.iter().any(|&n| n > 0);
        let mut list = String::new();
        for (id, entry) in self.stats.directory().entries() {
            if id == self.state.id {
                if filter.keeps_caller(&self.state, subscribed) {
                    list.push_str(&mine.render(template.as_deref()));
                }
            } else if filter.keeps_other(id, &entry) {
                list.push_str(&entry.facts(id).render(template.as_deref()));
            }
        }
        Value::bulk(list)
    }

    /// The engine's own CLIENT INFO line (its field list), read once per client connection.
    async fn engine_line(&mut self) -> Option<&str> {
        if self.state.engine_line.is_none() {
            let line = crate::client_line::engine_line(&self.view.current).await;
            self.state.engine_line = Some(line);
        }
        self.state.engine_line.as_ref().and_then(Option::as_deref)
    }

    /// CLIENT KILL: closes the endpoint's clients its filters name (the caller after this
    /// reply), as the engine closes its own; other endpoints' clients are not reached.
    async fn client_kill(&mut self, request: &Request) -> Value {
        let valkey = crate::client_line::is_valkey_line(self.engine_line().await);
        let filter = match KillFilter::parse(request, valkey) {
            Ok(filter) => filter,
            Err(reply) => return reply,
        };
        let directory = self.stats.directory();
        let mut killed = 0;
        for (id, entry) in directory.entries() {
            if id == self.state.id {
                if filter.keeps_caller(&self.state) {
                    self.closing = true;
                    killed += 1;
                }
            } else if filter.keeps_other(id, &entry) && directory.kill(id) {
                killed += 1;
            }
        }
        filter.reply(killed)
    }

    fn local(&mut self, command: LocalCommand, request: &Request) {
        let password = self.view.current.password();
        let outcome = self.state.answer(command, request, password);
        if matches!(command, LocalCommand::ClientSetName | LocalCommand::Hello) {
            self.listed.rename(self.state.name_text());
        }
        match outcome {
            LocalOutcome::Reply(value) => self.ready(value),
            LocalOutcome::Quit => {
                self.ready(Value::simple("OK"));
                self.closing = true;
            }
            LocalOutcome::Reset => {
                let watch = self.tx.reset();
                self.drop_watch(watch);
                for (shard, replies) in self.subs.reset() {
                    self.replies.push(Pending::PubSub {
                        shard,
                        replies,
                        protocol: self.state.protocol,
                        forward: false,
                    });
                }
                self.state.reset(self.view.current.password());
                self.reset_tracking();
                self.listed.rename(String::new());
                self.monitors = crate::monitor::Monitors::default();
                self.ready(Value::simple("RESET"));
            }
        }
    }

    async fn transaction(&mut self, step: TxStep, slot: Option<u16>, request: &Request) {
        match step {
            TxStep::Multi => {
                let reply = self.tx.multi();
                self.ready(reply);
            }
            TxStep::Exec => self.exec().await,
            TxStep::Discard => match self.tx.discard() {
                Ok(watch) => {
                    self.drop_watch(watch);
                    self.ready(Value::simple("OK"));
                }
                Err(reply) => self.ready(reply),
            },
            TxStep::Watch => self.watch(slot, request).await,
            TxStep::Unwatch => {
                let watch = self.tx.unwatch();
                self.drop_watch(watch);
                self.ready(Value::simple("OK"));
            }
        }
    }

    /// Carries out EXEC (see [`Exec`]): MULTI, the queued requests and EXEC go to the pinned
    /// shard in one go; only EXEC's reply reaches the client.
    async fn exec(&mut self) {
        let topology = &self.view.current;
        let any_shard = self.any_shard();
        let shard_of = |slot: Option<u16>| slot.map_or(any_shard, |s| topology.slots().shard_of(s));
        let links = &self.links;
        let (queued, shard, watched) = match self.tx.exec(shard_of, |w| links.holds(w)) {
            Exec::Refuse { reply, unwatch } => {
                self.drop_watch(unwatch);
                self.ready(reply);
                return;
            }
            Exec::WatchLost => {
                self.ready(null_array(self.state.protocol));
                return;
            }
            Exec::Send {
                shard,
                queued,
                watched,
            } => (queued, shard, watched),
        };
        let multi = Request::new("MULTI", []);
        let source = self.send(shard, &multi, false).await;
        let source = if watched {
            source.not_resent()
        } else {
            source.unsent_transaction(&queued)
        };
        let Source::Shard(index) = source else {
            self.replies
                .push(Pending::Forward(source, self.state.protocol));
            return;
        };
        for request in &queued {
            self.links.send(index, request);
        }
        self.links.send(index, &Request::new("EXEC", []));
        self.replies.push(Pending::Exec {
            index,
            shard,
            queued,
            watched,
            protocol: self.state.protocol,
        });
    }

    async fn watch(&mut self, slot: Option<u16>, request: &Request) {
        let one_shard = self.view.current.shard_count() == 1;
        let slot = match self.tx.watch(slot, one_shard) {
            Ok(slot) => slot,
            Err(reply) => return self.ready(reply),
        };
        let shard = self.view.current.slots().shard_of(slot);
        let source = self.send(shard, request, false).await.not_resent();
        if let Source::Shard(index) = source {
            self.tx.watching(Watch {
                slot,
                shard: index,
                generation: self.links.generation(index),
            });
        }
        self.replies
            .push(Pending::Forward(source, self.state.protocol));
    }

    /// Drops `watch` at its shard if the connection that watched is still the current one.
    fn drop_watch(&mut self, watch: Option<Watch>) {
        let Some(watch) = watch.filter(|w| self.links.holds(w)) else {
            return;
        };
        self.links.send(watch.shard, &Request::new("UNWATCH", []));
        self.replies
            .push(Pending::Discard(Source::Shard(watch.shard)));
    }
}

/// Commands a client may send before authenticating.
fn allowed_before_auth(request: &Request) -> bool {
    matches!(request.name(), "AUTH" | "HELLO" | "QUIT")
}
