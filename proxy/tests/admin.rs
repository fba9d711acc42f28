//! The admin API end to end: the real `proxy` binary with `[admin]` on, driven over its own
//! loopback listener.
//!
//! Run: `cargo test -p parallax-proxy --test admin`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

async fn start() -> (Origin, Proxy, SocketAddr) {
    let origin = Origin::start().await;
    for path in ["/live/a/1.ts", "/live/a/2.ts", "/live/b/1.ts"] {
        origin.set(path, Reply::ok(pattern(1000, 1)));
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "{}\n[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n",
        upstream_config(&origin, None)
    );
    let proxy = Proxy::start(&toml).await;
    (origin, proxy, admin)
}

async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let response = request(addr, method, path, &[("authorization", &auth)])
        .await
        .unwrap();
    (
        response.status,
        serde_json::from_slice(&response.body).unwrap(),
    )
}

async fn x_cache(proxy: &Proxy, path: &str) -> String {
    let response = get(proxy.addr, path).await.unwrap();
    assert_eq!(response.status, 200, "{path}");
    response.header("x-cache").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn requests_without_the_token_are_refused_with_401() {
    let (_origin, _proxy, addr) = start().await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong-token-0123456789")],
        vec![("authorization", TOKEN)],
    ] {
        let response = request(addr, "GET", "/stats", &headers).await.unwrap();
        assert_eq!(response.status, 401, "{headers:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
}

#[tokio::test]
async fn purging_a_url_or_a_stream_prefix_makes_the_next_request_a_miss() {
    let (origin, proxy, addr) = start().await;
    for path in ["/live/a/1.ts", "/live/a/2.ts", "/live/b/1.ts"] {
        assert_eq!(x_cache(&proxy, path).await, "MISS");
        assert_eq!(x_cache(&proxy, path).await, "HIT");
    }
    let (status, stats) = admin(addr, "GET", "/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["items"], 3, "{stats}");

    let (status, body) = admin(addr, "POST", "/purge?url=http://test.local/live/a/1.ts").await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)));
    assert_eq!(x_cache(&proxy, "/live/a/1.ts").await, "MISS");
    assert_eq!(x_cache(&proxy, "/live/a/2.ts").await, "HIT");

    let (status, body) = admin(addr, "POST", "/purge?prefix=/live/a/&host=test.local").await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(2)));
    assert_eq!(x_cache(&proxy, "/live/a/1.ts").await, "MISS");
    assert_eq!(x_cache(&proxy, "/live/a/2.ts").await, "MISS");
    assert_eq!(x_cache(&proxy, "/live/b/1.ts").await, "HIT");
    assert_eq!(origin.hits("/live/a/1.ts"), 3);
    assert_eq!(origin.hits("/live/b/1.ts"), 1);

    // Keys include the host, so a purge without one is refused rather than silently missing.
    let (status, body) = admin(addr, "POST", "/purge?url=/live/b/1.ts").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn upstream_health_and_a_redacted_config_are_reported() {
    let (origin, _proxy, addr) = start().await;
    let (status, groups) = admin(addr, "GET", "/upstreams").await;
    assert_eq!(status, 200);
    assert_eq!(groups[0]["name"], "live");
    assert_eq!(groups[0]["active"], "primary");
    assert_eq!(groups[0]["origins"][0]["address"], origin.host_port());
    assert_eq!(groups[0]["origins"][0]["healthy"], true);

    let (status, config) = admin(addr, "GET", "/config").await;
    assert_eq!(status, 200);
    let text = config.to_string();
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
    assert!(text.contains(&origin.host_port()), "{text}");
}
