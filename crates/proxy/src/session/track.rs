//! The session's side of client-side caching (see `tracking.rs` for the design): CLIENT
//! TRACKING turned on and off at every shard connection, tracking set up on a connection
//! opened later, CLIENT CACHING sent ahead of the next command's shards, and the invalidations
//! passed on to the client between batches.

use flotilla_resp::{Request, Value};

use crate::command::{Merge, TxStep};
use crate::route::{Decision, Route};
use crate::slot::ShardIndex;
use crate::tracking::{self, Change, Event};

use super::replies::{Combine, Pending, Source};
use super::Session;

impl Session {
    /// CLIENT TRACKING/CACHING/GETREDIR/TRACKINGINFO.
    pub(super) async fn tracking_command(&mut self, request: &Request) {
        let change = self.tracking.command(request, self.state.local);
        self.state.tracking = self.tracking.client_flags();
        let sources = match change {
            Err(reply) => return self.ready(reply),
            Ok(Change::On(options)) => {
                let mut sources = Vec::new();
                for shard in 0..self.view.current.shard_count() {
                    sources.push(self.track_on(ShardIndex(shard), &options).await);
                }
                sources
            }
            Ok(Change::Off) => self.track_off(),
        };
        if sources.is_empty() {
            return self.ready(Value::simple("OK"));
        }
        let protocol = self.state.protocol;
        self.replies.push(Pending::Combine(
            sources,
            Combine::Merge(Merge::AllOk),
            protocol,
        ));
    }

    /// Turns tracking on at `shard` with the client's `options`: on a connection tracking
    /// already, the request as the client gave it (BCAST prefixes add up, as in Redis); on
    /// another, the whole mode. Returns where the engine's answer comes from.
    async fn track_on(&mut self, shard: ShardIndex, options: &[bytes::Bytes]) -> Source {
        let source = self.open_conn(shard).await;
        let Source::Shard(index) = source else {
            return source;
        };
        let generation = self.links.generation(index);
        let next = self.links.next_generation();
        let inbox = match self.tracking.inbox(shard, &self.view.current, next).await {
            Ok(inbox) => inbox,
            Err(e) => return Source::Failed(e),
        };
        if self.tracking.armed_at(index, generation) {
            self.links
                .send(index, &tracking::on_request(inbox, options));
        } else {
            self.links.send(index, &tracking::off_request());
            self.replies.push(Pending::Discard(Source::Shard(index)));
            self.links.send(index, &self.tracking.whole_request(inbox));
            self.tracking.arm(index, generation);
        }
        Source::Shard(index)
    }

    /// Turns tracking off at every connection tracking; the sources of their answers.
    fn track_off(&mut self) -> Vec<Source> {
        let mut sources = Vec::new();
        for (index, generation) in self.tracking.armed() {
            if self.links.generation(index) == generation && generation != 0 {
                self.links.send(index, &tracking::off_request());
                sources.push(Source::Shard(index));
            }
        }
        self.tracking.disarm_all();
        sources
    }

    /// RESET: tracking off, the engines' answers discarded.
    pub(super) fn reset_tracking(&mut self) {
        self.tracking.reset();
        for source in self.track_off() {
            self.replies.push(Pending::Discard(source));
        }
        self.state.tracking = self.tracking.client_flags();
    }

    /// After the connection of `index` to `shard` was opened for a request: when the client
    /// tracks and this connection does not yet, tracking is set up on it first (the keys a
    /// former connection tracked are lost: the client is told to drop them all).
    pub(super) async fn arm_if_tracking(&mut self, shard: ShardIndex, index: usize) -> Source {
        let generation = self.links.generation(index);
        if !self.tracking.is_on() || self.tracking.armed_at(index, generation) {
            return Source::Shard(index);
        }
        let lost = self.tracking.was_armed(index);
        let next = self.links.next_generation();
        let inbox = match self.tracking.inbox(shard, &self.view.current, next).await {
            Ok(inbox) => inbox,
            Err(e) => return Source::Failed(e),
        };
        self.links.send(index, &tracking::off_request());
        self.replies.push(Pending::Discard(Source::Shard(index)));
        self.links.send(index, &self.tracking.whole_request(inbox));
        self.replies.push(Pending::Discard(Source::Shard(index)));
        self.tracking.arm(index, generation);
        if lost {
            self.on_tracking_event(Event::Invalidated(None));
        }
        Source::Shard(index)
    }

    /// Before a request is routed: a pending CLIENT CACHING goes to each shard the request
    /// goes to (a CLIENT command, or one queued in MULTI, leaves it pending, as in Redis).
    pub(super) async fn send_caching(&mut self, request: &Request, decision: &Decision) {
        let keep = self.tx.queues(&decision.route) || request.name() == "CLIENT";
        let Some(yes) = self.tracking.take_caching(keep) else {
            return;
        };
        for shard in self.shards_of(decision) {
            if let Source::Shard(index) = self.open(shard).await {
                self.links.send(index, &tracking::caching_request(yes));
                self.replies.push(Pending::Discard(Source::Shard(index)));
            }
        }
    }

    /// The shards a routed request goes to.
    fn shards_of(&self, decision: &Decision) -> Vec<ShardIndex> {
        let topology = &self.view.current;
        let slots = topology.slots();
        match &decision.route {
            Route::Slot(slot) => vec![slots.shard_of(*slot)],
            Route::AnyShard => vec![self.any_shard()],
            Route::Split(split) => split.parts.iter().map(|p| p.shard).collect(),
            Route::AllShards(_) => (0..topology.shard_count()).map(ShardIndex).collect(),
            Route::Scan(step) => vec![step.shard],
            Route::Transaction {
                step: TxStep::Exec, ..
            } => vec![self
                .tx
                .pinned_slot()
                .map_or_else(|| self.any_shard(), |slot| slots.shard_of(slot))],
            _ => Vec::new(),
        }
    }

    /// Passes one tracking event on to the client's output (see `tracking.rs`).
    pub(super) fn on_tracking_event(&mut self, event: Event) {
        let protocol = self.state.protocol;
        let local = self.state.local;
        let value = match event {
            Event::Invalidated(note) => self.tracking.deliver(note, protocol, local),
            Event::InboxLost(index) => {
                tracing::debug!(
                    shard = index,
                    "tracking inbox lost; the client drops its whole cache"
                );
                self.tracking.deliver(None, protocol, local)
            }
            Event::Redirected(note) => tracking::redirected(note, protocol, self.subs.active()),
        };
        self.state.tracking = self.tracking.client_flags();
        if let Some(value) = value {
            value.encode_as(&mut self.client.output, protocol);
        }
    }

    /// Passes on the tracking events that arrived, before the next batch is routed: an
    /// invalidation that reached the endpoint before a request comes before its reply.
    pub(super) async fn drain_tracking(&mut self) -> std::io::Result<()> {
        let events = self.tracking.ready_events().await;
        if events.is_empty() {
            return Ok(());
        }
        for event in events {
            self.on_tracking_event(event);
        }
        self.client.write_output().await
    }
}
