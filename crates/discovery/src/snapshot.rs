//! The snapshot the discovery service answers from: which databases this node names, where
//! their endpoints are, and where the other nodes' discovery services are; and how it is
//! projected from the cluster state.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use flotilla_model::{at_least, ClusterState, DatabasePassword, VERSIONED_RELEASE};

use crate::DISCOVERY_PORT;

/// Everything the discovery service names, as of one moment of the cluster state.
///
/// Exists so this crate does not depend on the store: [`Databases::of_node`] projects it from
/// the cluster state (each database's name and port, this node's address, the other nodes'
/// addresses), and the daemon publishes it through a `watch` channel whenever that changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Databases {
    /// One endpoint per database, in the order `SENTINEL masters` lists them.
    pub endpoints: Vec<DbEndpoint>,
    /// The other nodes' discovery services (`ADDR:8001`), reported by `SENTINEL sentinels` and
    /// counted in `num-other-sentinels`; never this node's own.
    pub sentinels: Vec<SocketAddr>,
}

/// Where clients reach one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbEndpoint {
    /// The database's name, which clients pass as the Sentinel "master name".
    pub name: String,
    /// The address of the proxy serving the database: this node's own address.
    pub addr: IpAddr,
    /// The database's endpoint port.
    pub port: u16,
    /// The database's client password, when it has one: discovery names the database only to a
    /// client that authenticated with it (see [`password_ok`]).
    pub password: Option<DatabasePassword>,
}

impl Databases {
    /// The snapshot of a node at `addr` whose proxy serves each `(name, port)` database, with
    /// the other nodes' discovery services `sentinels`.
    pub fn on_node(
        addr: IpAddr,
        databases: impl IntoIterator<Item = (String, u16)>,
        sentinels: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        let endpoints = databases
            .into_iter()
            .map(|(name, port)| DbEndpoint {
                name,
                addr,
                port,
                password: None,
            })
            .collect();
        let sentinels = sentinels.into_iter().collect();
        Databases {
            endpoints,
            sentinels,
        }
    }

    /// What the discovery service of the node at `addr` names in cluster state `state`: every
    /// database at this node's address, and every other node's discovery service. A
    /// database's password guards it only once the cluster version is 0.2.0 (a cluster made
    /// by 0.1.0 nodes keeps naming every database to every client until it is finalized).
    pub fn of_node(state: &ClusterState, addr: IpAddr) -> Self {
        let peers = state
            .nodes
            .values()
            .map(|n| n.addr)
            .filter(|ip| *ip != addr)
            .map(|ip| SocketAddr::new(ip, DISCOVERY_PORT));
        // Until the cluster version is 0.2.0, 0.1.0 nodes name every database to anyone:
        // this node does too, so clients see one answer whichever node they ask.
        let guarded = at_least(state.cluster_version(), VERSIONED_RELEASE);
        let endpoints = state
            .bdbs
            .values()
            .map(|b| DbEndpoint {
                name: b.spec.name.clone(),
                addr,
                port: b.spec.port,
                password: b.spec.password().filter(|_| guarded),
            })
            .collect();
        Databases {
            endpoints,
            sentinels: peers.collect(),
        }
    }

    /// The part of this snapshot a client that authenticated with `given` (or did not
    /// authenticate) may see: every database without a password, and those whose password is
    /// `given`. Borrowed when nothing is hidden.
    pub fn visible_to(&self, given: Option<&[u8]>) -> Cow<'_, Databases> {
        if self.endpoints.iter().all(|e| password_ok(e, given)) {
            return Cow::Borrowed(self);
        }
        let endpoints = self
            .endpoints
            .iter()
            .filter(|e| password_ok(e, given))
            .cloned()
            .collect();
        Cow::Owned(Databases {
            endpoints,
            sentinels: self.sentinels.clone(),
        })
    }

    /// The endpoint of the database named `name` (names are compared byte for byte, as
    /// Sentinel does).
    pub fn endpoint(&self, name: &[u8]) -> Option<&DbEndpoint> {
        self.endpoints.iter().find(|e| e.name.as_bytes() == name)
    }
}

