//! What one endpoint serves: the database's client password, the shards' internal password,
//! the slot map, the address of each shard's current primary, and the uids that name the
//! database and its shards in client errors and logs.
//!
//! The node daemon publishes a new [`Topology`] through a `tokio::sync::watch` channel whenever
//! the store says a shard moved; every client connection picks it up before its next command.
//!
//! A planned switchover publishes a *hold* on the shard first ([`Topology::with_hold`]): client
//! connections then queue the commands for its slots instead of sending them, and release them
//! to the primary named by the next topology that no longer holds the shard.

use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_model::{ClientLimits, DatabasePassword, TlsMode};

use crate::slot::{ShardIndex, SlotMap, SlotMapError};

/// Why a topology was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The slot map names more or fewer shards than there are addresses.
    #[error("the slot map has {map} shards but {addrs} primary addresses were given")]
    ShardCount {
        /// Shards in the slot map.
        map: u16,
        /// Addresses given.
        addrs: usize,
    },
    /// The slot map itself is invalid.
    #[error(transparent)]
    SlotMap(#[from] SlotMapError),
    /// A shard index beyond the database's shards.
    #[error("no shard {index}: the database has {count} shards")]
    NoSuchShard {
        /// The index asked for.
        index: u16,
        /// How many shards there are.
        count: u16,
    },
    /// Not one shard uid per shard.
    #[error("the database has {shards} shards but {uids} shard uids were given")]
    UidCount {
        /// Shards in the slot map.
        shards: u16,
        /// Uids given.
        uids: usize,
    },
}

/// How the proxy logs in to the shards' engines.
///
/// As a user (the engines' proxy user, which may run only what the proxy forwards) or, while
/// a 0.1.0 node is a cluster member, as the default user with the cluster secret. `fallback` is
/// the default user's password, tried when the user login is refused: an engine a 0.1.0
/// daemon started has no users until its agent moves it to them. A connection that had to fall
/// back is replaced after [`crate::shard::RELOGIN_AFTER`], so it logs in as the user once the
/// engine has moved.
#[derive(Clone, PartialEq, Eq)]
pub struct ShardLogin {
    /// The engine user (`None`: the default user).
    pub user: Option<String>,
    /// Its password (empty: no AUTH, for engines without a password).
    pub password: String,
    /// The default user's password, tried when the login above is refused.
    pub fallback: Option<String>,
}

impl ShardLogin {
    /// The default user with `password` (empty: no AUTH).
    pub fn default_user(password: impl Into<String>) -> Self {
        ShardLogin {
            user: None,
            password: password.into(),
            fallback: None,
        }
    }
}

impl std::fmt::Debug for ShardLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLogin")
            .field("user", &self.user)
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

/// One endpoint's view of its database: who may connect, and where each slot's primary runs.
///
/// Exists as the single input the proxy needs from the cluster store. Cheap to clone (the slot
/// map is shared), so every client connection keeps its own copy and routes without locks.
#[derive(Clone, PartialEq, Eq)]
pub struct Topology {
    password: Option<DatabasePassword>,
    limits: ClientLimits,
    tls_mode: TlsMode,
    shard_login: Arc<ShardLogin>,
    /// How the endpoint logs in as the engines' admin user, for the few commands that need it
    /// (see [`crate::Class::Admin`]); `None`: they are answered with an error.
    admin_login: Option<Arc<ShardLogin>>,
    slots: Arc<SlotMap>,
    primaries: Vec<SocketAddr>,
    holds: Vec<bool>,
    /// Each shard's uid, by shard index (the index itself when none were given).
    shard_uids: Arc<[u64]>,
    bdb_uid: Option<u64>,
    /// How CONFIG reaches the database's settings (see `admin.rs`); none outside a cluster.
    admin: Option<crate::AdminHandle>,
    /// Set when the database is an instance of an Active-Active database: its writes go
    /// through the CRDT layer (see `crdt.rs`).
    crdt: Option<CrdtInstance>,
}

