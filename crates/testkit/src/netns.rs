//! Network namespaces for partition tests: every node of a dev cluster on its own network, so a
//! test can cut a node off, cut one link, delay a link and heal, while the root namespace stays
//! untouched.
//!
//! A [`Network`] named `T` on subnet `10.14.S.0/24` is:
//! - a hub namespace `fl14-T-hub` holding a bridge;
//! - one namespace per node, `fl14-T-N`, whose `eth0` (a veth whose peer `vN` is on the bridge)
//!   has node N's address `10.14.S.(10+N)`; the node's daemon runs there (`ip netns exec`), and
//!   so do the engines it starts;
//! - a client namespace `fl14-T-c` (`10.14.S.200`) that [`Network::create`] moves the calling
//!   thread into (`setns`), so the test's CLI runs, REST clients and load checkers (and every
//!   thread and process they start) reach the nodes over the bridge.
//!
//! Faults: [`Network::isolate`] takes a node's port on the bridge down (its packets are dropped
//! silently, both ways, as with a pulled cable); [`Network::cut_link`] points each end's
//! neighbour entry for the other at an address no port has (their frames to each other go
//! nowhere, every other path still works); [`Network::delay`] adds `tc netem` delay (the kernel
//! must have `sch_netem`); [`Network::heal`] undoes all of them. [`run_in`] runs a closure on a
//! thread inside a node's namespace (a client on the node's own side of a cut).
//!
//! Whatever a network made is deleted on drop, also when the test fails; the leftovers of a
//! crashed run with the same name are deleted when the next one is created. Needs root and
//! `iproute2` (`scripts/install-test-packages`).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{poll_until, process_alive, DevCluster, PLAIN_HTTP_PORT};

/// The prefix of every namespace a [`Network`] makes (issue 14's partition tests).
const PREFIX: &str = "fl14";
/// The unicast address no port on a bridge has: where a cut link's frames are sent.
const NOWHERE_MAC: &str = "02:00:00:00:00:01";
/// The last byte of the client namespace's address.
const CLIENT_HOST: u8 = 200;

/// One test's network of namespaces; see the module docs.
pub struct Network {
    name: String,
    subnet: u8,
    nodes: u8,
}

impl Network {
    /// Makes network `name` (a short word: namespace and interface names are built from it) on
    /// `10.14.subnet.0/24` with `nodes` node namespaces and the client namespace, deleting a
    /// leftover of the same name first, and moves the calling thread into the client namespace.
    pub fn create(name: &str, subnet: u8, nodes: u8) -> Self {
        let network = Network {
            name: name.to_string(),
            subnet,
            nodes,
        };
        network.remove_all();
        network.build().unwrap_or_else(|e| {
            network.remove_all();
            panic!("building network namespaces {}: {e}", network.hub());
        });
        enter(&network.client_ns());
        network
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for n in 1..=self.nodes {
            self.attach(&self.node_ns(n), &format!("v{n}"), self.addr(n))?;
        }
        let client = Ipv4Addr::new(10, 14, self.subnet, CLIENT_HOST);
        self.attach(&self.client_ns(), "vc", client)
    }

