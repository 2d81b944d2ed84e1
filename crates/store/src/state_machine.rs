//! The Raft state machine: applies committed commands to [`ClusterState`] and keeps it durable.
//!
//! The state lives in memory and reaches disk only in snapshots: applying a command costs the
//! same at any size of state (the log entry was made durable before it was committed, and the
//! committed index before it was applied). Every `SNAPSHOT_EVERY` entries (see the crate root)
//! openraft has a snapshot built; it is written in one redb transaction as `applied` (the state
//! and the log id it stands at, the JSON release 0.1.0 reads) and `snapshot_meta`. openraft
//! purges only log entries a snapshot covers, so on restart the node loads `applied` and
//! openraft applies again every committed entry after it: a killed daemon comes back with every
//! committed change.
//!
//! The same files open under release 0.1.0 (an in-place upgrade moved back before
//! finalization): 0.1.0 reads `applied` and likewise applies the entries after it. Its own
//! snapshot record (`snapshot`, the data as a JSON array of numbers) is read when no newer one
//! was written, and removed when one is, so neither release finds a snapshot older than what
//! the other wrote; a `snapshot_meta` left from before such a move back (it no longer matches
//! `applied`) is dropped on open.
//!
//! Readers share the applied state: [`StateMachine::state`] hands out an `Arc` of it, and
//! applying a batch copies the state only while some reader still holds the previous one
//! (copy-on-write), so a read never deep-copies the state.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use flotilla_model::{ClusterState, CommandResult};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log_store::io_error;
use crate::types::{Entry, LogId, NodeId, RaftNode, StorageError, TypeConfig};

/// Named values: the state as of the last snapshot and that snapshot's meta.
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");
/// The JSON of [`Applied`] as of the last snapshot: the snapshot's data.
const APPLIED: &str = "applied";
/// The JSON of the last snapshot's [`SnapshotMeta`].
const SNAPSHOT_META: &str = "snapshot_meta";
/// Release 0.1.0's snapshot record ([`LegacySnapshot`]).
const LEGACY_SNAPSHOT: &str = "snapshot";

/// What a snapshot holds: the cluster state and where in the log it stands.
///
/// The state sits behind an `Arc` shared with readers; serde encodes it as the bare state (the
/// JSON of `applied` and of snapshots is that of a plain `ClusterState` field).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, RaftNode>,
    pub state: Arc<ClusterState>,
}

/// How release 0.1.0 records its last snapshot (`data` is the JSON of [`Applied`], written as
/// an array of numbers).
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta<NodeId, RaftNode>,
    data: Vec<u8>,
}

/// The state machine, shared between openraft and readers (API, agent, orchestrator).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    applied: Arc<RwLock<Applied>>,
    changes: watch::Sender<u64>,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error) -> StorageError {
    io_error(ErrorSubject::StateMachine, verb, e)
}

fn write_err(e: impl std::error::Error) -> StorageError {
    sm_err(ErrorVerb::Write, e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| sm_err(ErrorVerb::Write, e))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| sm_err(ErrorVerb::Read, e))
}

impl StateMachine {
    /// Opens (or creates) the state machine table and loads the state of the last snapshot
    /// (openraft then applies the committed entries after it).
    pub fn open(db: Arc<Database>) -> Result<Self, StorageError> {
        let txn = db.begin_write().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        txn.open_table(SM)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        txn.commit().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let machine = Self {
            db,
            applied: Arc::default(),
            changes: watch::Sender::new(0),
        };
        let applied = match machine.read_bytes(APPLIED)? {
            Some(bytes) => decode::<Applied>(&bytes)?,
            None => Applied::default(),
        };
        let meta = machine.read_meta()?;
        if meta.is_some_and(|meta| meta.last_log_id != applied.last_applied) {
            machine.remove(SNAPSHOT_META)?;
        }
        *machine.applied.write().expect("state lock") = applied;
        Ok(machine)
    }

    /// The current cluster state, shared: cheap to take, never changes under the reader.
    pub fn state(&self) -> Arc<ClusterState> {
        self.applied.read().expect("state lock").state.clone()
    }

    /// The index of the last applied log entry, 0 when nothing was applied.
    pub fn applied_index(&self) -> u64 {
        let applied = self.applied.read().expect("state lock");
        applied.last_applied.map(|id| id.index).unwrap_or(0)
    }

