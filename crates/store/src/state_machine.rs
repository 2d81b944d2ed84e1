//! The Raft state machine: applies committed commands to [`ClusterState`] and keeps it durable.
//!
//! The state is small (settings, nodes, databases, shards), so after every applied batch the
//! whole state and the last applied log id are written in one redb transaction. On restart the
//! node therefore starts from exactly what it had applied; snapshots are the same bytes.
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
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log_store::io_error;
use crate::types::{Entry, LogId, NodeId, RaftNode, StorageError, TypeConfig};

/// Named values: the applied state and the current snapshot.
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

/// What the state machine persists: the cluster state and where in the log it stands.
///
/// The state sits behind an `Arc` shared with readers; serde encodes it as the bare state (the
/// JSON of `applied` and of snapshots is that of a plain `ClusterState` field).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, RaftNode>,
    pub state: Arc<ClusterState>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
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

impl StateMachine {
    /// Opens (or creates) the state machine table and loads the last applied state.
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
        if let Some(applied) = machine.read_value::<Applied>("applied")? {
            *machine.applied.write().expect("state lock") = applied;
        }
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

    fn read_value<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let table = txn.open_table(SM).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let Some(bytes) = table.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    fn write_values(&self, values: &[(&str, Vec<u8>)]) -> Result<(), StorageError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        {
            let mut table = txn
                .open_table(SM)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            for (key, bytes) in values {
                table
                    .insert(*key, bytes.as_slice())
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            }
        }
        txn.commit().map_err(|e| sm_err(ErrorVerb::Write, e))
    }

    fn persist(&self, applied: &Applied) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(applied).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.write_values(&[("applied", bytes)])
    }

    fn publish(&self) {
        let index = self.applied_index();
        self.changes.send_replace(index);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = self.applied.read().expect("state lock").clone();
        let data = serde_json::to_vec(&applied).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let snapshot_id = match applied.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.write_values(&[("snapshot", bytes)])?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
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
        let snapshot = {
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
            applied.clone()
        };
        self.persist(&snapshot)?;
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
        let data = snapshot.into_inner();
        let mut applied: Applied =
            serde_json::from_slice(&data).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let snapshot_bytes =
            serde_json::to_vec(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let applied_bytes =
            serde_json::to_vec(&applied).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.write_values(&[("snapshot", snapshot_bytes), ("applied", applied_bytes)])?;
        *self.applied.write().expect("state lock") = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .read_value::<StoredSnapshot>("snapshot")?
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
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
}
