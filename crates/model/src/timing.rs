//! The timing bounds that depend on each other across crates, in one place, with the
//! inequalities between them checked when the workspace compiles.
//!
//! A switchover must end before the proxies stop holding its commands; a dead memory-only
//! primary must stay down until its replica is promoted; a replica must still count as linked
//! once its primary is declared failed. Each such rule ties numbers that the store, the agent,
//! the orchestrator and the endpoints use; each is written below as a `const` assertion with
//! the reason it must hold, so changing one number without the others fails the build.
//!
//! Bounds that stand alone (an engine's connect timeout, how often a step polls) stay next to
//! the code that uses them.

use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The store (Raft).

/// How often the primary node (Raft leader) heartbeats the other nodes.
pub const RAFT_HEARTBEAT: Duration = Duration::from_millis(200);
/// The shortest a node waits without a heartbeat before it stands for election.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(1000);
/// The longest a node waits without a heartbeat before it stands for election: the longest a
/// cluster whose primary node died stays without one (barring split votes).
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(2000);
/// How long the primary node gives one snapshot to reach a node and be installed there (a whole
/// state in one request, or one chunk for a 0.1.0 node); a slower transfer starts over.
pub const SNAPSHOT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// What the primary node observes.

/// How often a node's agent reports to the primary node (a shard that changes liveness, role
/// or link is reported at once).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How recent a node's last report must be for the node to count as up.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// The agent.

/// The longest the agent goes without reconciling this node's shards, store changes or not.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a replica in the middle of a full sync is observed, so the moment its link comes
/// up reaches the primary node at once (upgrade steps and the database's status wait for it)
/// rather than at the next round.
pub const SYNC_POLL: Duration = Duration::from_millis(50);
/// How long one reconcile step keeps watching a syncing replica.
pub const SYNC_WATCH: Duration = Duration::from_millis(800);
/// How long a primary that died without persistence, and that has a replica, stays down before
/// the agent restarts it as a primary anyway. Restarted at once, it would come back empty and
/// its replica would resync to that empty data set; waiting lets the replica be promoted first,
/// and the old primary then restarts as its replica with the data.
pub const PRIMARY_RESTART_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Unplanned failover (the orchestrator, on the primary node).

/// How long a primary shard must fail before its replica is promoted.
pub const FAILOVER_AFTER: Duration = Duration::from_millis(1500);
/// How long a primary shard's engine must refuse connections (its process is gone: nothing
/// listens on its port) before its replica is promoted. Shorter than [`FAILOVER_AFTER`]: a
/// refused connection is proof, where a timeout may be a slow engine on a loaded machine.
pub const FAILOVER_REFUSED_AFTER: Duration = Duration::from_millis(500);
/// How recent a node's report must be for the primary node to take its word that a primary
/// shard serves; an older one (the node may have died since) is checked with a PING from the
/// primary node itself.
pub const REPORT_TRUSTED: Duration = Duration::from_millis(1000);
/// How often the primary node checks primary shards (and repairs orphaned holds).
pub const FAILOVER_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How recently a replica must have been seen linked to its primary to be promoted.
pub const LINK_MEMORY: Duration = Duration::from_secs(10);
/// How long a switchover hold that no switchover drives (its primary node died mid-way) may
/// last before the primary node completes or undoes it.
pub const ORPHANED_HOLD_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The master lease (the agent; see README "Partitions").

/// The longest a fence takes to reach a local engine once the agent decided to lay it (one
/// local connection and `CLIENT PAUSE`), with room.
pub const LEASE_FENCE_REACH: Duration = Duration::from_millis(500);
/// How often the agent checks its master lease.
pub const LEASE_CHECK: Duration = Duration::from_millis(250);
/// How long a node's primary shards keep taking writes after the agent last heard the primary
/// node acknowledge its report (through a quorum, when the node is the primary node itself),
/// counted from when that report was sent: the master lease. Past it the agent fences them
/// (`CLIENT PAUSE WRITE`), so a master whose node is cut off from the primary node stops
/// taking writes before its replica elsewhere is promoted. Defined from the failover delays, so
/// shortening those shortens the lease.
pub const MASTER_LEASE: Duration = LIVENESS_WINDOW
    .saturating_add(FAILOVER_AFTER)
    .saturating_sub(LEASE_CHECK)
    .saturating_sub(LEASE_FENCE_REACH)
    .saturating_sub(Duration::from_millis(250));
/// How long one fence laid by an expired lease lasts unless laid again (at every check while
/// the lease stays expired, and while the shard is still a master the store no longer wants
/// as one); a renewed lease stops laying it and it lapses by itself.
pub const LEASE_FENCE: Duration = Duration::from_millis(1000);