    /// A receiver that changes whenever a batch of commands is applied (value: applied index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn read_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let table = txn.open_table(SM).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let bytes = table.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(bytes.map(|b| b.value().to_vec()))
    }

    fn read_meta(&self) -> Result<Option<SnapshotMeta<NodeId, RaftNode>>, StorageError> {
        self.read_bytes(SNAPSHOT_META)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    fn remove(&self, key: &str) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(SM).map_err(write_err)?;
            table.remove(key).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    /// Writes a snapshot (its data is the JSON of [`Applied`]) as the recovery point, in one
    /// transaction, unless a newer one is recorded already (a snapshot built from an older state
    /// may finish after a newer one was installed). Removes 0.1.0's snapshot record.
    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let meta_bytes = encode(meta)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(SM).map_err(write_err)?;
            let recorded = table.get(SNAPSHOT_META).map_err(write_err)?;
            let recorded: Option<SnapshotMeta<NodeId, RaftNode>> =
                recorded.map(|bytes| decode(bytes.value())).transpose()?;
            if recorded.is_some_and(|recorded| recorded.last_log_id > meta.last_log_id) {
                return Ok(());
            }
            table.insert(APPLIED, data).map_err(write_err)?;
            table
                .insert(SNAPSHOT_META, meta_bytes.as_slice())
                .map_err(write_err)?;
            table.remove(LEGACY_SNAPSHOT).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    fn publish(&self) {
        let index = self.applied_index();
        self.changes.send_replace(index);
    }
}