/// What the endpoint of an Active-Active database's instance needs to know (from its
/// `BdbSpec.crdt`): whose writes it makes, and in which CRDB protocol version it logs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrdtInstance {
    /// The instance id (`crdt_replica_id`).
    pub replica_id: u16,
    /// The CRDB protocol version the instance writes its ops in (`crdt_protocol_version`).
    pub protocol_version: u16,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .field("tls_mode", &self.tls_mode)
            .field("shard_login", &self.shard_login)
            .field("admin_login", &self.admin_login)
            .field("shards", &self.slots.shard_count())
            .field("primaries", &self.primaries)
            .field("holds", &self.holds)
            .field("shard_uids", &self.shard_uids)
            .field("bdb_uid", &self.bdb_uid)
            .field("admin", &self.admin)
            .field("crdt", &self.crdt)
            .finish()
    }
}

impl Topology {
    /// A topology from its parts; `primaries[i]` is the address of shard `i`'s primary and
    /// there must be one per shard of `slots`. `password` is the database password clients
    /// authenticate with (`None`: no AUTH needed); `shard_password` is the engines' default
    /// user's password (see [`Topology::with_shard_login`] for a user).
    pub fn new(
        password: Option<String>,
        shard_password: impl Into<String>,
        slots: SlotMap,
        primaries: Vec<SocketAddr>,
    ) -> Result<Self, TopologyError> {
        if usize::from(slots.shard_count()) != primaries.len() {
            return Err(TopologyError::ShardCount {
                map: slots.shard_count(),
                addrs: primaries.len(),
            });
        }
        Ok(Topology {
            password: password.map(DatabasePassword::Plain),
            limits: ClientLimits::default(),
            tls_mode: TlsMode::Disabled,
            shard_login: Arc::new(ShardLogin::default_user(shard_password)),
            admin_login: None,
            slots: Arc::new(slots),
            holds: vec![false; primaries.len()],
            shard_uids: (0..primaries.len() as u64).collect(),
            primaries,
            bdb_uid: None,
            admin: None,
            crdt: None,
        })
    }

    /// The same topology naming its database and shards by their uids in the cluster store
    /// (`shard_uids[i]` is shard index `i`'s), which is how client errors and the proxy's logs
    /// name them, so an operator finds them in `flotilla db show`. Without it (topologies built
    /// outside a cluster), shards are named by their index.
    pub fn with_uids(mut self, bdb_uid: u64, shard_uids: Vec<u64>) -> Result<Self, TopologyError> {
        if shard_uids.len() != self.primaries.len() {
            return Err(TopologyError::UidCount {
                shards: self.shard_count(),
                uids: shard_uids.len(),
            });
        }
        self.shard_uids = shard_uids.into();
        self.bdb_uid = Some(bdb_uid);
        Ok(self)
    }

    /// The same topology serving an instance of an Active-Active database (`Some`), or a plain
    /// database.
    pub fn with_crdt(mut self, crdt: Option<CrdtInstance>) -> Self {
        self.crdt = crdt;
        self
    }

    /// The Active-Active instance this endpoint serves, if it is one.
    pub fn crdt(&self) -> Option<CrdtInstance> {
        self.crdt
    }

    /// The same topology logging in to the shards with `login` (an engine user).
    pub fn with_shard_login(mut self, login: ShardLogin) -> Self {
        self.shard_login = Arc::new(login);
        self
    }

    /// The same topology logging in as `login` (the engines' admin user) for the commands
    /// that need it: SLOWLOG and LATENCY, never the data path.
    pub fn with_admin_login(mut self, login: ShardLogin) -> Self {
        self.admin_login = Some(Arc::new(login));
        self
    }

    /// How the endpoint logs in as the engines' admin user, if it may.
    pub fn admin_login(&self) -> Option<&ShardLogin> {
        self.admin_login.as_deref()
    }

