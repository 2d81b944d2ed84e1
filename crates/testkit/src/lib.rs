//! Test harness for integration tests that start the real thing.
//!
//! A [`DevCluster`] is `flotilla dev up` run by the binary under test (overridable with
//! `FLOTILLA_BIN`, so the same suite can run against a released build) in a temp dir, on a
//! loopback subnet chosen by the test (`127.0.S.11`, `.12`, ...) so tests never collide. On drop
//! it stops its daemons by pid; when the test failed it prints the tail of every node's log and
//! keeps the dir for inspection.
//!
//! [`netns::Network`] puts each node of such a cluster in its own network namespace, for
//! partition tests; a [`Relay`] is a TCP link between clusters that a test can cut.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::Client;

pub mod netns;
mod packages;
pub mod relay;
mod resp_client;

pub use flotilla_client::install_crypto_provider;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
pub use packages::{old_release_binary, Packages, OLD_BIN_ENV};
pub use relay::Relay;
pub use resp_client::RespClient;

/// Kept in a cluster's environment list by [`DevCluster::up_from_package`]: the package every
/// `dev up` of the cluster starts its nodes from.
const DEV_PACKAGE_ENV: &str = "FLOTILLA_TEST_DEV_PACKAGE";

/// Operator user name the harness creates clusters with.
pub const USER: &str = "admin";
/// Operator password the harness creates clusters with.
pub const PASSWORD: &str = "test-password";

/// The flotilla binary to test: `FLOTILLA_BIN` if set, else the one cargo built.
pub fn flotilla_bin(cargo_built: &str) -> PathBuf {
    std::env::var_os("FLOTILLA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(cargo_built))
}

/// A local cluster of real daemons started with `flotilla dev up`.
pub struct DevCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    base: Ipv4Addr,
    nodes: u8,
    env: Vec<(String, String)>,
    /// Whether the nodes also serve plain HTTP on 8080 (`dev up --http-port 8080`), which the
    /// CLI and clients of this cluster then use; else they use HTTPS on 9443 with the CA.
    plain_http: bool,
    /// Packages [`DevCluster::install_package`] installed: source, installed folder.
    installed: std::sync::Mutex<Vec<(PathBuf, PathBuf)>>,
}

/// The plain-HTTP REST port test clusters serve unless they are HTTPS-only (release 0.1.0's).
pub const PLAIN_HTTP_PORT: u16 = 8080;
/// The REST API's HTTPS port.
pub const HTTPS_PORT: u16 = 9443;

impl DevCluster {
    /// Starts `nodes` daemons on `127.0.subnet.11..` and forms the cluster; panics with the
    /// command's output when it fails.
    pub fn up(bin: &Path, subnet: u8, nodes: u8) -> Self {
        Self::up_with_env(bin, subnet, nodes, &[])
    }

    /// [`DevCluster::up`] with extra environment for the daemons (e.g. failpoints), kept for
    /// every later `dev up` of this cluster.
    pub fn up_with_env(bin: &Path, subnet: u8, nodes: u8, env: &[(&str, &str)]) -> Self {
        Self::start(bin, subnet, nodes, env, true)
    }

    /// [`DevCluster::up`] without plain HTTP: the nodes serve the REST API only over HTTPS
    /// (the default of `node start` and `dev up`), and the CLI trusts the cluster CA.
    pub fn up_https_only(bin: &Path, subnet: u8, nodes: u8) -> Self {
        Self::start(bin, subnet, nodes, &[], false)
    }

    fn start(bin: &Path, subnet: u8, nodes: u8, env: &[(&str, &str)], plain_http: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-test-")
            .tempdir()
            .expect("temp dir");
        let cluster = Self {
            bin: bin.to_path_buf(),
            dir,
            base: Ipv4Addr::new(127, 0, subnet, 11),
            nodes,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            plain_http,
            installed: Default::default(),
        };
        cluster.dev_up();
        cluster
    }

    /// [`DevCluster::up`] with every node running from `package` (`flotilla dev up
    /// --package`), as machines with that version installed.
    pub fn up_from_package(bin: &Path, subnet: u8, nodes: u8, package: &Path) -> Self {
        Self::up_from_package_with_env(bin, subnet, nodes, package, &[])
    }