/// A snapshot's id: the term, leader and index of the last entry it covers.
fn snapshot_id(last_applied: Option<LogId>) -> String {
    match last_applied {
        Some(id) => format!(
            "{}-{}-{}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => "empty".to_string(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Shares the state (no copy); encoding and writing run outside the lock, on a thread
        // that may block (a large state takes a while).
        let applied = self.applied.read().expect("state lock").clone();
        let machine = self.clone();
        let build = move || {
            let data = encode(&applied)?;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id: snapshot_id(applied.last_applied),
            };
            machine.save_snapshot(&meta, &data)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        };
        tokio::task::spawn_blocking(build)
            .await
            .map_err(write_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, RaftNode>), StorageError> {
        let applied = self.applied.read().expect("state lock");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        {
            let mut applied = self.applied.write().expect("state lock");
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Ok,
                    EntryPayload::Normal(command) => {
                        if matches!(command, flotilla_model::Command::Unknown) {
                            tracing::error!(index = entry.log_id.index, "applied a command of a kind this version does not know; it changed nothing");
                        }
                        // Copies the state only when a reader still holds this version.
                        Arc::make_mut(&mut applied.state).apply(command)
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Ok
                    }
                };
                results.push(result);
            }
        }
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut applied: Applied = decode(snapshot.get_ref())?;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.save_snapshot(meta, &encode(&applied)?)?;
        *self.applied.write().expect("state lock") = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        if let Some(meta) = self.read_meta()? {
            let data = self.read_bytes(APPLIED)?.unwrap_or_default();
            return Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }));
        }
        let legacy = self.read_bytes(LEGACY_SNAPSHOT)?;
        Ok(legacy
            .map(|bytes| decode::<LegacySnapshot>(&bytes))
            .transpose()?
            .map(|legacy| Snapshot {
                meta: legacy.meta,
                snapshot: Box::new(Cursor::new(legacy.data)),
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// `applied` (and a snapshot's data) as the 0.1.0 release writes it, with a plain state.
    const APPLIED_0_1_0: &str = r#"{"last_applied":{"leader_id":{"term":1,"node_id":1},"index":3},"membership":{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"membership":{"configs":[[1]],"nodes":{"1":{"addr":"127.0.0.11:3333"}}}},"state":{"cluster":{"name":"c1","credentials":{"username":"admin","password_hash":"h"},"secret":"s","created_at":1},"nodes":{"1":{"uid":1,"addr":"127.0.0.11","software_version":"0.1.0","os":"Debian"}},"next_ids":{"next_node_uid":2,"next_bdb_uid":1,"next_shard_uid":1,"next_action_uid":1},"bdbs":{},"shards":{},"actions":{}}}"#;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    fn command(value: Value) -> flotilla_model::Command {
        serde_json::from_value(value).expect("a command")
    }

    fn create_cluster() -> flotilla_model::Command {
        command(json!({
            "kind": "create_cluster",
            "name": "c1",
            "credentials": {"username": "admin", "password_hash": "h"},
            "secret": "s",
            "created_at": 1,
            "node": {"addr": "127.0.0.11", "software_version": "0.1.0", "os": "Debian"}
        }))
    }

    fn open_machine(dir: &tempfile::TempDir, name: &str) -> StateMachine {
        let db = Database::create(dir.path().join(name)).expect("redb");
        StateMachine::open(Arc::new(db)).expect("state machine")
    }

    async fn apply_one(machine: &mut StateMachine, index: u64, command: flotilla_model::Command) {
        let entry = Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(command),
        };
        machine.apply([entry]).await.expect("applied");
    }

    #[test]
    fn the_shared_state_encodes_like_the_plain_state_of_0_1_0() {
        let applied: Applied = serde_json::from_str(APPLIED_0_1_0).expect("decodes");
        assert_eq!(
            applied.state.cluster.as_ref().map(|c| c.name.as_str()),
            Some("c1")
        );
        let encoded = serde_json::to_value(&applied).expect("encodes");
        let sample: Value = serde_json::from_str(APPLIED_0_1_0).expect("json");
        assert_eq!(encoded, sample);
    }

    #[tokio::test]
    async fn a_reader_keeps_its_snapshot_while_later_commands_apply() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut machine = open_machine(&dir, "sm.redb");
        let before = machine.state();
        assert!(
            Arc::ptr_eq(&before, &machine.state()),
            "a read shares, never copies"
        );
        apply_one(&mut machine, 1, create_cluster()).await;
        assert!(
            before.cluster.is_none(),
            "the reader's snapshot did not change"
        );
        let after = machine.state();
        assert_eq!(after.cluster.as_ref().map(|c| c.name.as_str()), Some("c1"));
        drop(before);
        // Nobody holds the previous version now: applying changes the state in place.
        let rename = command(json!({"kind": "update_cluster", "name": "c2"}));
        let held = Arc::as_ptr(&after);
        drop(after);
        apply_one(&mut machine, 2, rename).await;
        let renamed = machine.state();
        assert_eq!(Arc::as_ptr(&renamed), held, "no copy without readers");
        assert_eq!(
            renamed.cluster.as_ref().map(|c| c.name.as_str()),
            Some("c2")
        );
        assert_eq!(machine.applied_index(), 2);
    }

    #[tokio::test]
    async fn a_built_snapshot_installs_the_same_state_elsewhere_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut source = open_machine(&dir, "source.redb");
        apply_one(&mut source, 1, create_cluster()).await;
        let snapshot = source.build_snapshot().await.expect("built");
        let mut target = open_machine(&dir, "target.redb");
        let changes = target.subscribe();
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("installed");
        assert!(changes.has_changed().expect("open"), "readers are told");
        assert_eq!(*target.state(), *source.state());
        assert_eq!(target.applied_index(), 1);
        drop(target);
        let reopened = open_machine(&dir, "target.redb");
        assert_eq!(*reopened.state(), *source.state());
        assert_eq!(reopened.applied_index(), 1);
    }

    fn db_at(dir: &tempfile::TempDir, name: &str) -> Arc<Database> {
        Arc::new(Database::create(dir.path().join(name)).expect("redb"))
    }

    fn put(db: &Database, key: &str, value: &[u8]) {
        let txn = db.begin_write().expect("txn");
        txn.open_table(SM)
            .expect("table")
            .insert(key, value)
            .expect("insert");
        txn.commit().expect("commit");
    }

    fn has(db: &Database, key: &str) -> bool {
        let txn = db.begin_read().expect("txn");
        let table = txn.open_table(SM).expect("table");
        table.get(key).expect("get").is_some()
    }

    fn rename(name: &str) -> flotilla_model::Command {
        command(json!({"kind": "update_cluster", "name": name}))
    }

    fn cluster_name(machine: &StateMachine) -> Option<String> {
        machine.state().cluster.as_ref().map(|c| c.name.clone())
    }

    #[tokio::test]
    async fn applying_writes_nothing_and_a_reopen_starts_from_the_last_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = db_at(&dir, "sm.redb");
        let mut machine = StateMachine::open(db.clone()).expect("opens");
        apply_one(&mut machine, 1, create_cluster()).await;
        assert!(!has(&db, APPLIED), "an applied command is not written");
        machine.build_snapshot().await.expect("built");
        apply_one(&mut machine, 2, rename("c2")).await;
        assert_eq!(cluster_name(&machine).as_deref(), Some("c2"));
        drop(machine);
        // openraft applies the committed entries after the snapshot again (entry 2 here).
        let mut reopened = StateMachine::open(db).expect("reopens");
        assert_eq!(reopened.applied_index(), 1);
        assert_eq!(cluster_name(&reopened).as_deref(), Some("c1"));
        let current = reopened.get_current_snapshot().await.expect("read");
        let current = current.expect("the snapshot is recorded");
        assert_eq!(current.meta.last_log_id, Some(log_id(1)));
        let data: Applied = serde_json::from_slice(current.snapshot.get_ref()).expect("data");
        assert_eq!(data.last_applied, Some(log_id(1)));
    }

    #[tokio::test]
    async fn a_store_written_by_0_1_0_opens_and_its_snapshot_record_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = db_at(&dir, "sm.redb");
        let meta: Value = serde_json::from_str(APPLIED_0_1_0).expect("json");
        let legacy = json!({
            "meta": {
                "last_log_id": meta["last_applied"],
                "last_membership": meta["membership"],
                "snapshot_id": "1-1-3"
            },
            "data": APPLIED_0_1_0.as_bytes(),
        });
        put(&db, APPLIED, APPLIED_0_1_0.as_bytes());
        put(&db, LEGACY_SNAPSHOT, legacy.to_string().as_bytes());
        let mut machine = StateMachine::open(db.clone()).expect("opens");
        assert_eq!(machine.applied_index(), 3);
        assert_eq!(cluster_name(&machine).as_deref(), Some("c1"));
        let current = machine.get_current_snapshot().await.expect("read");
        let current = current.expect("0.1.0's snapshot is found");
        assert_eq!(current.meta.snapshot_id, "1-1-3");
        assert_eq!(
            current.snapshot.get_ref().as_slice(),
            APPLIED_0_1_0.as_bytes()
        );
        apply_one(&mut machine, 4, rename("c2")).await;
        machine.build_snapshot().await.expect("built");
        assert!(!has(&db, LEGACY_SNAPSHOT), "0.1.0's record is replaced");
        let applied: Value =
            serde_json::from_slice(&machine.read_bytes(APPLIED).unwrap().unwrap()).unwrap();
        assert_eq!(
            applied["last_applied"]["index"], 4,
            "0.1.0 reads `applied` as before"
        );
        assert_eq!(applied["state"]["cluster"]["name"], "c2");
    }

    #[tokio::test]
    async fn a_snapshot_meta_that_no_longer_matches_applied_is_dropped_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = db_at(&dir, "sm.redb");
        let mut machine = StateMachine::open(db.clone()).expect("opens");
        apply_one(&mut machine, 1, create_cluster()).await;
        machine.build_snapshot().await.expect("built");
        drop(machine);
        // Release 0.1.0 (moved back to) rewrites `applied` after each command.
        put(&db, APPLIED, APPLIED_0_1_0.as_bytes());
        let mut reopened = StateMachine::open(db.clone()).expect("reopens");
        assert_eq!(reopened.applied_index(), 3);
        assert!(!has(&db, SNAPSHOT_META));
        let current = reopened.get_current_snapshot().await.expect("read");
        assert!(
            current.is_none(),
            "openraft builds a new one when it needs it"
        );
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut source = open_machine(&dir, "source.redb");
        apply_one(&mut source, 1, create_cluster()).await;
        let older = source.build_snapshot().await.expect("built");
        apply_one(&mut source, 2, rename("c2")).await;
        let newer = source.build_snapshot().await.expect("built");
        let mut target = open_machine(&dir, "target.redb");
        target
            .install_snapshot(&newer.meta, newer.snapshot)
            .await
            .expect("installed");
        target
            .save_snapshot(&older.meta, older.snapshot.get_ref())
            .expect("skipped");
        let current = target.get_current_snapshot().await.expect("read");
        assert_eq!(current.expect("recorded").meta.last_log_id, Some(log_id(2)));
        drop(target);
        let reopened = open_machine(&dir, "target.redb");
        assert_eq!(cluster_name(&reopened).as_deref(), Some("c2"));
    }
}
