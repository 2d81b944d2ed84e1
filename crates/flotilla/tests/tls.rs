//! Node-to-node TLS (issue 13): what travels between nodes is TLS with no secret in the clear,
//! internal routes need a client certificate from the cluster CA, a join checks the cluster's
//! CA, and node certificates are replaced without a restart.
//!
//! Subnets 127.0.190.x, 127.0.191.x, 127.0.193.x, 127.0.194.x, 127.0.195.x, 127.0.196.x.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flotilla_model::rest::ClusterUpdate;
use flotilla_testkit::{flotilla_bin, poll_until, runtime, BareNode, DevCluster, PASSWORD, USER};
use nix::libc;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

const RPC_PORT: u16 = 3333;

/// One TCP segment's payload seen on `lo`.
struct Segment {
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: Vec<u8>,
}

/// Reads every frame on `lo` (a raw AF_PACKET socket: the test runs as root) and keeps the
/// TCP payloads to or from the RPC port of subnet 127.0.S.x.
struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Segment>>,
}

impl Sniffer {
    fn start(subnet: u8) -> Self {
        let fd = raw_socket_on_lo();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut segments = Vec::new();
            let mut frame = vec![0u8; 70_000];
            while !stopped.load(Ordering::Relaxed) {
                // SAFETY: `frame` is a valid buffer of its length for the socket to fill.
                let n = unsafe { libc::recv(fd, frame.as_mut_ptr().cast(), frame.len(), 0) };
                if n <= 0 {
                    continue;
                }
                if let Some(segment) = tcp_segment(&frame[..n as usize], subnet) {
                    segments.push(segment);
                }
            }
            // SAFETY: the socket is this thread's and closed once.
            unsafe { libc::close(fd) };
            segments
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<Segment> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sniffer thread")
    }
}

fn raw_socket_on_lo() -> i32 {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on values built here; every result is checked.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, all as i32);
        assert!(
            fd >= 0,
            "raw socket (this test runs as root): {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = libc::if_nametoindex(c"lo".as_ptr()) as i32;
        let bound = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(
            bound,
            0,
            "binding to lo: {}",
            std::io::Error::last_os_error()
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let size: libc::c_int = 16 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        fd
    }
}

