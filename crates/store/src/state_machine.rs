//! The Raft state machine: applies committed commands to [`ClusterState`] and keeps it durable.
//!
//! The state is small (settings, nodes, databases, shards), so after every applied batch the
//! whole state and the last applied log id are written in one redb transaction. On restart the
//! node therefore starts from exactly what it had applied; snapshots are the same bytes.

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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, RaftNode>,
    pub state: ClusterState,
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

    /// A copy of the current cluster state.
    pub fn state(&self) -> ClusterState {
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
                        applied.state.apply(command)
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
