//! The Redis-backed key-value store against a real `redis-server` on loopback: two stores (and
//! two proxy processes) sharing one Redis, changes crossing between them, Redis killed and
//! restarted under them.
//!
//! Run: `cargo test -p parallax-proxy --test kv` (needs `redis-server`: `apt-get install -y
//! redis-server`, which `scripts/test.sh` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallax_proxy::kv::resp::Conn;
use parallax_proxy::kv::{KvConfig, KvError, KvStore, RedisKv};
use parallax_proxy::metrics::Metrics;
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

/// How long a change may take to reach the other node in these tests. Measured on loopback it
/// takes about a millisecond (one pub/sub hop and one fetch); the margin is for a loaded 2-core
/// machine.
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);

/// A `redis-server` child process on a loopback port, without persistence. Killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!(
                "redis-server is not installed; run `apt-get install -y redis-server` \
                 (or `bash scripts/test.sh`, which installs it)"
            );
        }
        let dir = temp_dir("redis");
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let redis = Redis {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.command(&["PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {port}:\n{}",
                std::fs::read_to_string(redis.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command directly (as `redis-cli` would, bypassing Parallax).
    fn command(&self, args: &[&str]) -> Result<String, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut conn =
            Conn::connect(&[addr], Duration::from_secs(1), None, 0).map_err(|e| e.to_string())?;
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = conn
            .call(&args, Instant::now() + Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        Ok(format!("{reply:?}"))
    }

    /// SIGKILL: no goodbye to connected clients beyond the kernel closing their sockets.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn store(redis: &Redis, resync_ms: u64) -> RedisKv {
    let config = KvConfig {
        redis_url: redis.url(),
        // Generous for a loaded test machine; the default is 25.
        redis_timeout_ms: 500,
        redis_resync_interval_ms: resync_ms,
        redis_reconnect_interval_ms: 100,
        ..KvConfig::default()
    };
    config.validate().unwrap();
    let kv = RedisKv::start(&config, Arc::new(Metrics::new().unwrap())).unwrap();
    assert!(kv.is_up(), "store did not sync with a running redis");
    kv
}

/// Polls `kv.get(key)` until it equals `want`; returns how long that took.
fn wait_for(kv: &dyn KvStore, key: &str, want: Option<&str>, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = kv.get(key).unwrap();
        if got.as_deref() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{key}: still {got:?} after {bound:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not after {bound:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_write_on_one_node_reaches_the_other_through_change_announcements() {
    let redis = Redis::start();
    // A resync interval far beyond the test: only pub/sub can carry the changes.
    let (a, b) = (store(&redis, 600_000), store(&redis, 600_000));

    a.set("region/eu/state", "closed", None).unwrap();
    assert_eq!(a.get("region/eu/state"), Ok(Some("closed".into())));
    let took = wait_for(&b, "region/eu/state", Some("closed"), PROPAGATION_BOUND);
    eprintln!("set propagated in {took:?}");

    assert_eq!(
        b.compare_and_set("region/eu/state", Some("open"), "x", None),
        Ok(false)
    );
    assert_eq!(
        b.compare_and_set("region/eu/state", Some("closed"), "open", None),
        Ok(true)
    );
    wait_for(&a, "region/eu/state", Some("open"), PROPAGATION_BOUND);
    assert_eq!(a.compare_and_set("fresh", None, "1", None), Ok(true));
    assert_eq!(a.compare_and_set("fresh", None, "2", None), Ok(false));

    a.delete("region/eu/state").unwrap();
    wait_for(&b, "region/eu/state", None, PROPAGATION_BOUND);

    // TTLs: the other node learns the remaining TTL and expires the key by itself.
    a.set("session/1", "v", Some(Duration::from_millis(400)))
        .unwrap();
    wait_for(&b, "session/1", Some("v"), PROPAGATION_BOUND);
    wait_for(&b, "session/1", None, Duration::from_secs(2));
    // Redis expires it too. The node's copy and Redis's key expire on their own clocks, each
    // in whole milliseconds, so Redis may drop it a moment after the node (seen: about 1 run
    // in 5 checked too early).
    wait_until(
        "redis expires session/1",
        Duration::from_millis(100),
        || redis.command(&["EXISTS", "parallax:kv:session/1"]).unwrap() == "Int(0)",
    );

    // Keys live under the prefix in Redis.
    a.set("k", "v", None).unwrap();
    assert!(redis
        .command(&["GET", "parallax:kv:k"])
        .unwrap()
        .contains("118")); // b"v"
}

#[test]
fn concurrent_compare_and_set_on_two_nodes_loses_no_increment() {
    let redis = Redis::start();
    let nodes = [
        Arc::new(store(&redis, 600_000)),
        Arc::new(store(&redis, 600_000)),
    ];
    nodes[0].set("counter", "0", None).unwrap();
    wait_for(&*nodes[1], "counter", Some("0"), PROPAGATION_BOUND);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let kv = nodes[i % 2].clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    loop {
                        // The mirror may lag; a stale read just makes the CAS fail and retry.
                        let cur = kv.get("counter").unwrap().unwrap_or_default();
                        let next = (cur.parse::<u64>().unwrap_or(0) + 1).to_string();
                        if kv
                            .compare_and_set("counter", Some(&cur), &next, None)
                            .unwrap()
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(redis
        .command(&["GET", "parallax:kv:counter"])
        .unwrap()
        .contains(&format!("{:?}", b"200")));
    for node in &nodes {
        wait_for(&**node, "counter", Some("200"), PROPAGATION_BOUND);
    }
}

#[test]
fn changes_made_outside_parallax_arrive_with_the_periodic_resync() {
    let redis = Redis::start();
    let kv = store(&redis, 200);
    redis
        .command(&["SET", "parallax:kv:by-hand", "yes"])
        .unwrap();
    redis.command(&["SET", "other:key", "not ours"]).unwrap();
    wait_for(&kv, "by-hand", Some("yes"), Duration::from_secs(3));
    redis.command(&["DEL", "parallax:kv:by-hand"]).unwrap();
    wait_for(&kv, "by-hand", None, Duration::from_secs(3));
    assert_eq!(kv.get("other:key"), Ok(None));
}

#[test]
fn redis_down_fails_writes_fast_keeps_reads_and_recovers_when_it_returns() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (a, b) = (store(&redis, 600_000), store(&redis, 600_000));
    a.set("region/us/state", "closed", None).unwrap();
    wait_for(&b, "region/us/state", Some("closed"), PROPAGATION_BOUND);

    redis.kill();
    wait_until(
        "store notices redis is gone",
        Duration::from_secs(3),
        || !a.is_up(),
    );
    let start = Instant::now();
    let err = a.set("region/us/state", "open", None).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&err, KvError::Unavailable(why) if why.contains("unreachable")),
        "{err}"
    );
    assert!(
        took < Duration::from_millis(50),
        "a write while down took {took:?}"
    );
    assert!(matches!(a.delete("x"), Err(KvError::Unavailable(_))));
    assert!(matches!(
        a.compare_and_set("x", None, "1", None),
        Err(KvError::Unavailable(_))
    ));
    assert_eq!(a.get("region/us/state"), Ok(Some("closed".into())));
    assert_eq!(b.get("region/us/state"), Ok(Some("closed".into())));

    // Restarted empty (no persistence): the stores reconnect, resync to what Redis holds, and
    // writes flow again.
    let redis = Redis::start_on(port);
    wait_until("store reconnects", Duration::from_secs(5), || {
        a.is_up() && b.is_up()
    });
    wait_for(&a, "region/us/state", None, Duration::from_secs(2));
    a.set("region/us/state", "open", None).unwrap();
    wait_for(&b, "region/us/state", Some("open"), PROPAGATION_BOUND);
    drop(redis);
}

#[test]
fn a_store_started_before_redis_serves_empty_then_syncs() {
    let port = free_port();
    let config = KvConfig {
        redis_url: format!("redis://127.0.0.1:{port}"),
        redis_reconnect_interval_ms: 50,
        // The SET below bypasses Parallax (no announcement) and may land just after the first
        // sync: a short resync brings it.
        redis_resync_interval_ms: 200,
        ..KvConfig::default()
    };
    let kv = RedisKv::start(&config, Arc::new(Metrics::new().unwrap())).unwrap();
    assert!(!kv.is_up());
    assert_eq!(kv.get("k"), Ok(None));
    assert!(matches!(
        kv.set("k", "v", None),
        Err(KvError::Unavailable(_))
    ));
    let redis = Redis::start_on(port);
    redis
        .command(&["SET", "parallax:kv:k", "from-redis"])
        .unwrap();
    wait_until("store connects", Duration::from_secs(5), || kv.is_up());
    wait_for(&kv, "k", Some("from-redis"), Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Two proxy processes
// ---------------------------------------------------------------------------------------------

struct Node {
    proxy: Proxy,
    admin: SocketAddr,
    metrics: SocketAddr,
}

async fn node(origin: &Origin, redis_url: &str) -> Node {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "{}\n[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [metrics]\naddr = \"{metrics}\"\n\
         [kv]\nredis_url = \"{redis_url}\"\nredis_timeout_ms = 500\n\
         redis_reconnect_interval_ms = 100\nredis_resync_interval_ms = 60000\n",
        upstream_config(origin, None)
    );
    Node {
        proxy: Proxy::start(&toml).await,
        admin,
        metrics,
    }
}

/// An admin request with a body; returns status and body text.
async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = send_raw(addr, raw.as_bytes(), false).await.unwrap();
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

async fn wait_admin_value(addr: SocketAddr, key: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = admin(addr, "GET", &format!("/kv/{key}"), "").await;
        if status == 200 && body == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "{key} on {addr}: {status} {body}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn metric(addr: SocketAddr, name: &str) -> Option<String> {
    let body = get(addr, "/metrics").await.unwrap().body;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_closed_on_one_proxy_is_seen_by_another_and_survives_a_redis_outage() {
    let mut redis = Redis::start();
    let port = redis.port;
    let origin = Origin::start().await;
    origin.set("/live/a/1.ts", Reply::ok(pattern(1000, 1)));
    let a = node(&origin, &redis.url()).await;
    let b = node(&origin, &redis.url()).await;

    let (status, body) = admin(a.admin, "POST", "/regions/eu/close", "").await;
    assert_eq!(status, 200, "{body}");
    let took = wait_admin_value(b.admin, "region/eu/state", "closed").await;
    eprintln!("region close reached the other proxy in {took:?}");
    let (status, _) = admin(a.admin, "PUT", "/kv/module/flag?ttl_ms=60000", "on").await;
    assert_eq!(status, 200);
    wait_admin_value(b.admin, "module/flag", "on").await;
    assert_eq!(
        metric(a.metrics, "parallax_kv_redis_up").await.as_deref(),
        Some("parallax_kv_redis_up 1")
    );

    redis.kill();
    let start = Instant::now();
    loop {
        let (status, body) = admin(a.admin, "POST", "/regions/eu/open", "").await;
        if status == 503 {
            assert!(body.contains("unreachable"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "writes still accepted: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reads keep the last known state on both nodes, and both keep serving viewers.
    wait_admin_value(a.admin, "region/eu/state", "closed").await;
    wait_admin_value(b.admin, "region/eu/state", "closed").await;
    for node in [&a, &b] {
        let response = get(node.proxy.addr, "/live/a/1.ts").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            metric(node.metrics, "parallax_kv_redis_up")
                .await
                .as_deref(),
            Some("parallax_kv_redis_up 0")
        );
    }
    assert!(a.proxy.log().contains("redis down"), "{}", a.proxy.log());
    assert!(
        metric(a.metrics, "parallax_kv_write_failures_total")
            .await
            .is_some(),
        "failed writes are counted"
    );

    let _redis = Redis::start_on(port);
    let start = Instant::now();
    loop {
        let (status, body) = admin(a.admin, "POST", "/regions/eu/open", "").await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no recovery: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_admin_value(b.admin, "region/eu/state", "open").await;
    assert!(a.proxy.log().contains("redis up"), "{}", a.proxy.log());
}

/// A purge on one proxy reaches the other through the shared Redis; `scope=node` stays local;
/// with Redis down the purge still applies locally and the answer says it did not spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_proxy_purges_the_whole_fleet() {
    let mut redis = Redis::start();
    let origin = Origin::start().await;
    for n in 1..=3 {
        origin.set(&format!("/live/a/{n}.ts"), Reply::ok(pattern(1000, n)));
    }
    let a = node(&origin, &redis.url()).await;
    let b = node(&origin, &redis.url()).await;
    let cached = |node: &Node, path: &'static str| {
        let addr = node.proxy.addr;
        async move {
            let response = get(addr, path).await.unwrap();
            assert_eq!(response.status, 200);
            response.header("x-cache").unwrap_or_default().to_owned()
        }
    };
    for path in ["/live/a/1.ts", "/live/a/2.ts", "/live/a/3.ts"] {
        for node in [&a, &b] {
            cached(node, path).await;
            assert_eq!(cached(node, path).await, "HIT", "{path} cached");
        }
    }

    // Fleet purge of a prefix on A: both caches lose it.
    let (status, body) = admin(
        a.admin,
        "POST",
        "/purge?prefix=/live/a/1&host=test.local",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"other_nodes\":1"), "{body}");
    let start = Instant::now();
    while cached(&b, "/live/a/1.ts").await == "HIT" {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "the purge never reached B"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("the purge reached the other proxy in {:?}", start.elapsed());
    assert_ne!(cached(&a, "/live/a/1.ts").await, "HIT");
    assert!(
        b.proxy.log().contains("fleet purge applied"),
        "{}",
        b.proxy.log()
    );

    // A node-scoped purge of one URL stays on A.
    let (status, body) = admin(
        a.admin,
        "POST",
        "/purge?url=/live/a/2.ts&host=test.local&scope=node",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("other_nodes"), "{body}");
    assert_ne!(cached(&a, "/live/a/2.ts").await, "HIT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cached(&b, "/live/a/2.ts").await, "HIT", "B kept its copy");
    let (status, _) = admin(
        a.admin,
        "POST",
        "/purge?url=/live/a/2.ts&host=test.local&scope=region",
        "",
    )
    .await;
    assert_eq!(status, 400);

    // Redis down: purged here, and the answer says the fleet was not reached.
    redis.kill();
    let start = Instant::now();
    loop {
        let (status, body) = admin(
            a.admin,
            "POST",
            "/purge?url=http://test.local/live/a/3.ts",
            "",
        )
        .await;
        if status == 503 {
            assert!(body.contains("this node only"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "fleet purges still reported as published: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(cached(&a, "/live/a/3.ts").await, "HIT");
    assert_eq!(cached(&b, "/live/a/3.ts").await, "HIT");
}