    /// A topology whose slots are split evenly over `primaries`, in order.
    pub fn even(
        password: Option<String>,
        shard_password: impl Into<String>,
        primaries: Vec<SocketAddr>,
    ) -> Result<Self, TopologyError> {
        let slots = SlotMap::even(primaries.len())?;
        Topology::new(password, shard_password, slots, primaries)
    }

    /// The same topology with shard `index` served by the primary at `addr` (a switchover or
    /// failover), for the daemon to publish.
    pub fn with_primary(&self, index: ShardIndex, addr: SocketAddr) -> Result<Self, TopologyError> {
        let mut next = self.clone();
        let count = self.slots.shard_count();
        let slot =
            next.primaries
                .get_mut(usize::from(index.0))
                .ok_or(TopologyError::NoSuchShard {
                    index: index.0,
                    count,
                })?;
        *slot = addr;
        Ok(next)
    }

    /// The same topology with shard `index` held (`true`) or released (`false`).
    ///
    /// Exists for step 1 of a planned switchover: while a shard is held, client connections
    /// queue the commands for its slots (bounded in time and bytes, see
    /// [`crate::ProxyOptions`]) instead of sending them to the primary being fenced. The
    /// topology that releases the hold usually names the new primary too
    /// (`t.with_primary(i, new)?.with_hold(i, false)?`).
    pub fn with_hold(&self, index: ShardIndex, held: bool) -> Result<Self, TopologyError> {
        let mut next = self.clone();
        let count = self.slots.shard_count();
        let slot = next
            .holds
            .get_mut(usize::from(index.0))
            .ok_or(TopologyError::NoSuchShard {
                index: index.0,
                count,
            })?;
        *slot = held;
        Ok(next)
    }

    /// Whether shard `index` is held for a switchover (an unknown shard is not).
    pub fn is_held(&self, index: ShardIndex) -> bool {
        self.holds
            .get(usize::from(index.0))
            .copied()
            .unwrap_or(false)
    }

    /// Whether any shard is held; lets the data path skip hold checks in the common case.
    pub fn any_held(&self) -> bool {
        self.holds.iter().any(|&h| h)
    }

    /// The same topology with the database password as the store keeps it (hashed from
    /// cluster version 0.2.0 on); `None`: no AUTH needed.
    pub fn with_password(mut self, password: Option<DatabasePassword>) -> Self {
        self.password = password;
        self
    }

    /// The same topology with these limits on client connections (per database, see
    /// [`ClientLimits`]); a topology starts with the defaults.
    pub fn with_limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The database password clients must send with AUTH or HELLO, if any.
    pub fn password(&self) -> Option<&DatabasePassword> {
        self.password.as_ref()
    }

    /// The same topology with the endpoint in `mode` (TLS only, or plaintext); the mode
    /// applies to clients accepted from then on.
    pub fn with_tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = mode;
        self
    }

    /// The same topology with CONFIG answered through `admin` (the node's store and engines).
    pub fn with_admin(mut self, admin: crate::AdminHandle) -> Self {
        self.admin = Some(admin);
        self
    }

    /// How CONFIG reaches the database's settings, if it can.
    pub fn admin(&self) -> Option<&crate::AdminHandle> {
        self.admin.as_ref()
    }

    /// Whether the endpoint accepts TLS clients only.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }

    /// The limits on client connections.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// How the proxy logs in to the shards.
    pub fn shard_login(&self) -> &ShardLogin {
        &self.shard_login
    }

    /// Which shard owns each slot.
    pub fn slots(&self) -> &SlotMap {
        &self.slots
    }

    /// The primary address of each shard, by shard index.
    pub fn primaries(&self) -> &[SocketAddr] {
        &self.primaries
    }

    /// The primary address of shard `index`.
    pub fn primary(&self, index: ShardIndex) -> Option<SocketAddr> {
        self.primaries.get(usize::from(index.0)).copied()
    }

    /// How many primary shards the database has.
    pub fn shard_count(&self) -> u16 {
        self.slots.shard_count()
    }

    /// The uid of shard `index` (see [`Topology::with_uids`]); its index when it has none.
    pub fn shard_uid(&self, index: ShardIndex) -> u64 {
        self.shard_uids
            .get(usize::from(index.0))
            .copied()
            .unwrap_or(u64::from(index.0))
    }

    /// The database's uid, if the topology names it (see [`Topology::with_uids`]).
    pub fn bdb_uid(&self) -> Option<u64> {
        self.bdb_uid
    }

    /// Shard `index` as client errors name it: `shard 7 (slots 0-8191)`.
    pub fn shard_name(&self, index: ShardIndex) -> ShardName {
        ShardName {
            uid: self.shard_uid(index),
            slots: self.slots.ranges_of(index),
        }
    }
}