    /// [`DevCluster::up_from_package`] with extra environment for the daemons.
    pub fn up_from_package_with_env(
        bin: &Path,
        subnet: u8,
        nodes: u8,
        package: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let package = package.to_string_lossy().into_owned();
        let mut env = env.to_vec();
        env.push((DEV_PACKAGE_ENV, &package));
        Self::up_with_env(bin, subnet, nodes, &env)
    }

    /// Runs `flotilla dev up` again: restarts daemons that are not running, waits for all.
    pub fn dev_up(&self) -> Output {
        let output = self.try_dev_up();
        assert_success(&output, "flotilla dev up");
        output
    }

    /// [`DevCluster::dev_up`] that may fail (a test of a daemon that must refuse to start).
    pub fn try_dev_up(&self) -> Output {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let (nodes, base) = (self.nodes.to_string(), self.base.to_string());
        let mut args = vec![
            "dev",
            "up",
            "--nodes",
            &nodes,
            "--dir",
            &dir,
            "--base-addr",
            &base,
        ];
        let package = self.env.iter().find(|(k, _)| k == DEV_PACKAGE_ENV);
        if let Some((_, package)) = package {
            args.extend(["--package", package.as_str()]);
        }
        let http_port = PLAIN_HTTP_PORT.to_string();
        if self.plain_http {
            args.extend(["--http-port", http_port.as_str()]);
        }
        self.flotilla(&args)
    }

    /// Starts node `n`'s daemon again, itself (`flotilla node start` as `dev up` runs it,
    /// logging to the node's `flotilla.log`), with `env` on top of the cluster's environment
    /// for this start only: e.g. the next failpoint armed (`FLOTILLA_FAILPOINTS`). The daemon
    /// must not be running (after [`DevCluster::kill9`], or a failpoint's `exit`). Returns at
    /// once with the child, so a test sees it exit (its status tells a failpoint's `exit` from
    /// a crash) even before it answers; `dev up` would wait for a whole cluster that it may
    /// leave again at any moment. A cluster started from a package starts it from that
    /// package ([`DevCluster::start_daemon_from_package`] for another one).
    pub fn start_daemon_with_env(&self, n: u8, env: &[(&str, &str)]) -> Child {
        match self.package() {
            Some(package) => self.start_daemon_from_package(n, &package, env),
            None => self.spawn_daemon(n, &self.bin, None, env),
        }
    }

    /// [`DevCluster::start_daemon_with_env`] from `package` (installed, as `dev up --package`
    /// does, into the cluster's `packages` folder): the version node `n` runs, e.g. the newer
    /// one once an upgrade moved it there.
    pub fn start_daemon_from_package(&self, n: u8, package: &Path, env: &[(&str, &str)]) -> Child {
        let package_dir = self.install_package(package);
        let binary = package_dir.join(flotilla_package::BINARY_PATH);
        self.spawn_daemon(n, &binary, Some(&package_dir), env)
    }

    /// Installs `package` into the cluster's `packages` folder (as `dev up --package` does) once
    /// per cluster; its installed folder. Installing copies and checks the whole package (over
    /// 100 MB): a test calls this before it crashes daemons, so that a restart does not wait
    /// for it (a primary node away that long lets the masters' leases lapse).
    pub fn install_package(&self, package: &Path) -> PathBuf {
        let mut installed = self.installed.lock().expect("installed packages");
        if let Some((_, dir)) = installed.iter().find(|(source, _)| source == package) {
            return dir.clone();
        }
        let done = flotilla_package::install(package, &self.dir.path().join("packages"))
            .unwrap_or_else(|e| panic!("installing {}: {e}", package.display()));
        let dir = std::fs::canonicalize(done.dir()).expect("the installed package");
        installed.push((package.to_path_buf(), dir.clone()));
        dir
    }

