//! A standalone endpoint for manual tests and benchmarks: starts `SHARDS` redis-7.0 shards on
//! `IP` (ports 20001..) and serves them through the proxy on `IP:12000` until Ctrl-C, then
//! prints the endpoint's statistics and stops the shards it started.
//!
//! ```text
//! cargo run --release -p flotilla-proxy --example endpoint -- 127.0.7.30 2
//! redis-benchmark -h 127.0.7.30 -p 12000 -t get,set -P 16 -c 50 -n 100000 -q
//! redis-benchmark -h 127.0.7.30 -p 20001 -a bench-internal -t get,set -P 16 -c 50 -n 100000 -q
//! ```

use std::net::{IpAddr, SocketAddr};

use flotilla_engine::{start, EngineCatalog, EngineVersion, Persistence, ShardSpec};
use flotilla_proxy::{serve_with_stats, EndpointStats, ProxyOptions, Topology};

const PASSWORD: &str = "bench-internal";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let ip: IpAddr = args
        .next()
        .unwrap_or("127.0.7.30".into())
        .parse()
        .expect("IP");
    let shards: usize = args.next().unwrap_or("2".into()).parse().expect("SHARDS");
    let catalog = EngineCatalog::dev();
    let dir = std::env::temp_dir().join(format!("flotilla-proxy-endpoint-{ip}"));
    let mut processes = Vec::new();
    for i in 0..shards {
        let spec = ShardSpec {
            shard_id: i as u64 + 1,
            version: EngineVersion::Redis70,
            bind: ip,
            port: 20001 + i as u16,
            password: PASSWORD.into(),
            // The default user keeps PASSWORD, so redis-cli can reach the shards directly too.
            users: Some(flotilla_model::EngineUsers::derive(PASSWORD)),
            legacy: true,
            maxmemory_bytes: 256 << 20,
            eviction: Default::default(),
            persistence: Persistence::None,
            dir: dir.join(format!("shard-{i}")),
            replica_of: None,
        };
        let process = start(&catalog, &spec)
            .await
            .unwrap_or_else(|e| panic!("start shard {i} (run scripts/fetch-engines?): {e}"));
        processes.push(process);
    }
    let primaries = processes
        .iter()
        .map(|p| SocketAddr::new(p.spec().bind, p.spec().port))
        .collect();
    let topology = Topology::even(None, PASSWORD, primaries).expect("topology");
    let (_tx, rx) = tokio::sync::watch::channel(topology);
    let endpoint = SocketAddr::new(ip, 12000);
    let listener = tokio::net::TcpListener::bind(endpoint).await.expect("bind");
    println!("endpoint {endpoint}, {shards} shards from port 20001 (password {PASSWORD})");
    let stats = EndpointStats::new();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve_with_stats(
        listener,
        rx,
        shutdown,
        ProxyOptions::default(),
        stats.clone(),
    )
    .await;
    println!("{:?}", stats.snapshot());
    for process in processes {
        let _ = process.stop(false).await;
    }
}