/// A shard as client errors name it: its uid and the slots it serves, so an operator finds it
/// in `flotilla db show` and a client developer sees which keys it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardName {
    /// The shard's uid.
    pub uid: u64,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl std::fmt::Display for ShardName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} (slots ", self.uid)?;
        for (i, (start, end)) in self.slots.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if start == end {
                write!(f, "{sep}{start}")?;
            } else {
                write!(f, "{sep}{start}-{end}")?;
            }
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn topologies_are_validated_and_switch_primaries() {
        let t = Topology::even(None, "pw", vec![addr(1), addr(2)]).unwrap();
        assert_eq!(t.shard_count(), 2);
        let moved = t.with_primary(ShardIndex(1), addr(3)).unwrap();
        assert_eq!(moved.primary(ShardIndex(1)), Some(addr(3)));
        assert_eq!(moved.primary(ShardIndex(0)), Some(addr(1)));
        assert!(t.with_primary(ShardIndex(2), addr(3)).is_err());
        assert!(!t.any_held());
        let held = t.with_hold(ShardIndex(1), true).unwrap();
        assert!(held.is_held(ShardIndex(1)) && !held.is_held(ShardIndex(0)));
        assert!(held.any_held() && held != t);
        let released = held.with_primary(ShardIndex(1), addr(3)).unwrap();
        let released = released.with_hold(ShardIndex(1), false).unwrap();
        assert!(!released.any_held());
        assert_eq!(released, moved);
        assert!(t.with_hold(ShardIndex(2), true).is_err());
        let err = Topology::new(None, "pw", SlotMap::even(3).unwrap(), vec![addr(1)]);
        assert_eq!(err, Err(TopologyError::ShardCount { map: 3, addrs: 1 }));
        assert!(!format!("{t:?}").contains("pw"));
    }

    #[test]
    fn shards_are_named_by_uid_with_their_slots() {
        let t = Topology::even(None, "pw", vec![addr(1), addr(2)]).unwrap();
        assert_eq!(t.shard_uid(ShardIndex(1)), 1, "the index without uids");
        assert_eq!(t.bdb_uid(), None);
        let named = t.clone().with_uids(4, vec![7, 9]).unwrap();
        assert_eq!(named.shard_uid(ShardIndex(1)), 9);
        assert_eq!(named.bdb_uid(), Some(4));
        assert_ne!(named, t);
        assert_eq!(
            named.shard_name(ShardIndex(0)).to_string(),
            "shard 7 (slots 0-8191)"
        );
        assert_eq!(
            t.with_uids(4, vec![7]),
            Err(TopologyError::UidCount { shards: 2, uids: 1 })
        );
        let mut owners = vec![0; 16384];
        owners[5] = 1;
        let map = SlotMap::from_owners(owners).unwrap();
        let split = Topology::new(None, "pw", map, vec![addr(1), addr(2)]).unwrap();
        assert_eq!(
            split.shard_name(ShardIndex(0)).to_string(),
            "shard 0 (slots 0-4,6-16383)"
        );
        assert_eq!(
            split.shard_name(ShardIndex(1)).to_string(),
            "shard 1 (slots 5)"
        );
    }
}
