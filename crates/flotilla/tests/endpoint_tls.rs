//! TLS on database endpoints (issue 13): a database created with `--tls` serves TLS only,
//! with the node's certificate from the cluster CA, to redis-cli (`--tls --cacert`), redis-py
//! (`ssl=True`) directly and through Sentinel discovery; a plaintext client and a client
//! trusting another CA are refused; `db set --tls off` brings plaintext back. An in-place
//! upgrade closes a TLS session at a command boundary (it cannot move) and counts it.
//!
//! Subnets 127.0.200.x and 127.0.201.x.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_testkit::{assert_success, flotilla_bin, DevCluster};

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `redis-cli` against `addr:port` with `args` (the connection options first).
fn redis_cli(addr: Ipv4Addr, port: u16, tls_ca: Option<&Path>, command: &[&str]) -> Output {
    let mut cli = Command::new("redis-cli");
    cli.args(["-h", &addr.to_string(), "-p", &port.to_string()]);
    if let Some(ca) = tls_ca {
        cli.args(["--tls", "--cacert", &ca.to_string_lossy()]);
    }
    cli.args(command).output().expect("redis-cli (redis-tools)")
}

/// What a plaintext client gets for `PING` on `addr:port`: the bytes read before the
/// connection closed (or the read timed out).
fn plaintext_ping(addr: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut stream = TcpStream::connect((addr, port)).expect("the endpoint accepts TCP");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(b"*1\r\n$4\r\nPING\r\n");
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

/// A CA certificate that is not the cluster's (made with openssl).
fn stranger_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("stranger.key"), dir.join("stranger.crt"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stranger-ca",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert_success(&made, "openssl req -x509");
    cert
}

/// The python of the project's environment with redis-py (`scripts/python-env`).
fn python() -> String {
    let env = Command::new("scripts/python-env")
        .current_dir(repo_root())
        .output()
        .expect("scripts/python-env");
    assert_success(
        &env,
        "scripts/python-env (creates .cache/python with redis-py)",
    );
    String::from_utf8_lossy(&env.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

#[test]
fn a_tls_database_serves_tls_clients_with_the_cluster_ca_and_refuses_others() {
    let cluster = DevCluster::up(&bin(), 200, 2);
    cluster.create_db(&[
        "--name", "secure", "--port", "12100", "--memory", "100mb", "--shards", "2", "--tls",
    ]);
    let ca = cluster.cacert();
    let shown = cluster.flotilla(&["db", "show", "secure", "--json"]);
    assert_success(&shown, "db show");
    assert!(String::from_utf8_lossy(&shown.stdout).contains(r#""tls_mode": "enabled""#));

    // redis-cli over TLS, on either node.
    let set = redis_cli(cluster.addr(2), 12100, Some(&ca), &["SET", "k", "over-tls"]);
    assert_success(&set, "redis-cli --tls SET");
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let get = redis_cli(cluster.addr(1), 12100, Some(&ca), &["GET", "k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "over-tls");

    // A plaintext client is closed without an answer; so is one trusting another CA.
    let plain = plaintext_ping(cluster.addr(1), 12100);
    assert!(
        !String::from_utf8_lossy(&plain).contains("PONG"),
        "a plaintext client of a TLS database got {:?}",
        String::from_utf8_lossy(&plain)
    );
    let plain_cli = redis_cli(cluster.addr(1), 12100, None, &["GET", "k"]);
    assert!(!String::from_utf8_lossy(&plain_cli.stdout).contains("over-tls"));
    let dir = tempfile::tempdir().unwrap();
    let stranger = stranger_ca(dir.path());
    let wrong_ca = redis_cli(cluster.addr(1), 12100, Some(&stranger), &["GET", "k"]);
    assert!(
        !String::from_utf8_lossy(&wrong_ca.stdout).contains("over-tls"),
        "a client trusting another CA must not get through: {wrong_ca:?}"
    );

    // redis-py with ssl=True, directly.
    let script = "import sys, redis\n\
        r = redis.Redis(host=sys.argv[1], port=12100, ssl=True, ssl_ca_certs=sys.argv[2], socket_timeout=5)\n\
        r.set('py', 'direct')\n\
        print(r.get('py').decode())\n";
    let python = python();
    let direct = Command::new(&python)
        .args([
            "-c",
            script,
            &cluster.addr(2).to_string(),
            &ca.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert_success(&direct, "redis-py ssl=True");
    assert_eq!(String::from_utf8_lossy(&direct.stdout).trim(), "direct");

    // redis-py through Sentinel discovery (plaintext) and a TLS master connection.
    let sentinel = Command::new(&python)
        .current_dir(repo_root())
        .args(["scripts/sentinel_check.py", "--sentinel"])
        .arg(format!("{}:8001", cluster.addr(1)))
        .args(["--name", "secure", "--write", "--tls-ca"])
        .arg(&ca)
        .output()
        .unwrap();
    assert_success(&sentinel, "sentinel_check.py --write --tls-ca");
    let printed = String::from_utf8_lossy(&sentinel.stdout);
    let answer: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(answer["port"], 12100, "{printed}");
    assert_eq!(answer["value"], answer["read_back"], "{printed}");

    // TLS off: plaintext again, TLS clients refused.
    let off = cluster.flotilla(&["db", "set", "secure", "--tls", "off"]);
    assert_success(&off, "db set --tls off");
    let served_plain = flotilla_testkit::poll_until(Duration::from_secs(10), || {
        redis_cli(cluster.addr(1), 12100, None, &["GET", "k"]).stdout == b"over-tls\n"
    });
    assert!(served_plain, "db set --tls off serves plaintext clients");
    let tls_after = redis_cli(cluster.addr(1), 12100, Some(&ca), &["GET", "k"]);
    assert!(!String::from_utf8_lossy(&tls_after.stdout).contains("over-tls"));
}

/// A blocking TLS client of a database endpoint, trusting the cluster CA at `ca`.
struct TlsClient(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl TlsClient {
    fn connect(addr: Ipv4Addr, port: u16, ca: &Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        flotilla_testkit::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(addr).into());
        let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect((addr, port)).expect("the endpoint accepts TCP");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        TlsClient(rustls::StreamOwned::new(connection, tcp))
    }

    /// Sends `PING` and returns what came back before `\r\n` (an error or EOF as `Err`).
    fn ping(&mut self) -> std::io::Result<String> {
        self.0.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        self.0.flush()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if self.0.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

/// What the README promises for TLS sessions in an in-place upgrade: they cannot move to the new
/// daemon (their keys live in the old process), so the old daemon closes each at a command
/// boundary, counts it, and the client's next connection is served by the new daemon.
#[test]
fn an_in_place_upgrade_closes_a_tls_session_at_a_boundary_and_the_new_daemon_serves_tls() {
    let (v020, v021) = flotilla_testkit::Packages::shared(&bin()).current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 201, 3, &v020);
    cluster.create_db(&[
        "--name", "secure", "--port", "12101", "--memory", "100mb", "--shards", "1", "--tls",
    ]);
    let ca = cluster.cacert();
    let mut session = TlsClient::connect(cluster.addr(2), 12101, &ca);
    assert_eq!(session.ping().unwrap(), "+PONG");

    let tarball = format!("{}.tar.gz", v021.display());
    let upgraded = cluster.flotilla(&["upgrade", "node", "2", "--package", &tarball, "--yes"]);
    assert_success(&upgraded, "upgrade node 2");
    let report = String::from_utf8_lossy(&upgraded.stdout).into_owned();
    assert!(report.contains("by handover"), "{report}");
    assert!(
        report.contains("1 closed at a command boundary"),
        "the TLS session is closed and counted: {report}"
    );
    assert!(
        session.ping().is_err(),
        "the old daemon closed the TLS session"
    );
    let mut again = TlsClient::connect(cluster.addr(2), 12101, &ca);
    assert_eq!(again.ping().unwrap(), "+PONG", "the new daemon serves TLS");
}