    /// Spawns `binary` as node `n`'s daemon (running from `package_dir`, if any).
    fn spawn_daemon(
        &self,
        n: u8,
        binary: &Path,
        package_dir: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Child {
        if let Some(pid) = self.daemon_pid(n) {
            assert!(!process_alive(pid), "node {n}'s daemon {pid} still runs");
        }
        let data_dir = self.data_dir(n);
        let log = std::fs::File::options()
            .append(true)
            .open(data_dir.join("flotilla.log"))
            .expect("the node's log");
        let mut command = Command::new(binary);
        command
            .args(["node", "start", "--addr", &self.addr(n).to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied());
        if let Some(package_dir) = package_dir {
            command.arg("--package-dir").arg(package_dir);
        }
        if self.plain_http {
            command.args(["--rest-port", &PLAIN_HTTP_PORT.to_string()]);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the node's log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting the node's daemon")
    }

    /// Restarts node `n`'s daemon (after a kill -9) from `package` with `dev up`, asked of
    /// another node that answers: the nodes still running are left alone.
    pub fn restart_from(&self, n: u8, package: &Path) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let (nodes, base) = (self.nodes.to_string(), self.base.to_string());
        let package = package.to_string_lossy().into_owned();
        let others = || self.node_numbers().filter(move |m| *m != n);
        let survivor = others()
            .find(|m| self.flotilla_at(*m, &["status", "--json"]).status.success())
            .or_else(|| others().next())
            .expect("another node");
        let args = [
            "dev",
            "up",
            "--nodes",
            &nodes,
            "--dir",
            &dir,
            "--base-addr",
            &base,
            "--package",
            &package,
        ];
        let output = self.flotilla_at(survivor, &args);
        assert_success(&output, &format!("dev up restarting node {n}"));
    }

    /// Runs `flotilla dev add-node` (from the cluster's package, if it has one): one more node
    /// joins; returns its number (its address is [`DevCluster::addr`] of it).
    pub fn add_node(&mut self) -> u8 {
        let package = self.package();
        self.add_node_from(package.as_deref())
    }

    /// [`DevCluster::add_node`] from `package` (a newer version: a rolling upgrade's new node).
    pub fn add_node_from(&mut self, package: Option<&Path>) -> u8 {
        self.add_node_with(package, &[])
    }

    /// [`DevCluster::add_node_from`] with more `dev add-node` arguments (`--os-release F`).
    pub fn add_node_with(&mut self, package: Option<&Path>, extra: &[&str]) -> u8 {
        self.add_node_with_env(package, extra, &[])
    }

    /// [`DevCluster::add_node_with`] whose daemon also gets `env` (e.g. failpoints only this
    /// node has), on top of the cluster's environment, for this start.
    pub fn add_node_with_env(
        &mut self,
        package: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> u8 {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let base = self.base.to_string();
        let package = package.map(|p| p.to_string_lossy().into_owned());
        let mut args = vec!["dev", "add-node", "--dir", &dir, "--base-addr", &base];
        if let Some(package) = &package {
            args.extend(["--package", package.as_str()]);
        }
        args.extend_from_slice(extra);
        let output = self.flotilla_with_env(self.answering_node(), &args, env);
        assert_success(&output, "flotilla dev add-node");
        self.nodes += 1;
        self.nodes
    }

    /// Runs `flotilla dev reinstall-node UID --package P`: removed node `uid`'s machine gets a
    /// fresh data dir and `package`, and joins back under its uid.
    pub fn reinstall_node(&self, uid: u64, package: &Path) {
        self.reinstall_node_with(uid, package, &[])
    }

    /// [`DevCluster::reinstall_node`] with more arguments (`--os-release F`: the reinstalled
    /// machine's OS).
    pub fn reinstall_node_with(&self, uid: u64, package: &Path, extra: &[&str]) {
        self.reinstall_node_with_env(uid, package, extra, &[])
    }

    /// [`DevCluster::reinstall_node_with`] whose daemon also gets `env` (e.g. failpoints only
    /// this node has), on top of the cluster's environment, for this start.
    pub fn reinstall_node_with_env(
        &self,
        uid: u64,
        package: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let base = self.base.to_string();
        let (uid, package) = (uid.to_string(), package.to_string_lossy().into_owned());
        let mut args = vec![
            "dev",
            "reinstall-node",
            &uid,
            "--dir",
            &dir,
            "--base-addr",
            &base,
            "--package",
            &package,
        ];
        args.extend_from_slice(extra);
        let output = self.flotilla_with_env(self.answering_node(), &args, env);
        assert_success(&output, "flotilla dev reinstall-node");
    }

    /// Counts the nodes a command other than [`DevCluster::add_node`] added (`upgrade cluster
    /// --dev-dir` runs `dev add-node` itself): every `node-N` dir in the cluster's folder.
    pub fn count_node_dirs(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let highest = dirs
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("node-")?.parse::<u8>().ok()
            })
            .max();
        self.nodes = highest.unwrap_or(self.nodes);
    }

    /// The first node whose REST API answers (node 1 may have left the cluster).
    pub fn answering_node(&self) -> u8 {
        self.node_numbers()
            .find(|n| self.flotilla_at(*n, &["status", "--json"]).status.success())
            .unwrap_or(1)
    }

    /// The package the cluster's nodes run from (`dev up --package`), if any.
    fn package(&self) -> Option<PathBuf> {
        self.env
            .iter()
            .find(|(k, _)| k == DEV_PACKAGE_ENV)
            .map(|(_, p)| PathBuf::from(p))
    }

    /// Runs `flotilla dev down` (daemons stopped by pid; data kept).
    pub fn dev_down(&self) -> Output {
        let output = self.flotilla(&["dev", "down", "--dir", &self.dir.path().to_string_lossy()]);
        assert_success(&output, "flotilla dev down");
        output
    }

    /// Runs the flotilla CLI with this cluster's credentials and node 1's URL.
    pub fn flotilla(&self, args: &[&str]) -> Output {
        self.flotilla_at(1, args)
    }

    /// Runs the flotilla CLI against node `n`'s REST API.
    pub fn flotilla_at(&self, n: u8, args: &[&str]) -> Output {
        self.flotilla_with_env(n, args, &[])
    }

    /// [`DevCluster::flotilla_at`] with `env` on top of the cluster's environment (a `dev`
    /// command passes it to the daemons it starts).
    pub fn flotilla_with_env(&self, n: u8, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command_at(n, args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("running the flotilla binary")
    }

    /// The flotilla CLI with `args` against node `n`'s REST API and this cluster's
    /// credentials, not started yet: for a command a test runs in the background (and kills, or
    /// waits for, itself). Output is discarded unless the caller sets it.
    pub fn command_at(&self, n: u8, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("FLOTILLA_URL", self.url(n))
            .env("FLOTILLA_USER", USER)
            .env("FLOTILLA_PASSWORD", PASSWORD)
            .env_remove("FLOTILLA_CACERT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Written by the first `dev up` once the cluster has its CA.
        if !self.plain_http && self.cacert().exists() {
            command.env("FLOTILLA_CACERT", self.cacert());
        }
        command
    }

    /// `flotilla status --json` as asked of node `n`.
    pub fn status_json(&self, n: u8) -> serde_json::Value {
        let output = self.flotilla_at(n, &["status", "--json"]);
        assert_success(&output, "flotilla status --json");
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// Node `n`'s address.
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        let [a, b, c, d] = self.base.octets();
        Ipv4Addr::new(a, b, c, d + n - 1)
    }

    /// Node `n`'s REST URL: plain HTTP on 8080, or HTTPS on 9443 for an HTTPS-only cluster.
    pub fn url(&self, n: u8) -> String {
        match self.plain_http {
            true => format!("http://{}:{PLAIN_HTTP_PORT}", self.addr(n)),
            false => format!("https://{}:{HTTPS_PORT}", self.addr(n)),
        }
    }

    /// A REST client for node `n` with the cluster's credentials.
    pub fn client(&self, n: u8) -> Client {
        match self.plain_http {
            true => Client::new(&self.url(n), Some(USER.into()), Some(PASSWORD.into())),
            false => self.https_client(n),
        }
    }

    /// The cluster CA's certificate `dev up` wrote next to the nodes (clusters with a CA).
    pub fn cacert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A REST client for node `n` over HTTPS (port 9443), trusting the cluster CA.
    pub fn https_client(&self, n: u8) -> Client {
        let ca = std::fs::read_to_string(self.cacert()).expect("dev up wrote the cluster CA");
        Client::new(
            &format!("https://{}:{HTTPS_PORT}", self.addr(n)),
            Some(USER.into()),
            Some(PASSWORD.into()),
        )
        .trusting(&ca)
        .expect("the cluster CA is a certificate")
    }

    /// Node `n`'s data dir.
    pub fn data_dir(&self, n: u8) -> PathBuf {
        self.dir.path().join(format!("node-{n}"))
    }

    /// The pid of node `n`'s daemon, from its pidfile.
    pub fn daemon_pid(&self, n: u8) -> Option<u32> {
        std::fs::read_to_string(self.data_dir(n).join("flotilla.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of shard `shard_uid`'s engine on node `n` (from its pidfile).
    pub fn engine_pid(&self, n: u8, shard_uid: u64) -> u32 {
        let path = self
            .data_dir(n)
            .join("shards")
            .join(shard_uid.to_string())
            .join("engine.pid");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// kill -9 of node `n`'s daemon; waits (bounded) until the process is gone.
    pub fn kill9(&self, n: u8) {
        let pid = self.daemon_pid(n).expect("the daemon has a pidfile");
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 of our own daemon");
        let gone = poll_until(Duration::from_secs(10), || !process_alive(pid));
        assert!(gone, "daemon {pid} still alive 10 s after kill -9");
    }

    /// Node `n`'s machine is gone: kill -9 of its daemon and of its engines, and its data dir
    /// deleted (what a replacement machine starts without).
    pub fn lose_machine(&self, n: u8) {
        self.kill9(n);
        for pid in flotilla_engine::engines_under(&self.data_dir(n)) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::fs::remove_dir_all(self.data_dir(n)).expect("deleting the node's data dir");
    }

    /// Runs the CLI against node `n`, asserts success and parses its JSON output.
    pub fn json(&self, n: u8, args: &[&str]) -> serde_json::Value {
        let output = self.flotilla_at(n, args);
        assert_success(&output, &args.join(" "));
        serde_json::from_slice(&output.stdout).expect("the command prints JSON")
    }

    /// `flotilla db create --json ARGS`, then waits (bounded) until every shard runs in its
    /// role; returns the database as the API shows it.
    pub fn create_db(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["db", "create", "--json"];
        full.extend_from_slice(args);
        let bdb = self.json(1, &full);
        let uid = bdb["uid"].as_u64().expect("the database has a uid");
        let active = poll_until(Duration::from_secs(60), || self.db_status(uid) == "active");
        assert!(
            active,
            "database {uid} did not become active: {}",
            self.db_status(uid)
        );
        bdb
    }

    /// [`DevCluster::create_db`] of the database most tests use: `name` on `port`, 2 shards,
    /// replicated, 100 MB, on `engine` (e.g. `valkey-8.1`).
    pub fn create_replicated_db(&self, name: &str, port: u16, engine: &str) -> serde_json::Value {
        self.create_replicated_db_of(name, port, engine, 2)
    }

    /// [`DevCluster::create_replicated_db`] with `shards` primary shards.
    pub fn create_replicated_db_of(
        &self,
        name: &str,
        port: u16,
        engine: &str,
        shards: u16,
    ) -> serde_json::Value {
        let (port, shards) = (port.to_string(), shards.to_string());
        self.create_db(&[
            "--name",
            name,
            "--port",
            &port,
            "--memory",
            "100mb",
            "--shards",
            &shards,
            "--replication",
            "--redis-version",
            engine,
        ])
    }

    /// A database's `status` as node 1 answers it (`?` when it cannot tell).
    pub fn db_status(&self, uid: u64) -> String {
        let output = self.flotilla(&["db", "show", &uid.to_string(), "--json"]);
        let bdb: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        bdb["status"].as_str().unwrap_or("?").to_string()
    }

    /// `GET /v1/shards` as node `n` answers it.
    pub fn shards_at(&self, n: u8) -> Vec<serde_json::Value> {
        let shards = runtime()
            .block_on(self.client(n).shards())
            .expect("GET /v1/shards");
        shards
            .into_iter()
            .map(|s| serde_json::to_value(s).expect("shard as JSON"))
            .collect()
    }

    /// The shards of database `bdb` as node `n` answers `GET /v1/shards`; none while it cannot
    /// answer (during an election), so a poll can keep asking.
    pub fn db_shards_at(&self, n: u8, bdb: u64) -> Vec<serde_json::Value> {
        runtime()
            .block_on(self.client(n).shards())
            .unwrap_or_default()
            .into_iter()
            .map(|s| serde_json::to_value(s).expect("shard as JSON"))
            .filter(|s| s["bdb_uid"] == bdb)
            .collect()
    }

    /// A connection to the engine on node `n` at `port` as the engines' admin user (what the
    /// agent logs in as), for reading an engine's own state in a test.
    pub fn engine_admin_connection(&self, n: u8, port: u16) -> redis::Connection {
        let url = format!("redis://{}@{}:{port}/", self.engine_admin(), self.addr(n));
        redis::Client::open(url)
            .expect("engine URL")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connecting to the engine as its admin")
    }

    /// Every shard as node `n` answers `GET /v1/shards`, with the `ip:port` its engine listens
    /// on.
    pub fn shard_addrs_at(&self, n: u8) -> Vec<(serde_json::Value, String)> {
        let state = self.status_json(n);
        let nodes = state["nodes"].as_array().expect("status lists nodes");
        self.shards_at(n)
            .into_iter()
            .map(|shard| {
                let node = nodes
                    .iter()
                    .find(|node| node["uid"] == shard["node_uid"])
                    .expect("a shard's node is in the status");
                let addr = format!("{}:{}", node["addr"].as_str().unwrap(), shard["port"]);
                (shard, addr)
            })
            .collect()
    }

    /// `user:password` of the engines' admin user (derived from the cluster secret in node
    /// 1's identity), for a redis URL to an engine.
    pub fn engine_admin(&self) -> String {
        let identity: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.data_dir(1).join("identity.json")).expect("node 1's identity"),
        )
        .expect("identity is JSON");
        let secret = identity["secret"]
            .as_str()
            .expect("identity has the secret");
        let users = flotilla_model::EngineUsers::derive(secret);
        format!("{}:{}", flotilla_model::ADMIN_USER, users.admin)
    }

    /// The node numbers `1..=nodes`.
    pub fn node_numbers(&self) -> std::ops::RangeInclusive<u8> {
        1..=self.nodes
    }

    fn print_logs(&self) {
        for n in self.node_numbers() {
            let log =
                std::fs::read_to_string(self.data_dir(n).join("flotilla.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- node {n} log (last 40 lines) ----");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        // Every node dir, also one a command other than `add_node` made (a node that failed
        // to join still runs its daemon).
        self.count_node_dirs();
        for n in self.node_numbers() {
            if let Some(pid) = self.daemon_pid(n) {
                if process_alive(pid) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
        // Engines outlive their daemon by design; the test's engines end with the test, also
        // one a daemon started just before it was killed (no pidfile yet).
        for pid in flotilla_engine::engines_under(self.dir.path()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            self.print_logs();
            let kept = self.dir.path().to_path_buf();
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temp dir"),
            ));
            eprintln!("test failed: cluster data kept in {}", kept.display());
        }
    }
}

/// A single daemon started with `flotilla node start`, not part of any cluster yet.
pub struct BareNode {
    child: Child,
    /// Its address.
    pub addr: Ipv4Addr,
    _dir: tempfile::TempDir,
}

impl BareNode {
    /// Starts a daemon on `addr` and waits until its health endpoint answers.
    pub fn start(bin: &Path, addr: Ipv4Addr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("flotilla.log")).expect("log file");
        let child = Command::new(bin)
            .args(["node", "start", "--addr", &addr.to_string(), "--data-dir"])
            .arg(dir.path())
            .args(["--http-port", &PLAIN_HTTP_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting flotilla node start");
        let node = Self {
            child,
            addr,
            _dir: dir,
        };
        let client = node.client(None, None);
        let runtime = runtime();
        let ready = poll_until(Duration::from_secs(20), || {
            runtime.block_on(client.health()).is_ok()
        });
        assert!(
            ready,
            "daemon on {addr} did not answer /v1/health within 20 s"
        );
        node
    }

    /// A REST client for this node, sending the node's bootstrap token (read from its data
    /// dir) with create and join.
    pub fn client(&self, user: Option<&str>, password: Option<&str>) -> Client {
        self.client_without_token(user, password)
            .with_bootstrap_token(flotilla_client::read_bootstrap_token(self.data_dir()))
    }

    /// A REST client for this node that does not know its bootstrap token.
    pub fn client_without_token(&self, user: Option<&str>, password: Option<&str>) -> Client {
        Client::new(
            &format!("http://{}:{PLAIN_HTTP_PORT}", self.addr),
            user.map(String::from),
            password.map(String::from),
        )
    }
}

impl BareNode {
    /// Its data dir.
    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for BareNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The engines it started (once it joined a cluster) end with it.
        for pid in flotilla_engine::engines_under(self._dir.path()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// A two-worker runtime for tests that run the load checker while they act on the cluster.
pub fn load_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts the load checker through `endpoint` and waits (bounded) until it runs.
pub fn start_load(
    rt: &tokio::runtime::Runtime,
    endpoint: String,
) -> flotilla_loadcheck::LoadHandle {
    let timeout = flotilla_loadcheck::Config::for_endpoint(&endpoint).op_timeout();
    start_load_within(rt, endpoint, timeout)
}

/// [`start_load`] whose clients give each command `op_timeout`: tests of flows that may stall
/// clients up to the endpoint's hold bound (a failover, a primary node's crash while masters'
/// leases lapse) give them the bound plus a margin, as a client should.
pub fn start_load_within(
    rt: &tokio::runtime::Runtime,
    endpoint: String,
    op_timeout: Duration,
) -> flotilla_loadcheck::LoadHandle {
    rt.block_on(async {
        let mut config = flotilla_loadcheck::Config::for_endpoint(&endpoint);
        config.op_timeout_ms = op_timeout.as_millis() as u64;
        let load = flotilla_loadcheck::start(config).expect("load checker starts");
        assert!(
            load.wait_for_ops(300, Duration::from_secs(10)).await,
            "load runs through {endpoint}"
        );
        load
    })
}

/// [`start_load_within`] for a test whose primary node crashes (after every step of an action,
/// say): each command may take the hold bound and a second. When the primary node's restart and
/// the election take longer than the master lease (`MASTER_LEASE`, 3.5 s; slower on a loaded
/// machine), the masters' agents fence writes until a primary node acknowledges them again, so
/// a client stalls for that long (as in `failover.rs`'s kill of the primary node) but sees no
/// error.
pub fn start_load_across_primary_crashes(
    rt: &tokio::runtime::Runtime,
    endpoint: String,
) -> flotilla_loadcheck::LoadHandle {
    let bound = flotilla_model::timing::HOLD_TIMEOUT + Duration::from_secs(1);
    start_load_within(rt, endpoint, bound)
}

/// Waits until the load made progress again, stops it and verifies every acknowledged write.
pub fn stop_load(
    rt: &tokio::runtime::Runtime,
    load: flotilla_loadcheck::LoadHandle,
) -> flotilla_loadcheck::Report {
    let report = rt.block_on(async {
        let before = load.progress().ops;
        assert!(
            load.wait_for_ops(before + 300, Duration::from_secs(20))
                .await,
            "load continues"
        );
        load.stop().await.expect("load checker verifies")
    });
    eprintln!("{report}");
    report
}

/// [`stop_load`], asserting zero client errors and zero lost acknowledged writes.
pub fn stop_load_clean(
    rt: &tokio::runtime::Runtime,
    load: flotilla_loadcheck::LoadHandle,
) -> flotilla_loadcheck::Report {
    let report = stop_load(rt, load);
    assert_eq!(
        report.client_errors_total, 0,
        "no client error: {:?}",
        report.error_examples
    );
    assert_eq!(
        report.lost_writes, 0,
        "no lost write: {:?}",
        report.lost_write_examples
    );
    report
}

/// A current-thread tokio runtime for tests that call the async client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A plain (unretried) redis-py-like connection to a database endpoint at `addr:port`, as a
/// client without a password makes it; panics naming the endpoint when it cannot connect.
pub fn endpoint_connection(addr: Ipv4Addr, port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}:{port}/")).unwrap();
    client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connecting to the database endpoint {addr}:{port}: {e}"))
}

/// Polls `check` every 50 ms until it is true or `timeout` passes; returns the last answer.
pub fn poll_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kill -9 of process `pid` (an engine or daemon a test started); an already gone process is
/// no error.
pub fn kill9_pid(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The uid of a shard in a `GET /v1/shards` entry.
pub fn shard_uid(shard: &serde_json::Value) -> u64 {
    shard["uid"].as_u64().expect("a shard has a uid")
}

/// The node number of a shard in a `GET /v1/shards` entry (node uids are node numbers in a
/// `DevCluster`).
pub fn shard_node(shard: &serde_json::Value) -> u8 {
    shard["node_uid"].as_u64().expect("a shard has a node") as u8
}

/// True when a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    flotilla_engine::pid_running(pid)
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