    /// Makes namespace `ns` with `eth0` at `addr`, its peer `port` on the hub's bridge.
    fn attach(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<(), String> {
        let hub = self.hub();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", &hub, "link", "set", port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])
    }

    /// Deletes every namespace of this network's name (this run's or a crashed run's).
    fn remove_all(&self) {
        let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        let prefix = format!("{PREFIX}-{}-", self.name);
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or_default();
            if ns.starts_with(&prefix) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }

    fn hub(&self) -> String {
        format!("{PREFIX}-{}-hub", self.name)
    }

    /// The namespace of node `n`.
    pub fn node_ns(&self, n: u8) -> String {
        format!("{PREFIX}-{}-{n}", self.name)
    }

    /// The client namespace (the test thread's, once the network is created).
    pub fn client_ns(&self) -> String {
        format!("{PREFIX}-{}-c", self.name)
    }

    /// Node `n`'s address.
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 14, self.subnet, 10 + n)
    }

    /// Starts a dev cluster of this network's nodes, each daemon in its node's namespace, and
    /// forms it (`flotilla dev up` from the client namespace, which finds them running). Plain
    /// HTTP REST on 8080, as [`DevCluster::up`].
    pub fn up_cluster(&self, bin: &Path) -> DevCluster {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-netns-")
            .tempdir()
            .expect("temp dir");
        let cluster = DevCluster {
            bin: bin.to_path_buf(),
            dir,
            base: self.addr(1),
            nodes: self.nodes,
            env: Vec::new(),
            plain_http: true,
            installed: Default::default(),
        };
        for n in 1..=self.nodes {
            self.start_daemon(&cluster, n);
        }
        cluster.dev_up();
        cluster
    }

    /// Starts node `n`'s daemon in its namespace as `dev up` would, and waits until its pidfile
    /// names it (so `dev up` adopts it rather than starting another).
    pub fn start_daemon(&self, cluster: &DevCluster, n: u8) {
        let data_dir = cluster.data_dir(n);
        std::fs::create_dir_all(&data_dir).expect("node data dir");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(data_dir.join("flotilla.log"))
            .expect("node log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(n)])
            .arg(&cluster.bin)
            .args(["node", "start", "--addr", &self.addr(n).to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--rest-port", &PLAIN_HTTP_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("node log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("ip netns exec flotilla node start");
        // `ip netns exec` execs the daemon: the child's pid is the daemon's. Reaped when it
        // exits (a kill -9, the cluster's drop), so it never lingers as a zombie.
        let pid = child.id();
        std::thread::spawn(move || child.wait());
        let started = poll_until(Duration::from_secs(20), || {
            cluster.daemon_pid(n) == Some(pid) || !process_alive(pid)
        });
        assert!(
            started && process_alive(pid),
            "node {n}'s daemon did not start in {}",
            self.node_ns(n)
        );
    }

    /// Cuts node `n` off from every other node and the client namespace: its port on the
    /// bridge goes down, and packets either way are dropped without an answer.
    pub fn isolate(&self, n: u8) {
        ip_ok(&["-n", &self.hub(), "link", "set", &format!("v{n}"), "down"]);
    }

    /// Cuts the link between nodes `a` and `b` only (both ways); every other path still works.
    pub fn cut_link(&self, a: u8, b: u8) {
        for (from, to) in [(a, b), (b, a)] {
            let to = self.addr(to).to_string();
            let ns = self.node_ns(from);
            let args = ["lladdr", NOWHERE_MAC, "dev", "eth0", "nud", "permanent"];
            ip_ok(&[&["-n", &ns, "neigh", "replace", &to][..], &args[..]].concat());
        }
    }

    /// Delays every packet node `n` sends by `delay` (`tc netem`; the kernel must have
    /// `sch_netem`). Errs with `tc`'s message when it cannot.
    pub fn delay(&self, n: u8, delay: Duration) -> Result<(), String> {
        let ms = format!("{}ms", delay.as_millis());
        let ns = self.node_ns(n);
        let args = [
            "-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "netem",
        ];
        run("tc", &[&args[..], &["delay", &ms][..]].concat())
    }

    /// Undoes every fault: ports up, neighbour entries relearnt, delays removed.
    pub fn heal(&self) {
        let hub = self.hub();
        for n in 1..=self.nodes {
            ip_ok(&["-n", &hub, "link", "set", &format!("v{n}"), "up"]);
            let ns = self.node_ns(n);
            let _ = run("tc", &["-n", &ns, "qdisc", "del", "dev", "eth0", "root"]);
            for m in (1..=self.nodes).filter(|m| *m != n) {
                let other = self.addr(m).to_string();
                let _ = ip(&["-n", &ns, "neigh", "del", &other, "dev", "eth0"]);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Moves the calling thread into network namespace `ns` (threads and processes it starts
/// afterwards are there too).
fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening namespace {ns}: {e}"));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering namespace {ns}: {e}"));
}

/// Runs `f` on a new thread inside namespace `ns` (a client on a node's own side of a cut: its
/// runtime, sockets and threads are all there); join the handle for its result.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn ip_ok(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}
