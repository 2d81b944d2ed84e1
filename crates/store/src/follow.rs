//! Following the store: the two shapes every loop that watches the cluster state takes.
//!
//! - [`Store::watch_projection`]: "project the state, publish when the projection changed",
//!   for a value other tasks read (the discovery service's databases, the endpoints'
//!   topologies).
//! - [`Wakes`]: "on each change or tick, do X until shutdown", for the loops that act (the
//!   agent's reconcile rounds, the action runner's scan, the failover checks, the endpoints'
//!   listeners).

use std::sync::Arc;
use std::time::Duration;

use flotilla_model::ClusterState;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use crate::Store;

impl Store {
    /// A receiver of `project(state)`, republished after each applied change whose projection
    /// differs from the last one published (a change that does not concern the projection wakes
    /// no reader).
    ///
    /// The projection runs at once and on every change in a task of its own, which ends when
    /// every receiver is gone.
    pub fn watch_projection<T, F>(&self, mut project: F) -> watch::Receiver<T>
    where
        T: PartialEq + Send + Sync + 'static,
        F: FnMut(&ClusterState) -> T + Send + 'static,
    {
        let store = self.clone();
        republish_on_change(self.subscribe(), move || project(&store.state()))
    }

    /// This node's [`StateFeed`]: the applied state, republished after every change.
    pub fn state_feed(&self) -> StateFeed {
        let (tx, rx) = watch::channel(self.state());
        self.feed_into(tx);
        rx
    }

    /// Publishes the applied state into `tx` now and after every change, until every receiver
    /// of `tx` is gone: how a new daemon's feed, started from its predecessor's state during an
    /// in-place upgrade, continues from the store once the new daemon opens it.
    pub fn feed_into(&self, tx: watch::Sender<Arc<ClusterState>>) {
        let store = self.clone();
        let mut changes = self.subscribe();
        tx.send_replace(store.state());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
                tx.send_replace(store.state());
            }
        });
    }
}

/// The cluster state as this node knows it, republished after every change: the store's
/// applied state ([`Store::state_feed`]), or, in a new daemon taking over from its predecessor
/// during an in-place upgrade and until it opens the store, the state the predecessor passes
/// on. Readers follow it through [`project`].
pub type StateFeed = watch::Receiver<Arc<ClusterState>>;

/// [`Store::watch_projection`] over a [`StateFeed`]: `project(state)` now and after each
/// change of the feed, republished only when it differs.
pub fn project<T, F>(feed: StateFeed, mut project: F) -> watch::Receiver<T>
where
    T: PartialEq + Send + Sync + 'static,
    F: FnMut(&ClusterState) -> T + Send + 'static,
{
    let reader = feed.clone();
    republish_on_change(feed, move || {
        let state = reader.borrow().clone();
        project(&state)
    })
}

/// A receiver of `value()`, taken now and again after each change of `changes`, republished
/// only when it differs; the task doing so ends when every receiver is gone.
fn republish_on_change<C, T, F>(mut changes: watch::Receiver<C>, mut value: F) -> watch::Receiver<T>
where
    C: Send + Sync + 'static,
    T: PartialEq + Send + Sync + 'static,
    F: FnMut() -> T + Send + 'static,
{
    let (tx, rx) = watch::channel(value());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = tx.closed() => break,
            }
            publish_if_changed(&tx, value());
        }
    });
    rx
}

/// Replaces the value in `tx` with `next` and wakes its receivers, only when they differ.
pub fn publish_if_changed<T: PartialEq>(tx: &watch::Sender<T>, next: T) {
    tx.send_if_modified(|current| {
        let changed = *current != next;
        if changed {
            *current = next;
        }
        changed
    });
}

/// What woke a loop driven by [`Wakes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The period passed (the first wake-up is a tick, at once): do everything.
    Tick,
    /// The watched value changed: do what the change concerns.
    Change,
}

/// The wake-ups of a loop that acts on every change of a watched value (usually
/// [`Store::subscribe`]) and at least every period, until shutdown:
///
/// ```no_run
/// # async fn follow(store: flotilla_store::Store, shutdown: tokio::sync::watch::Receiver<bool>) {
/// use flotilla_store::{Wake, Wakes};
/// let period = std::time::Duration::from_secs(1);
/// let mut wakes = Wakes::on_change_or_every(store.subscribe(), period, shutdown);
/// while let Some(wake) = wakes.next().await {
///     let everything = wake == Wake::Tick; // else only what the change concerns
/// #   let _ = everything;
/// }
/// # }
/// ```
///
/// Changes that arrive during a round wake the loop once after it. A round longer than the
/// period delays the next tick instead of making up the missed ones in a burst. A watched value
/// whose sender is gone only stops the change wake-ups; the ticks go on.
pub struct Wakes<T> {
    changes: Option<watch::Receiver<T>>,
    tick: Interval,
    shutdown: watch::Receiver<bool>,
}

