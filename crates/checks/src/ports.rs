//! Which program holds each port a node needs (`flotilla check ports`).
//!
//! Listening sockets come from `/proc/net/tcp` and `/proc/net/tcp6`, their owners from the
//! `socket:[inode]` links in `/proc/PID/fd/`. A port counts as taken when a socket listens on
//! the node's address or on the wildcard address with that port: either stops the daemon or an
//! engine from binding it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// A listening TCP socket on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The address it listens on (unspecified for every address).
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// The socket's inode, which names it under `/proc/PID/fd/`.
    pub inode: u64,
}

/// A port the node needs and what for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortNeed {
    /// The node's address.
    pub addr: IpAddr,
    /// The port.
    pub port: u16,
    /// What uses it (`REST API`, `database 'db1' endpoint`, `shard 3`).
    pub purpose: String,
}

/// Who holds a needed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PortState {
    /// This node's daemon or one of its engines listens there.
    Flotilla {
        /// The listening process.
        pid: u32,
        /// Its program name.
        program: String,
    },
    /// Nothing listens there: Flotilla can bind it.
    Free,
    /// Another program listens there (pid and program when this user may see them).
    Taken {
        /// The listening process, if visible.
        pid: Option<u32>,
        /// Its program name, if visible.
        program: Option<String>,
    },
}

/// One needed port, who holds it, and which other nodes could not connect to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// The port and its use.
    #[serde(flatten)]
    pub need: PortNeed,
    /// Who holds it.
    #[serde(flatten)]
    pub state: PortState,
    /// Nodes (uid, and why) that could not open a connection to it; only asked for ports
    /// Flotilla serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_from: Vec<(u64, String)>,
}

/// The listening TCP sockets of this machine (IPv4 and IPv6).
pub fn listening_sockets() -> Vec<Listener> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| parse_proc_net_tcp(&text))
        .collect()
}

/// The listening sockets in the text of `/proc/net/tcp` or `/proc/net/tcp6`.
fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some(Listener {
                addr: kernel_addr(addr)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

/// An address as `/proc/net/tcp*` prints it: hex of 32-bit words in the host's byte order.
fn kernel_addr(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            let v6 = Ipv6Addr::from(octets);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// The process (pid, program name) holding each socket inode, for every process this user
/// may inspect.
pub fn socket_owners() -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let program = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let inode = std::fs::read_link(fd.path()).ok().and_then(|target| {
                let target = target.to_str()?.to_string();
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            });
            if let Some(inode) = inode {
                owners.entry(inode).or_insert((pid, program.clone()));
            }
        }
    }
    owners
}

/// Judges each needed port against the listening sockets: served by Flotilla when its owner is
/// one of `flotilla_pids` (the daemon and its engines), taken when another process listens
/// there, free otherwise.
pub fn classify_ports(
    needs: Vec<PortNeed>,
    listeners: &[Listener],
    owners: &HashMap<u64, (u32, String)>,
    flotilla_pids: &HashSet<u32>,
) -> Vec<PortStatus> {
    needs
        .into_iter()
        .map(|need| {
            let holder = listeners
                .iter()
                .find(|l| l.port == need.port && (l.addr == need.addr || l.addr.is_unspecified()));
            let state = match holder.map(|l| owners.get(&l.inode)) {
                None => PortState::Free,
                Some(Some((pid, program))) if flotilla_pids.contains(pid) => PortState::Flotilla {
                    pid: *pid,
                    program: program.clone(),
                },
                Some(owner) => PortState::Taken {
                    pid: owner.map(|(pid, _)| *pid),
                    program: owner.map(|(_, program)| program.clone()),
                },
            };
            PortStatus {
                need,
                state,
                unreachable_from: Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B00007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0B00007F:D2F0 0C00007F:0D05 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn proc_net_tcp_gives_listeners_with_their_addresses() {
        let listeners = parse_proc_net_tcp(TCP);
        if cfg!(target_endian = "little") {
            assert_eq!(
                listeners,
                vec![
                    Listener {
                        addr: "127.0.0.11".parse().unwrap(),
                        port: 8080,
                        inode: 1111
                    },
                    Listener {
                        addr: "0.0.0.0".parse().unwrap(),
                        port: 8001,
                        inode: 2222
                    },
                ],
                "established connections are not listeners"
            );
        }
        let v6 = "  sl  local_address remote_address st\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0 4444\n";
        let listeners = parse_proc_net_tcp(v6);
        assert_eq!(listeners[0].addr, "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ports_are_flotillas_free_or_taken_by_a_named_program() {
        let node: IpAddr = "127.0.0.11".parse().unwrap();
        let need = |port, purpose: &str| PortNeed {
            addr: node,
            port,
            purpose: purpose.into(),
        };
        let listeners = [
            Listener {
                addr: node,
                port: 8080,
                inode: 1,
            },
            Listener {
                addr: "0.0.0.0".parse().unwrap(),
                port: 8001,
                inode: 2,
            },
            Listener {
                addr: "127.0.0.12".parse().unwrap(),
                port: 3333,
                inode: 3,
            },
        ];
        let owners = HashMap::from([
            (1, (10, "flotilla".to_string())),
            (2, (20, "nc".to_string())),
        ]);
        let statuses = classify_ports(
            vec![
                need(8080, "REST API"),
                need(8001, "discovery"),
                need(3333, "RPC"),
            ],
            &listeners,
            &owners,
            &HashSet::from([10]),
        );
        assert_eq!(
            statuses[0].state,
            PortState::Flotilla {
                pid: 10,
                program: "flotilla".into()
            }
        );
        assert_eq!(
            statuses[1].state,
            PortState::Taken {
                pid: Some(20),
                program: Some("nc".into())
            },
            "a wildcard listener takes the port on every address"
        );
        assert_eq!(
            statuses[2].state,
            PortState::Free,
            "another address's listener does not"
        );
    }

    #[test]
    fn this_process_listener_is_found_with_its_owner() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let statuses = classify_ports(
            vec![PortNeed {
                addr: "127.0.0.1".parse().unwrap(),
                port,
                purpose: "test".into(),
            }],
            &listening_sockets(),
            &socket_owners(),
            &HashSet::from([std::process::id()]),
        );
        assert!(
            matches!(statuses[0].state, PortState::Flotilla { pid, .. } if pid == std::process::id()),
            "{statuses:?}"
        );
    }
}