// ---------------------------------------------------------------------------------------------
// Planned switchover (the orchestrator) and the proxies' hold (the endpoints).

/// How long proxies queue a held shard's commands (and wait for a new primary shard after
/// a `-READONLY`) before answering `-TRYAGAIN` (not executed).
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a switchover waits for every node to apply its hold before it aborts.
pub const HOLD_SPREAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest the primary stays fenced waiting for its replica before the switchover aborts.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the fence (`CLIENT PAUSE WRITE`) on the old primary lasts unless the switchover
/// lifts it: the catch-up and then the promotion, with room; a switchover whose primary node
/// dies leaves a fence that lifts itself.
pub const SWITCHOVER_FENCE: Duration = CATCH_UP_TIMEOUT.saturating_add(Duration::from_secs(5));
/// How long a switchover waits for an engine's answer: commands sent to the fenced primary may
/// wait for the fence.
pub const SWITCHOVER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The inequalities.

/// Raft itself: a follower hears several heartbeats within the shortest election timeout, and
/// the election timeouts form a range to draw from (openraft checks this only at start-up).
const _: () = assert!(
    RAFT_HEARTBEAT.as_millis() * 2 < ELECTION_TIMEOUT_MIN.as_millis()
        && ELECTION_TIMEOUT_MIN.as_millis() < ELECTION_TIMEOUT_MAX.as_millis(),
    "heartbeats must fit twice in the shortest election timeout, below the longest"
);

/// A node counts as down only after it missed two reports in a row: one late report (a slow
/// primary node, a forwarded call) never makes it down.
const _: () = assert!(
    REPORT_INTERVAL.as_millis() * 2 < LIVENESS_WINDOW.as_millis(),
    "a node must miss two reports before it counts as down"
);

/// A step watching a syncing replica ends before the next round, so that round's step for the
/// shard is not skipped; and it polls more than once while it watches.
const _: () = assert!(
    SYNC_POLL.as_millis() * 2 <= SYNC_WATCH.as_millis()
        && SYNC_WATCH.as_millis() < RECONCILE_INTERVAL.as_millis(),
    "a sync watch must end within a reconcile round"
);

/// "Continuous failure" means several checks: a primary shard is failed over only after more
/// than one check found it failing.
const _: () = assert!(
    FAILOVER_CHECK_EVERY.as_millis() * 2 <= FAILOVER_AFTER.as_millis(),
    "a primary shard must fail more than one check before failover"
);

/// A refused primary is failed over only after more than one check found it refused, and
/// sooner than one that merely fails.
const _: () = assert!(
    FAILOVER_CHECK_EVERY.as_millis() * 2 <= FAILOVER_REFUSED_AFTER.as_millis()
        && FAILOVER_REFUSED_AFTER.as_millis() < FAILOVER_AFTER.as_millis(),
    "a refused primary shard must fail more than one check, and fail over sooner"
);

/// A node's reports are trusted for at least two report intervals (one late report does not
/// make the primary node probe), and distrusted before the node counts as down.
const _: () = assert!(
    REPORT_INTERVAL.as_millis() * 2 <= REPORT_TRUSTED.as_millis()
        && REPORT_TRUSTED.as_millis() < LIVENESS_WINDOW.as_millis(),
    "a report must be trusted for two intervals, and no longer than the liveness window"
);

/// An unplanned failover of a primary whose engine (or whole node) died costs clients a
/// stall, not an error: the proxies hold the shard's requests while the primary node stops
/// trusting the dead node's last report, finds the engine refusing connections for
/// `FAILOVER_REFUSED_AFTER` (checked every `FAILOVER_CHECK_EVERY`), and promotes the replica;
/// what remains of the hold timeout is for the promotion to commit and reach the proxies. (An
/// engine killed on a live node is reported down within a reconcile round, sooner.)
const _: () = assert!(
    REPORT_TRUSTED.as_millis()
        + FAILOVER_REFUSED_AFTER.as_millis()
        + FAILOVER_CHECK_EVERY.as_millis() * 2
        + 1000
        < HOLD_TIMEOUT.as_millis(),
    "the failover of a dead primary must end within the proxies' hold timeout"
);

/// The agent holds a dead memory-only primary down until its replica is promoted: its report
/// reaches the primary node within a report interval, the failure must last `FAILOVER_AFTER`
/// and is acted on at the next check; the rest of the grace is for the promotion to commit and
/// reach the node of the dead primary shard. Were the grace shorter, the primary would restart
/// empty and its replica resync to nothing: the data set lost.
const _: () = assert!(
    REPORT_INTERVAL.as_millis() + FAILOVER_AFTER.as_millis() + FAILOVER_CHECK_EVERY.as_millis()
        < PRIMARY_RESTART_GRACE.as_millis(),
    "a memory-only primary shard must stay down until its replica is promoted"
);