impl Wakes<()> {
    /// Wakes every `period` only (no watched value), until `shutdown` turns true or its
    /// sender is dropped.
    pub fn every(period: Duration, shutdown: watch::Receiver<bool>) -> Self {
        Wakes::new(None, period, shutdown)
    }
}

impl<T> Wakes<T> {
    /// Wakes when `changes` changes and every `period`, until `shutdown` turns true or its
    /// sender is dropped.
    pub fn on_change_or_every(
        changes: watch::Receiver<T>,
        period: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Wakes::new(Some(changes), period, shutdown)
    }

    fn new(
        changes: Option<watch::Receiver<T>>,
        period: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Wakes {
            changes,
            tick,
            shutdown,
        }
    }

    /// Waits for the next wake-up; `None` once the loop must stop.
    pub async fn next(&mut self) -> Option<Wake> {
        loop {
            if *self.shutdown.borrow_and_update() {
                return None;
            }
            let changes = self.changes.as_mut();
            let watching = changes.is_some();
            tokio::select! {
                _ = self.tick.tick() => return Some(Wake::Tick),
                changed = async { changes?.changed().await.ok() }, if watching => {
                    match changed {
                        Some(()) => return Some(Wake::Change),
                        None => self.changes = None,
                    }
                }
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_wake_is_a_tick_then_changes_and_ticks_until_shutdown() {
        let (changes_tx, changes) = watch::channel(0u64);
        let (stop_tx, stop) = watch::channel(false);
        let mut wakes = Wakes::on_change_or_every(changes, Duration::from_secs(1), stop);
        assert_eq!(wakes.next().await, Some(Wake::Tick));
        changes_tx.send_replace(1);
        changes_tx.send_replace(2);
        assert_eq!(wakes.next().await, Some(Wake::Change), "changes coalesce");
        let started = tokio::time::Instant::now();
        assert_eq!(wakes.next().await, Some(Wake::Tick));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        stop_tx.send_replace(true);
        assert_eq!(wakes.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_change_source_leaves_the_ticks_and_a_gone_shutdown_stops() {
        let (changes_tx, changes) = watch::channel(0u64);
        let (stop_tx, stop) = watch::channel(false);
        let mut wakes = Wakes::on_change_or_every(changes, Duration::from_secs(1), stop);
        assert_eq!(wakes.next().await, Some(Wake::Tick));
        drop(changes_tx);
        assert_eq!(wakes.next().await, Some(Wake::Tick));
        drop(stop_tx);
        assert_eq!(wakes.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_sent_false_does_not_stop_the_loop() {
        let (stop_tx, stop) = watch::channel(false);
        let mut wakes = Wakes::every(Duration::from_millis(250), stop);
        assert_eq!(wakes.next().await, Some(Wake::Tick));
        stop_tx.send_replace(false);
        let started = tokio::time::Instant::now();
        assert_eq!(wakes.next().await, Some(Wake::Tick));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_projection_is_republished_only_when_it_changed_and_stops_with_its_readers() {
        let source = std::sync::Arc::new(std::sync::Mutex::new(1u32));
        let (changes_tx, changes) = watch::channel(0u64);
        let read = source.clone();
        let mut rx = republish_on_change(changes, move || *read.lock().expect("lock") / 10);
        assert_eq!(*rx.borrow_and_update(), 0);
        *source.lock().expect("lock") = 5;
        changes_tx.send_replace(1);
        *source.lock().expect("lock") = 12;
        changes_tx.send_replace(2);
        rx.changed().await.expect("republished");
        assert_eq!(
            *rx.borrow_and_update(),
            1,
            "the value after the last change"
        );
        *source.lock().expect("lock") = 19;
        changes_tx.send_replace(3);
        tokio::task::yield_now().await;
        assert!(
            !rx.has_changed().expect("open"),
            "same projection: nobody woken"
        );
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), changes_tx.closed())
            .await
            .expect("the projecting task ended with its last reader");
    }

    #[test]
    fn an_equal_value_is_not_republished() {
        let (tx, mut rx) = watch::channel(vec![1, 2]);
        publish_if_changed(&tx, vec![1, 2]);
        assert!(!rx.has_changed().expect("open"));
        publish_if_changed(&tx, vec![3]);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow_and_update(), vec![3]);
    }
}