/// The TCP payload of an Ethernet frame carrying IPv4 to or from port 3333 in 127.0.S.x.
fn tcp_segment(frame: &[u8], subnet: u8) -> Option<Segment> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.len() < 20 || ip[9] != 6 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let ours = |a: Ipv4Addr| a.octets()[..3] == [127, 0, subnet];
    if !ours(src) || !ours(dst) {
        return None;
    }
    let tcp = ip.get(header..total.min(ip.len()))?;
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    if sport != RPC_PORT && dport != RPC_PORT {
        return None;
    }
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = tcp.get(offset..)?.to_vec();
    (!payload.is_empty()).then(|| Segment {
        from: SocketAddrV4::new(src, sport),
        to: SocketAddrV4::new(dst, dport),
        payload,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn secret_of(cluster: &DevCluster, n: u8) -> String {
    let identity = std::fs::read(cluster.data_dir(n).join("identity.json")).unwrap();
    let identity: serde_json::Value = serde_json::from_slice(&identity).unwrap();
    identity["secret"].as_str().unwrap().to_string()
}

fn rename(cluster: &DevCluster, via: u8, name: &str) {
    let update = ClusterUpdate {
        name: Some(name.into()),
    };
    runtime()
        .block_on(cluster.client(via).update_cluster(&update))
        .expect("cluster renamed");
}

#[test]
fn a_sniffed_node_to_node_connection_is_tls_and_shows_no_secret() {
    let sniffer = Sniffer::start(190);
    let cluster = DevCluster::up(&bin(), 190, 3);
    // Proposals forwarded from secondary nodes (`/internal/propose`) and Raft replication.
    for i in 0..5 {
        rename(&cluster, 2 + i % 2, &format!("sniffed-{i}"));
    }
    let secret = secret_of(&cluster, 1);
    let segments = sniffer.finish();

    let bytes: usize = segments.iter().map(|s| s.payload.len()).sum();
    assert!(
        segments.len() > 50 && bytes > 10_000,
        "the capture saw node-to-node traffic ({} segments, {bytes} bytes)",
        segments.len()
    );
    for segment in &segments {
        for (what, needle) in [
            ("the cluster secret", secret.as_bytes()),
            ("the operator password", PASSWORD.as_bytes()),
            ("the secret header", b"x-flotilla-secret".as_slice()),
            ("an HTTP request or answer", b"HTTP/1.1".as_slice()),
            ("a Raft route", b"/raft/".as_slice()),
        ] {
            assert!(
                !contains(&segment.payload, needle),
                "{what} travelled in the clear from {} to {}",
                segment.from,
                segment.to
            );
        }
    }
    // Every connection to an RPC port opened with a TLS handshake record.
    let mut first_of_flow = std::collections::BTreeMap::new();
    for segment in segments.iter().filter(|s| s.to.port() == RPC_PORT) {
        first_of_flow
            .entry((segment.from, segment.to))
            .or_insert(&segment.payload);
    }
    assert!(first_of_flow.len() >= 3, "connections between the nodes");
    for ((from, to), first) in &first_of_flow {
        assert_eq!(
            first[..2],
            [0x16, 0x03],
            "the connection {from} -> {to} opened with a TLS handshake"
        );
    }
}

/// A client trusting the cluster CA, presenting `identity` (certificate, key PEM) if given.
fn tls_client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    flotilla_testkit::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A certificate for `addr` from a CA that is not the cluster's, and its key.
fn stranger_identity(addr: Ipv4Addr) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::IpAddress(addr.into())];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    (leaf.pem(), key.serialize_pem())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cluster_name(cluster: &DevCluster) -> String {
    runtime()
        .block_on(cluster.client(1).cluster())
        .expect("cluster")
        .name
}

#[test]
fn internal_propose_needs_a_client_certificate_from_the_cluster_ca() {
    let cluster = DevCluster::up(&bin(), 191, 2);
    let tls = cluster.data_dir(2).join("tls");
    let ca = read(&tls.join("ca.crt"));
    let (certificate, key) = (read(&tls.join("node.crt")), read(&tls.join("node.key")));
    let url = format!("https://{}:{RPC_PORT}/internal/propose", cluster.addr(1));
    let propose = |client: &reqwest::Client, name: &str| {
        let command = serde_json::json!({"kind": "update_cluster", "name": name});
        runtime().block_on(async { client.post(&url).json(&command).send().await })
    };

    // A node's own certificate: the route works.
    let node = tls_client(&ca, Some((&certificate, &key)));
    let answer = propose(&node, "renamed-by-node-2").expect("answered");
    assert!(answer.status().is_success(), "{answer:?}");
    assert!(poll_until(Duration::from_secs(10), || cluster_name(
        &cluster
    )
        == "renamed-by-node-2"));

    // No client certificate: refused.
    let anonymous = tls_client(&ca, None);
    let answer = propose(&anonymous, "taken-over").expect("answered");
    assert_eq!(answer.status(), 401);

    // A certificate from another CA: the handshake fails.
    let (certificate, key) = stranger_identity(cluster.addr(2));
    let stranger = tls_client(&ca, Some((&certificate, &key)));
    let refused = propose(&stranger, "taken-over");
    assert!(
        refused.as_ref().map_or(true, |a| !a.status().is_success()),
        "{refused:?}"
    );

    // Plaintext with the cluster secret: every node has a certificate, so it is refused.
    flotilla_testkit::install_crypto_provider();
    let plain = reqwest::Client::new();
    let refused = runtime().block_on(async {
        plain
            .post(format!(
                "http://{}:{RPC_PORT}/internal/propose",
                cluster.addr(1)
            ))
            .header("x-flotilla-secret", secret_of(&cluster, 1))
            .json(&serde_json::json!({"kind": "update_cluster", "name": "taken-over"}))
            .send()
            .await
    });
    assert!(refused.is_err(), "plaintext RPC answered: {refused:?}");
    assert_eq!(cluster_name(&cluster), "renamed-by-node-2");
}

#[test]
fn a_join_checks_the_fingerprint_of_the_cluster_ca() {
    let cluster = DevCluster::up(&bin(), 193, 1);
    let status = cluster.status_json(1);
    let fingerprint = status["cluster"]["ca_fingerprint"]
        .as_str()
        .expect("status shows the CA's fingerprint")
        .to_string();
    let joiner = BareNode::start(&bin(), cluster.addr(2));
    let client = joiner.client(None, None);
    let seeds = vec![cluster.addr(1).to_string()];
    let flipped = if fingerprint.starts_with('0') {
        '1'
    } else {
        '0'
    };
    let wrong = format!("{flipped}{}", &fingerprint[1..]);
    let refused = runtime()
        .block_on(client.join_cluster_checked(&seeds, USER, PASSWORD, None, Some(wrong)))
        .expect_err("a join to a CA with another fingerprint is refused");
    assert!(refused.to_string().contains("fingerprint"), "{refused}");
    assert!(
        !joiner.data_dir().join("identity.json").exists(),
        "the refused join left no identity"
    );
    let joined = runtime()
        .block_on(client.join_cluster_checked(&seeds, USER, PASSWORD, None, Some(fingerprint)))
        .expect("a join with the CA's fingerprint");
    assert_eq!(joined.node_uid, 2);
    let ca = read(&joiner.data_dir().join("tls").join("ca.crt"));
    assert_eq!(ca, read(&cluster.data_dir(1).join("tls").join("ca.crt")));
}

/// `POST /internal/applied` on node `n` over plaintext with the cluster secret, as 0.1.0 calls.
fn plaintext_call(cluster: &DevCluster, n: u8) -> reqwest::Result<reqwest::Response> {
    flotilla_testkit::install_crypto_provider();
    let url = format!("http://{}:{RPC_PORT}/internal/applied", cluster.addr(n));
    let secret = secret_of(cluster, n);
    runtime().block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("x-flotilla-secret", secret)
            .json(&())
            .send()
            .await
    })
}