impl DbEndpoint {
    /// The endpoint as one socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

/// True when a client that authenticated with `given` (`None`: not at all) may learn about the
/// database of `endpoint`: always when it has no password, else only with that password
/// (the model's check: hashed or plaintext, in constant time). The one place discovery checks
/// a database password.
pub fn password_ok(endpoint: &DbEndpoint, given: Option<&[u8]>) -> bool {
    match (&endpoint.password, given) {
        (None, _) => true,
        (Some(password), Some(given)) => password.matches(given),
        (Some(_), None) => false,
    }
}

/// A stable 40-hex-digit run id for the service or endpoint at `addr`.
///
/// Sentinel clients expect every instance to have a run id; deriving it from the address lets
/// every node compute the same id for a peer without asking it.
pub fn run_id(addr: SocketAddr) -> String {
    let text = addr.to_string();
    let mut id = String::with_capacity(48);
    for seed in [
        0xcbf2_9ce4_8422_2325_u64,
        0x8422_2325_cbf2_9ce4,
        0x9e37_79b9_7f4a_7c15,
    ] {
        id.push_str(&format!("{:016x}", fnv1a(seed, text.as_bytes())));
    }
    id.truncate(40);
    id
}

/// FNV-1a over `bytes` starting from `seed`.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_hex_and_differ_by_address() {
        let a = run_id("127.0.0.11:8001".parse().unwrap());
        let b = run_id("127.0.0.12:8001".parse().unwrap());
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, run_id("127.0.0.11:8001".parse().unwrap()));
        assert_ne!(a, b);
    }

    /// A two-node cluster state (nodes 127.0.0.11 and .12) with databases `a` (port 12000)
    /// and `b` (12001), as the store encodes it.
    fn two_nodes_two_databases() -> ClusterState {
        let node = |uid: u64, addr: &str| serde_json::json!({"uid": uid, "addr": addr, "software_version": "0.1.0", "os": "Debian"});
        let bdb = |uid: u64, name: &str, port: u16| {
            serde_json::json!({
                "uid": uid, "name": name, "port": port, "memory_size": 104857600,
                "shards_count": 1, "replication": false, "redis_version": "redis-7.0",
                "created_at": 1
            })
        };
        serde_json::from_value(serde_json::json!({
            "nodes": {"1": node(1, "127.0.0.11"), "2": node(2, "127.0.0.12")},
            "bdbs": {"1": bdb(1, "a", 12000), "2": bdb(2, "b", 12001)}
        }))
        .expect("a cluster state")
    }

    #[test]
    fn of_node_names_every_database_at_this_node_and_the_other_nodes_as_sentinels() {
        let state = two_nodes_two_databases();
        let addr: IpAddr = "127.0.0.12".parse().unwrap();
        let dbs = Databases::of_node(&state, addr);
        let endpoints: Vec<_> = dbs
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.socket_addr()))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("a", SocketAddr::new(addr, 12000)),
                ("b", SocketAddr::new(addr, 12001))
            ]
        );
        assert_eq!(dbs.sentinels, ["127.0.0.11:8001".parse().unwrap()]);
    }

    #[test]
    fn of_node_before_the_cluster_exists_names_nothing() {
        let addr: IpAddr = "127.0.0.11".parse().unwrap();
        assert_eq!(
            Databases::of_node(&ClusterState::default(), addr),
            Databases::default()
        );
    }

    #[test]
    fn a_database_with_a_password_is_visible_only_with_it() {
        let mut json = serde_json::to_value(two_nodes_two_databases()).unwrap();
        json["bdbs"]["2"]["authentication_redis_pass"] = "pw-b".into();
        json["cluster"] = serde_json::json!({"name": "c", "credentials": {"username": "a", "password_hash": "x"}, "secret": "s", "created_at": 1, "cluster_version": "0.1.0"});
        let at = |version: &str| {
            let mut json = json.clone();
            json["cluster"]["cluster_version"] = version.into();
            let state: ClusterState = serde_json::from_value(json).unwrap();
            Databases::of_node(&state, "127.0.0.11".parse().unwrap())
        };
        let before = at("0.1.0");
        let names: Vec<_> = before
            .visible_to(None)
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(
            names,
            ["a", "b"],
            "a 0.1.0 cluster names every database to anyone"
        );
        let dbs = at("0.2.0");
        let names = |given: Option<&[u8]>| -> Vec<String> {
            let visible = dbs.visible_to(given);
            visible.endpoints.iter().map(|e| e.name.clone()).collect()
        };
        assert_eq!(names(None), ["a"]);
        assert_eq!(names(Some(b"wrong")), ["a"]);
        assert_eq!(names(Some(b"pw-b")), ["a", "b"]);
        assert_eq!(dbs.visible_to(Some(b"pw-b")).sentinels, dbs.sentinels);
    }

    #[test]
    fn on_node_names_the_node_address_and_database_ports() {
        let addr: IpAddr = "127.0.0.12".parse().unwrap();
        let dbs = Databases::on_node(addr, [("a".to_owned(), 12000)], []);
        let a = dbs.endpoint(b"a").unwrap();
        assert_eq!(a.socket_addr(), SocketAddr::new(addr, 12000));
        assert!(dbs.endpoint(b"A").is_none());
    }
}