/// A replica seen linked just before its primary died is still remembered as linked when the
/// primary is declared failed: the primary's last report may be a liveness window old, and the
/// failure must then last `FAILOVER_AFTER`. Otherwise no replica would be promotable.
const _: () = assert!(
    LIVENESS_WINDOW.as_millis() + FAILOVER_AFTER.as_millis() < LINK_MEMORY.as_millis(),
    "link memory must outlast a dead primary shard's last report plus the failover delay"
);

/// A switchover that succeeds never makes a client's command time out: the proxies hold its
/// commands from the hold's spread through the catch-up, and what remains of the hold timeout
/// is for the promotion to commit and reach the proxies.
const _: () = assert!(
    HOLD_SPREAD_TIMEOUT.as_millis() + CATCH_UP_TIMEOUT.as_millis() < HOLD_TIMEOUT.as_millis(),
    "a switchover must end within the proxies' hold timeout"
);

/// The fence outlasts the wait for the replica, so the old primary takes no write while the
/// replica catches up; and the switchover's engine commands outlast the fence, so a command
/// queued behind it is answered, not timed out.
const _: () = assert!(
    CATCH_UP_TIMEOUT.as_millis() < SWITCHOVER_FENCE.as_millis()
        && SWITCHOVER_FENCE.as_millis() < SWITCHOVER_RESPONSE_TIMEOUT.as_millis(),
    "the fence must outlast the catch-up and be outlasted by engine commands"
);

/// A switchover whose primary node dies right after the hold is repaired by the next primary
/// node (elected within `ELECTION_TIMEOUT_MAX`, then the grace, then the next check) before
/// the proxies give up on the held commands: they are sent, not answered `-TRYAGAIN`. (A
/// primary node that dies later in a switchover leaves less of the hold timeout; its clients
/// may then get `-TRYAGAIN`, which says the command was not executed.)
const _: () = assert!(
    ELECTION_TIMEOUT_MAX.as_millis()
        + ORPHANED_HOLD_GRACE.as_millis()
        + FAILOVER_CHECK_EVERY.as_millis()
        < HOLD_TIMEOUT.as_millis(),
    "an orphaned hold must be repaired within the hold timeout"
);

/// A master cut off from the primary node stops taking writes before its replica is promoted:
/// its lease, counted from the sending of the last acknowledged report, ends, the agent notices
/// within a check and the fence reaches the engine, all before the primary node, counting from
/// when it received that report, declares the node down (liveness window) and has seen its
/// shards fail for `FAILOVER_AFTER`.
const _: () = assert!(
    MASTER_LEASE.as_millis() + LEASE_CHECK.as_millis() + LEASE_FENCE_REACH.as_millis()
        < LIVENESS_WINDOW.as_millis() + FAILOVER_AFTER.as_millis(),
    "a cut-off master's lease must end before its replica is promoted"
);

/// The death of the primary node never fences masters elsewhere (barring split votes): a new
/// primary node is elected and acknowledges a report before the lease ends. And a lease
/// survives several lost reports, so one slow report never fences a healthy master.
const _: () = assert!(
    ELECTION_TIMEOUT_MAX.as_millis() + REPORT_INTERVAL.as_millis() * 2 < MASTER_LEASE.as_millis()
        && REPORT_INTERVAL.as_millis() * 3 < MASTER_LEASE.as_millis(),
    "the lease must outlast an election and several reports"
);

/// A fence laid at one lease check lasts past the next, so an expired lease fences without gaps.
const _: () = assert!(
    LEASE_CHECK.as_millis() * 2 < LEASE_FENCE.as_millis(),
    "a lease fence must outlast the next lease check"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The master lease against failover, in numbers (README "Partitions" quotes them: today
    /// 3.5 s of lease, fenced within 4.25 s of the last acknowledged report, failover no
    /// earlier than 4.5 s).
    #[test]
    fn master_lease_ends_before_failover() {
        let fenced_by = MASTER_LEASE + LEASE_CHECK + LEASE_FENCE_REACH;
        let failover_from = LIVENESS_WINDOW + FAILOVER_AFTER;
        assert!(
            fenced_by < failover_from,
            "{fenced_by:?} < {failover_from:?}"
        );
        assert!(ELECTION_TIMEOUT_MAX + REPORT_INTERVAL * 2 < MASTER_LEASE);
    }
}