/// `POST /internal/applied` on node `to` over mutual TLS with node `from`'s certificate.
fn tls_call(cluster: &DevCluster, from: u8, to: u8) -> reqwest::Result<reqwest::Response> {
    let tls = cluster.data_dir(from).join("tls");
    let (ca, certificate, key) = (
        read(&tls.join("ca.crt")),
        read(&tls.join("node.crt")),
        read(&tls.join("node.key")),
    );
    let client = tls_client(&ca, Some((&certificate, &key)));
    let url = format!("https://{}:{RPC_PORT}/internal/applied", cluster.addr(to));
    runtime().block_on(async { client.post(url).json(&()).send().await })
}

#[test]
fn a_cluster_made_by_0_1_0_moves_to_mutual_tls_once_finalized() {
    let packages = flotilla_testkit::Packages::shared(&bin());
    let v010 = packages.release_0_1_0();
    let (_, v021) = packages.current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 194, 3, &v010);

    // Mixed: node 2 runs the new release beside two 0.1.0 nodes, all in plaintext.
    let upgrade = |n: u8| {
        let package = v021.to_string_lossy().into_owned();
        let node = n.to_string();
        let output = cluster.flotilla(&["upgrade", "node", &node, "--package", &package, "--yes"]);
        flotilla_testkit::assert_success(&output, &format!("upgrade node {n}"));
    };
    upgrade(2);
    rename(&cluster, 2, "mixed");
    assert!(poll_until(Duration::from_secs(10), || cluster_name(
        &cluster
    ) == "mixed"));
    let status = plaintext_call(&cluster, 2).expect("the new node takes plaintext RPC");
    assert!(status.status().is_success(), "{status:?}");
    assert!(
        !cluster.data_dir(2).join("tls").join("ca.crt").exists(),
        "no CA before finalize"
    );

    // Every node upgraded; the last upgrade finalizes the cluster version.
    upgrade(1);
    upgrade(3);
    let certified = poll_until(Duration::from_secs(30), || {
        cluster
            .node_numbers()
            .all(|n| cluster.data_dir(n).join("tls").join("node.crt").exists())
            && cluster
                .node_numbers()
                .all(|n| plaintext_call(&cluster, n).is_err())
    });
    assert!(
        certified,
        "every node got a certificate and then refused plaintext RPC"
    );
    let status = cluster.status_json(1);
    assert!(
        status["cluster"]["ca_fingerprint"].is_string(),
        "{status:#}"
    );
    for from in cluster.node_numbers() {
        for to in cluster.node_numbers() {
            let answer = tls_call(&cluster, from, to).expect("TLS RPC answers");
            assert!(answer.status().is_success(), "{from} -> {to}: {answer:?}");
        }
    }
    // Raft and forwarded proposals run over TLS only now.
    rename(&cluster, 3, "mutual-tls");
    assert!(poll_until(Duration::from_secs(10), || cluster
        .node_numbers()
        .all(
            |n| cluster.status_json(n)["cluster"]["name"] == "mutual-tls"
        )));
}

