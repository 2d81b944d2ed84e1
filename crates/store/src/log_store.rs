//! The durable Raft log, vote and committed index, kept in the node's redb database.
//!
//! Every write is one redb transaction committed with fsync before openraft is told it is
//! flushed, so an acknowledged entry survives a kill -9 of the daemon.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Log entries by index, JSON-encoded.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named values: vote, committed, last purged log id.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// openraft's log storage over redb; cheap to clone (the database is shared).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

/// Wraps any error as openraft's storage error for `subject`/`verb`.
pub(crate) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn logs_err(verb: ErrorVerb) -> impl Fn(&dyn std::error::Error) -> StorageError {
    move |e| StorageIOError::new(ErrorSubject::Logs, verb, AnyError::error(e.to_string())).into()
}

impl LogStore {
    /// Opens the log tables in `db`, creating them when the database is new.
    pub fn new(db: Arc<Database>) -> Result<Self, StorageError> {
        let txn = db
            .begin_write()
            .map_err(|e| logs_err(ErrorVerb::Write)(&e))?;
        txn.open_table(LOG)
            .map_err(|e| logs_err(ErrorVerb::Write)(&e))?;
        txn.open_table(META)
            .map_err(|e| logs_err(ErrorVerb::Write)(&e))?;
        txn.commit().map_err(|e| logs_err(ErrorVerb::Write)(&e))?;
        Ok(Self { db })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let err = logs_err(ErrorVerb::Read);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(META).map_err(|e| err(&e))?;
        let Some(bytes) = table.get(key).map_err(|e| err(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| err(&e))
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let err = logs_err(ErrorVerb::Write);
        let bytes = serde_json::to_vec(value).map_err(|e| err(&e))?;
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(META).map_err(|e| err(&e))?;
            table.insert(key, bytes.as_slice()).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let err = logs_err(ErrorVerb::Read);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(LOG).map_err(|e| err(&e))?;
        let Some((_, bytes)) = table.last().map_err(|e| err(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| err(&e))
    }

    /// Removes every entry whose index is in `range`.
    fn remove_range(&self, range: impl RangeBounds<u64>) -> Result<(), StorageError> {
        let err = logs_err(ErrorVerb::Delete);
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(LOG).map_err(|e| err(&e))?;
            let doomed: Vec<u64> = table
                .range(range)
                .map_err(|e| err(&e))?
                .map(|item| item.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(|e| err(&e))?;
            for index in doomed {
                table.remove(index).map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let err = logs_err(ErrorVerb::Read);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(LOG).map_err(|e| err(&e))?;
        let mut entries = Vec::new();
        for item in table.range(range).map_err(|e| err(&e))? {
            let (_, bytes) = item.map_err(|e| err(&e))?;
            entries.push(serde_json::from_slice(bytes.value()).map_err(|e| err(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta("last_purged")?;
        let last_log_id = self
            .last_entry()?
            .map(|entry| entry.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let err = logs_err(ErrorVerb::Write);
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(LOG).map_err(|e| err(&e))?;
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(|e| err(&e))?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index..)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_meta("last_purged", &Some(log_id))?;
        self.remove_range(..=log_id.index)
    }
}
