//! Access to a node against real daemons: the bootstrap token of a fresh node, logins that a
//! stream of guesses cannot turn into a denial of service (argon2 off the async workers, failures
//! slowed per source address), and the metrics token.
//!
//! Discovery's answers about a database with a password change only once a cluster made by
//! 0.1.0 has every node upgraded (its cluster version moved on).
//!
//! Each test uses its own loopback subnet (127.0.185.x, 127.0.186.x, 127.0.189.x).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_client::{read_bootstrap_token, ClientError};
use flotilla_model::rest::BOOTSTRAP_TOKEN_FILE;
use flotilla_testkit::{
    assert_success, flotilla_bin, poll_until, runtime, BareNode, DevCluster, Packages, PASSWORD,
    USER,
};
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn assert_bootstrap_refusal(result: Result<impl std::fmt::Debug, ClientError>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{what}: {err}");
    let text = err.to_string();
    assert!(text.contains("bootstrap_token_required"), "{what}: {text}");
    assert!(
        text.contains("--bootstrap-token"),
        "{what} names the flag: {text}"
    );
    assert!(
        text.contains(BOOTSTRAP_TOKEN_FILE),
        "{what} names the file: {text}"
    );
}

/// `flotilla cluster ARGS` against the node at `url` with the harness's operator credentials
/// and the environment `env`.
fn cluster_cli(url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(bin())
        .args([
            "--url",
            url,
            "--user",
            USER,
            "--password",
            PASSWORD,
            "cluster",
        ])
        .args(args)
        .env_remove("FLOTILLA_BOOTSTRAP_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("running flotilla cluster")
}

#[test]
fn a_fresh_node_takes_create_and_join_only_with_its_bootstrap_token() {
    let first = BareNode::start(&bin(), Ipv4Addr::new(127, 0, 185, 11));
    let second = BareNode::start(&bin(), Ipv4Addr::new(127, 0, 185, 12));
    let rt = runtime();

    // Each fresh node made a token, kept it owner-only and printed it.
    let token = read_bootstrap_token(first.data_dir()).expect("a fresh node has a token");
    let file = first.data_dir().join(BOOTSTRAP_TOKEN_FILE);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{} is owner-only", file.display());
    let log = std::fs::read_to_string(first.data_dir().join("flotilla.log")).unwrap();
    assert!(
        log.contains(&format!("bootstrap token: {token}")),
        "the daemon prints its token: {log}"
    );
    let second_token = read_bootstrap_token(second.data_dir()).expect("a token");
    assert_ne!(token, second_token, "every node makes its own");

    // Create: refused without the token and with a wrong one; nothing changes.
    let bare = first.client_without_token(None, None);
    assert_bootstrap_refusal(
        rt.block_on(bare.create_cluster("claimed", USER, PASSWORD)),
        "create without a token",
    );
    let wrong = bare.clone().with_bootstrap_token(Some("0".repeat(64)));
    assert_bootstrap_refusal(
        rt.block_on(wrong.create_cluster("claimed", USER, PASSWORD)),
        "create with a wrong token",
    );
    assert_eq!(rt.block_on(bare.health()).unwrap().node_uid, None);
    let url = format!("http://{}:8080", first.addr);
    let refused = cluster_cli(&url, &["create", "--name", "sec.local"], &[]);
    assert!(
        !refused.status.success(),
        "the CLI without --bootstrap-token"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--bootstrap-token"), "{stderr}");

    // The right token (the CLI flag) creates the cluster; the token is gone afterwards.
    let created = cluster_cli(
        &url,
        &["create", "--name", "sec.local", "--bootstrap-token", &token],
        &[],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert_eq!(rt.block_on(bare.health()).unwrap().node_uid, Some(1));
    assert!(!file.exists(), "a member keeps no bootstrap token");
    let again = rt.block_on(bare.create_cluster("again", USER, PASSWORD));
    let err = again.expect_err("a member refuses a second create");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");

    // Join: the same refusals, then the token from the environment joins.
    let joiner = second.client_without_token(None, None);
    let seeds = vec![first.addr.to_string()];
    assert_bootstrap_refusal(
        rt.block_on(joiner.join_cluster(&seeds, USER, PASSWORD)),
        "join without a token",
    );
    let wrong = joiner.clone().with_bootstrap_token(Some(token.clone()));
    assert_bootstrap_refusal(
        rt.block_on(wrong.join_cluster(&seeds, USER, PASSWORD)),
        "join with another node's token",
    );
    let second_url = format!("http://{}:8080", second.addr);
    let joined = cluster_cli(
        &second_url,
        &["join", "--nodes", &first.addr.to_string()],
        &[("FLOTILLA_BOOTSTRAP_TOKEN", &second_token)],
    );
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    assert_eq!(rt.block_on(joiner.health()).unwrap().node_uid, Some(2));
    assert!(read_bootstrap_token(second.data_dir()).is_none());
}

/// A multi-threaded runtime, so the test's own clients do not queue behind each other.
fn threaded_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An HTTP client whose connections come from `source` (a loopback address of the test's
/// subnet), so the node sees each stream of requests from an address of its own.
fn from(source: Ipv4Addr) -> reqwest::Client {
    flotilla_testkit::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(source))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn subnet_186(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 186, last)
}

/// Latencies of `GET /v1/health` and an authenticated `GET /v1/cluster` (credentials already
/// verified once) from two other addresses, every 20 ms until `until` says stop.
async fn probe(url: String, until: tokio::sync::watch::Receiver<bool>) -> Vec<Duration> {
    let health = from(subnet_186(51));
    let operator = from(subnet_186(50));
    let mut latencies = Vec::new();
    while !*until.borrow() {
        let started = Instant::now();
        let answer = health.get(format!("{url}/v1/health")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        latencies.push(started.elapsed());
        let started = Instant::now();
        let answer = operator
            .get(format!("{url}/v1/cluster"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "the operator is not slowed");
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

#[test]
fn wrong_passwords_neither_starve_the_node_nor_go_unslowed() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("metrics-token");
    std::fs::write(&token_file, "metrics-s3cret\n").unwrap();
    let token_env = token_file.to_string_lossy().into_owned();
    let cluster = DevCluster::up_with_env(
        &bin(),
        186,
        1,
        &[("FLOTILLA_METRICS_TOKEN_FILE", &token_env)],
    );
    let url = cluster.url(1);
    let rt = threaded_runtime();
    rt.block_on(async {
        // The operator's credentials verify once (then they are remembered).
        let warm = from(subnet_186(50))
            .get(format!("{url}/v1/cluster"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(warm.status(), 200);

        // 200 concurrent wrong passwords from 20 addresses (10 each: none is throttled, every
        // one costs argon2 work or is turned away as busy), while another client measures.
        // With argon2 on the async workers (before), the worst probe took 7.5 s; off them,
        // under 0.1 s.
        let (stop, until) = tokio::sync::watch::channel(false);
        let probing = tokio::spawn(probe(url.clone(), until));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let guesses: Vec<_> = (0..200u32)
            .map(|i| {
                let client = from(subnet_186(100 + (i % 20) as u8));
                let url = format!("{url}/v1/cluster");
                tokio::spawn(async move {
                    let answer = client
                        .get(url)
                        .basic_auth(USER, Some(format!("guess-{i}")))
                        .send()
                        .await
                        .unwrap();
                    answer.status().as_u16()
                })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for guess in guesses {
            *statuses.entry(guess.await.unwrap()).or_insert(0) += 1;
        }
        let stream = started.elapsed();
        stop.send(true).unwrap();
        let mut latencies = probing.await.unwrap();
        latencies.sort();
        let worst = *latencies.last().unwrap();
        let median = latencies[latencies.len() / 2];
        eprintln!(
            "200 wrong passwords took {stream:?}, answered {statuses:?}; meanwhile {} probes: median {median:?}, worst {worst:?}",
            latencies.len()
        );
        assert!(statuses.keys().all(|s| [401, 503].contains(s)), "{statuses:?}");
        assert!(statuses.get(&401).is_some_and(|n| *n >= 20), "argon2 ran: {statuses:?}");
        assert!(latencies.len() >= 10, "the probe ran through the stream");
        assert!(
            worst < Duration::from_secs(1),
            "health and operator answers stay fast while guesses are checked: worst {worst:?}"
        );

        // One address that keeps failing is slowed: 429 with Retry-After, even with the right
        // password; another address still logs in.
        let guesser = from(subnet_186(60));
        let mut throttled = None;
        for i in 0..12 {
            let answer = guesser
                .get(format!("{url}/v1/cluster"))
                .basic_auth(USER, Some(format!("again-{i}")))
                .send()
                .await
                .unwrap();
            if answer.status() == 429 {
                throttled = Some((i, answer));
                break;
            }
            assert_eq!(answer.status(), 401);
        }
        let (after, answer) = throttled.expect("the guesser is throttled within 12 failures");
        assert_eq!(after, 10, "after the free failures");
        let retry_after: u64 = answer.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error_code"], "too_many_failed_logins", "{body}");
        let status = |client: reqwest::Client, password: &'static str| {
            let url = format!("{url}/v1/nodes");
            async move {
                client
                    .get(url)
                    .basic_auth(USER, Some(password))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(status(guesser.clone(), "again-12").await, 429, "still slowed");
        assert_eq!(status(from(subnet_186(61)), PASSWORD).await, 200);

        // The unauthenticated internal join is slowed per address the same way (over TLS:
        // the cluster has a CA, and a joiner verifies the seed against it).
        let ca = std::fs::read(cluster.cacert()).expect("dev up wrote the cluster CA");
        let joiner = reqwest::Client::builder()
            .no_proxy()
            .local_address(IpAddr::V4(subnet_186(70)))
            .timeout(Duration::from_secs(60))
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap();
        let rpc = format!("https://{}:3333/internal/join", cluster.addr(1));
        let mut kinds = Vec::new();
        for _ in 0..11 {
            let request = serde_json::json!({
                "username": USER,
                "password": "wrong",
                "node": {"addr": "127.0.186.70", "software_version": "0.2.0", "os": "x"},
            });
            let answer: Value = joiner
                .post(&rpc)
                .json(&request)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            kinds.push(answer["Err"].clone());
        }
        assert!(kinds[..10].iter().all(|k| k["kind"] == "unauthorized"), "{kinds:?}");
        assert_eq!(kinds[10]["kind"], "invalid_request", "{kinds:?}");
        assert!(
            kinds[10]["description"]
                .as_str()
                .unwrap()
                .contains("too many failed logins"),
            "{kinds:?}"
        );

        // Metrics need the token the daemon was started with.
        let metrics = format!("http://{}:8070/metrics", cluster.addr(1));
        let scrape = |bearer: Option<&'static str>| {
            let mut request = from(subnet_186(80)).get(&metrics);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(scrape(None).await, 401);
        assert_eq!(scrape(Some("wrong")).await, 401);
        assert_eq!(scrape(Some("metrics-s3cret")).await, 200);
    });
}

/// `SENTINEL get-master-addr-by-name NAME` on node `n`'s discovery service, after `AUTH
/// password` when given: the port it names, if any.
fn discovered_port(cluster: &DevCluster, n: u8, name: &str, password: Option<&str>) -> Option<u16> {
    let url = format!("redis://{}:8001/", cluster.addr(n));
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    if let Some(password) = password {
        let _: String = redis::cmd("AUTH").arg(password).query(&mut con).unwrap();
    }
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query(&mut con)
        .unwrap();
    addr.map(|(_, port)| port)
}

/// Upgrades node `n` in place to `package`.
fn upgrade_node(cluster: &DevCluster, n: u8, package: &std::path::Path) {
    let package = package.to_string_lossy().into_owned();
    let node = n.to_string();
    let output = cluster.flotilla(&["upgrade", "node", &node, "--package", &package, "--yes"]);
    assert_success(&output, &format!("upgrade node {n}"));
}

#[test]
fn a_cluster_made_by_0_1_0_keeps_its_access_until_every_node_is_upgraded() {
    let packages = Packages::shared(&bin());
    let v010 = packages.release_0_1_0();
    let (_, v021) = packages.current_pair();
    // This CLI created and joined the 0.1.0 nodes (they take no bootstrap token).
    let cluster = DevCluster::up_from_package(&bin(), 189, 3, &v010);
    cluster.create_db(&[
        "--name",
        "locked",
        "--port",
        "12189",
        "--memory",
        "50mb",
        "--shards",
        "1",
        "--db-password",
        "pw-locked",
    ]);
    let port = Some(12189);
    assert_eq!(
        discovered_port(&cluster, 1, "locked", None),
        port,
        "0.1.0 names it to anyone"
    );

    // Mixed: the upgraded node answers as the 0.1.0 nodes do, so clients see one answer.
    upgrade_node(&cluster, 2, &v021);
    assert_eq!(discovered_port(&cluster, 2, "locked", None), port);
    for n in cluster.node_numbers() {
        assert!(
            read_bootstrap_token(&cluster.data_dir(n)).is_none(),
            "a member never has a bootstrap token (node {n})"
        );
    }

    // Every node upgraded, the cluster version moves on: the password guards the database.
    upgrade_node(&cluster, 1, &v021);
    upgrade_node(&cluster, 3, &v021);
    let status = cluster.status_json(1);
    assert_eq!(status["cluster"]["cluster_version"], "0.2.1", "{status}");
    for n in cluster.node_numbers() {
        let hidden = poll_until(Duration::from_secs(10), || {
            discovered_port(&cluster, n, "locked", None).is_none()
        });
        assert!(
            hidden,
            "node {n} names the database only to its password now"
        );
        assert_eq!(discovered_port(&cluster, n, "locked", Some("wrong")), None);
        assert_eq!(
            discovered_port(&cluster, n, "locked", Some("pw-locked")),
            port
        );
        assert!(read_bootstrap_token(&cluster.data_dir(n)).is_none());
    }
}
