//! The endpoint's directory of its open client connections (id, addresses, name, when it
//! connected), so CLIENT LIST shows every client of the endpoint as the engine shows every
//! client of its own. A session enters itself when it starts and leaves when it ends (its
//! [`Listed`] guard); only a name change touches the directory in between, never a command.
//! CLIENT KILL of another client wakes that client's session, which closes its connection where
//! it next waits for its client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// What CLIENT LIST shows of a client connection other than the caller.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The client's address.
    pub peer: SocketAddr,
    /// The endpoint's address.
    pub local: SocketAddr,
    /// CLIENT SETNAME's name (empty: none).
    pub name: String,
    /// When it connected.
    pub connected_at: Instant,
    /// Wakes the session to close its client (CLIENT KILL from another client).
    pub kill: Arc<Notify>,
}

/// One endpoint's open client connections by id, shared by its sessions.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientDirectory(Arc<Mutex<BTreeMap<u64, Entry>>>);

impl ClientDirectory {
    /// Enters client `id`; it stays listed until the returned guard is dropped.
    pub fn enter(&self, id: u64, entry: Entry) -> Listed {
        let kill = entry.kill.clone();
        self.lock().insert(id, entry);
        Listed {
            directory: self.clone(),
            id,
            kill,
        }
    }

    /// Asks client `id`'s session to close its connection (CLIENT KILL); whether it is listed.
    pub fn kill(&self, id: u64) -> bool {
        let entry = self.lock().get(&id).map(|e| e.kill.clone());
        entry.map(|kill| kill.notify_one()).is_some()
    }

    /// Every listed client, by id.
    pub fn entries(&self) -> Vec<(u64, Entry)> {
        self.lock().iter().map(|(id, e)| (*id, e.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps a client listed in its endpoint's directory; dropped when its session ends.
#[derive(Debug)]
pub(crate) struct Listed {
    directory: ClientDirectory,
    id: u64,
    kill: Arc<Notify>,
}

impl Listed {
    /// Completes once another client killed this one (a kill asked while the session was busy
    /// is kept until it next waits).
    pub async fn killed(&self) {
        self.kill.notified().await;
    }

    /// Records the client's new name (CLIENT SETNAME, HELLO SETNAME, RESET).
    pub fn rename(&self, name: String) {
        if let Some(entry) = self.directory.lock().get_mut(&self.id) {
            entry.name = name;
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.directory.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_listed_while_its_guard_lives() {
        let directory = ClientDirectory::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let entry = Entry {
            peer: addr,
            local: addr,
            name: String::new(),
            connected_at: Instant::now(),
            kill: Arc::new(Notify::new()),
        };
        let first = directory.enter(3, entry.clone());
        let second = directory.enter(5, entry);
        first.rename("app".into());
        let names: Vec<(u64, String)> = directory
            .entries()
            .into_iter()
            .map(|(id, e)| (id, e.name))
            .collect();
        assert_eq!(names, vec![(3, "app".into()), (5, String::new())]);
        assert!(directory.kill(3));
        drop(first);
        assert!(!directory.kill(3));
        assert_eq!(directory.entries().len(), 1);
        drop(second);
        assert!(directory.entries().is_empty());
    }
}
