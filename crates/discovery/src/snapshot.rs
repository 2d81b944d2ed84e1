//! The snapshot the discovery service answers from: which databases this node names, where
//! their endpoints are, and where the other nodes' discovery services are.

use std::net::{IpAddr, SocketAddr};

/// Everything the discovery service names, as of one moment of the cluster state.
///
/// Exists so this crate does not depend on the store: the daemon builds it from the cluster
/// state (each database's name and port, this node's address, the other nodes' addresses) and
/// publishes it through a `watch` channel whenever that changes.
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
            .map(|(name, port)| DbEndpoint { name, addr, port })
            .collect();
        let sentinels = sentinels.into_iter().collect();
        Databases {
            endpoints,
            sentinels,
        }
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

    #[test]
    fn on_node_names_the_node_address_and_database_ports() {
        let addr: IpAddr = "127.0.0.12".parse().unwrap();
        let dbs = Databases::on_node(addr, [("a".to_owned(), 12000)], []);
        let a = dbs.endpoint(b"a").unwrap();
        assert_eq!(a.socket_addr(), SocketAddr::new(addr, 12000));
        assert!(dbs.endpoint(b"A").is_none());
    }
}