/// The serial of the certificate node `n` presents on `port` (RPC, or REST's HTTPS port), as
/// a client sees it.
fn served_serial(cluster: &DevCluster, n: u8, port: u16) -> String {
    let tls = cluster.data_dir(1).join("tls");
    let client = tls_client(&read(&tls.join("ca.crt")), None);
    let path = match port {
        RPC_PORT => "/internal/cluster-ca",
        _ => "/v1/health",
    };
    let url = format!("https://{}:{port}{path}", cluster.addr(n));
    let answer = runtime()
        .block_on(async { client.get(url).send().await })
        .expect("the RPC port answers over TLS");
    let info = answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let der = info.peer_certificate().expect("a server certificate");
    let (_, certificate) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    certificate.raw_serial_as_string()
}

#[test]
fn certificates_rotate_without_a_restart() {
    let cluster = DevCluster::up(&bin(), 195, 3);
    let pids: Vec<_> = cluster
        .node_numbers()
        .map(|n| cluster.daemon_pid(n))
        .collect();
    let serials = || -> Vec<_> {
        cluster
            .node_numbers()
            .flat_map(|n| {
                [
                    served_serial(&cluster, n, RPC_PORT),
                    served_serial(&cluster, n, 9443),
                ]
            })
            .collect()
    };
    let before = serials();
    assert_eq!(before[0], before[1], "REST presents the node's certificate");
    let output = cluster.flotilla(&["cluster", "certificates", "rotate"]);
    flotilla_testkit::assert_success(&output, "cluster certificates rotate");
    let after = serials();
    for (i, (before, after)) in before.iter().zip(&after).enumerate() {
        let (node, port) = (i / 2 + 1, if i % 2 == 0 { "RPC" } else { "REST" });
        assert_ne!(
            before, after,
            "node {node} serves a new certificate on {port}"
        );
    }
    let now: Vec<_> = cluster
        .node_numbers()
        .map(|n| cluster.daemon_pid(n))
        .collect();
    assert_eq!(pids, now, "no daemon restarted");
    rename(&cluster, 2, "after-rotation");
    assert!(poll_until(Duration::from_secs(10), || cluster
        .node_numbers()
        .all(
            |n| cluster.status_json(n)["cluster"]["name"] == "after-rotation"
        )));
}

#[test]
fn the_rest_api_answers_over_https_with_the_cluster_ca() {
    let cluster = DevCluster::up(&bin(), 196, 1);
    let ca = cluster.cacert();
    assert!(ca.exists(), "dev up wrote the cluster CA next to its nodes");
    let url = format!("https://{}:9443", cluster.addr(1));
    let trusted = cluster.flotilla(&["status", "--url", &url, "--cacert", &ca.to_string_lossy()]);
    flotilla_testkit::assert_success(&trusted, "status over HTTPS trusting the cluster CA");
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("CLUSTER CA: SHA-256"));
    let untrusted = cluster.flotilla(&["status", "--url", &url]);
    assert!(
        !untrusted.status.success(),
        "a client that does not trust the cluster CA gets no answer"
    );
    let info = runtime()
        .block_on(cluster.https_client(1).cluster())
        .expect("the testkit's HTTPS client trusts the cluster CA");
    assert!(info.ca_fingerprint.is_some());
}

#[test]
fn without_http_port_the_rest_api_is_https_only_and_the_cli_asks_for_cacert() {
    // `dev up` without --http-port creates the cluster over HTTPS: the fresh node's self-signed
    // certificate for create, the cluster CA afterwards.
    let cluster = DevCluster::up_https_only(&bin(), 206, 1);
    let refused = std::net::TcpStream::connect((cluster.addr(1), 8080))
        .expect_err("no plain HTTP on 8080 without --http-port");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(cluster.url(1).starts_with("https://"));
    let trusted = cluster.flotilla(&["status"]);
    flotilla_testkit::assert_success(&trusted, "status over HTTPS with FLOTILLA_CACERT");
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("CLUSTER CA: SHA-256"));
    let untrusted = cluster
        .command_at(1, &["status"])
        .env_remove("FLOTILLA_CACERT")
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running the flotilla binary");
    assert!(
        !untrusted.status.success(),
        "an untrusted node gets no call"
    );
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        stderr.contains("--cacert"),
        "the error names --cacert: {stderr}"
    );
}
