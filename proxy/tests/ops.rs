//! Operations: /healthz and SIGTERM draining, origin protection, the admin API's purge, the
//! Prometheus endpoint, and the access log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

#[tokio::test]
async fn healthz_turns_503_on_sigterm_while_traffic_is_still_served_then_the_process_exits() {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok("segment"));
    let mut proxy = Proxy::start_with(
        &upstream_config(&origin, None),
        ProxyOptions {
            drain_secs: 2,
            grace_period_secs: 1,
            ..ProxyOptions::default()
        },
    )
    .await;
    assert_eq!(get(proxy.addr, "/healthz").await.unwrap().status, 200);

    proxy.sigterm();
    let signalled = Instant::now();
    loop {
        let status = get(proxy.addr, "/healthz").await.unwrap().status;
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "healthz still 200 a second after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining: the load balancer is told to go away, but requests still in flight or arriving
    // before deregistration completes are served.
    let during = get(proxy.addr, "/live/1.ts").await.unwrap();
    assert_eq!(during.status, 200);
    assert_eq!(during.body, b"segment");

    assert!(
        proxy.wait_exit(Duration::from_secs(15)).await,
        "proxy still running after drain + grace period:\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_graceful_upgrade_hands_the_listener_to_a_new_process_without_failed_requests() {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok("segment"));
    let mut old = Proxy::start(&upstream_config(&origin, None)).await;

    // A client keeps fetching through the whole handover.
    let addr = old.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let resp = get(addr, "/live/1.ts").await.unwrap();
                assert_eq!(resp.status, 200);
                assert_eq!(resp.body, b"segment");
                served += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            served
        }
    });

    let new = old.upgrade().await;
    assert!(
        old.wait_exit(Duration::from_secs(20)).await,
        "old process still running:\n{}",
        old.log()
    );
    // Only the new process is left to answer.
    let resp = get(new.addr, "/live/1.ts").await.unwrap();
    assert_eq!(resp.status, 200);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(client.await.unwrap() > 10);
}

#[tokio::test]
async fn requests_without_the_origin_protection_secret_get_403() {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok("segment"));
    let secret = "cloudfront-shared-secret-42";
    // Mid-rotation: the old secret is still accepted until CloudFront sends the new one.
    let old = "cloudfront-shared-secret-41";
    let proxy = Proxy::start(&format!(
        "{}\n[origin_protection]\nheader = \"x-origin-verify\"\nsecret = \"{secret}\"\n\
         previous_secrets = [\"{old}\"]\n",
        upstream_config(&origin, None)
    ))
    .await;

    assert_eq!(get(proxy.addr, "/live/1.ts").await.unwrap().status, 403);
    let wrong = get_with(
        proxy.addr,
        "/live/1.ts",
        &[("x-origin-verify", "cloudfront-shared-secret-43")],
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 403);
    assert_eq!(origin.total(), 0);

    let right = get_with(proxy.addr, "/live/1.ts", &[("x-origin-verify", secret)])
        .await
        .unwrap();
    assert_eq!(right.status, 200);
    assert_eq!(right.body, b"segment");
    let rotated_out = get_with(proxy.addr, "/live/1.ts", &[("x-origin-verify", old)])
        .await
        .unwrap();
    assert_eq!(rotated_out.status, 200);
    // The secret is for the edge only; the origin never sees it.
    assert!(origin.seen()[0].header("x-origin-verify").is_none());
    // Load-balancer health checks do not carry the CloudFront header.
    assert_eq!(get(proxy.addr, "/healthz").await.unwrap().status, 200);
}

async fn admin(port: u16, method: &str, target: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a), ("content-length", "0")])
        .unwrap_or_else(|| vec![("content-length", "0")]);
    request(
        format!("127.0.0.1:{port}").parse().unwrap(),
        method,
        target,
        &headers,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_admin_api_purges_one_url_and_a_stream_prefix() {
    let origin = Origin::start().await;
    for path in ["/live/a/1.ts", "/live/a/2.ts", "/live/b/1.ts"] {
        origin.set(path, Reply::ok(path.as_bytes()));
    }
    let admin_port = free_port();
    let proxy = Proxy::start(&format!(
        "{}\n[admin]\nenabled = true\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{TOKEN}\"\n",
        upstream_config(&origin, None)
    ))
    .await;
    for path in ["/live/a/1.ts", "/live/a/2.ts", "/live/b/1.ts"] {
        assert_eq!(get(proxy.addr, path).await.unwrap().status, 200);
        assert_eq!(
            get(proxy.addr, path).await.unwrap().header("x-cache"),
            Some("HIT")
        );
    }

    let denied = admin(admin_port, "POST", "/purge?url=/live/a/1.ts", None).await;
    assert_eq!(denied.status, 401);

    let one = admin(
        admin_port,
        "POST",
        "/purge?url=http://test.local/live/a/1.ts",
        Some(TOKEN),
    )
    .await;
    assert_eq!(one.status, 200, "{}", String::from_utf8_lossy(&one.body));
    assert_eq!(
        get(proxy.addr, "/live/a/1.ts")
            .await
            .unwrap()
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(proxy.addr, "/live/a/2.ts")
            .await
            .unwrap()
            .header("x-cache"),
        Some("HIT")
    );

    let prefix = admin(
        admin_port,
        "POST",
        "/purge?prefix=/live/a/&host=test.local",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        prefix.status,
        200,
        "{}",
        String::from_utf8_lossy(&prefix.body)
    );
    assert_eq!(
        get(proxy.addr, "/live/a/2.ts")
            .await
            .unwrap()
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(proxy.addr, "/live/b/1.ts")
            .await
            .unwrap()
            .header("x-cache"),
        Some("HIT")
    );
    assert_eq!(origin.hits("/live/a/1.ts"), 2);
    assert_eq!(origin.hits("/live/a/2.ts"), 2);
    assert_eq!(origin.hits("/live/b/1.ts"), 1);

    let config = admin(admin_port, "GET", "/config", Some(TOKEN)).await;
    assert_eq!(config.status, 200);
    assert!(!String::from_utf8_lossy(&config.body).contains(TOKEN));
}

#[tokio::test]
async fn metrics_count_requests_by_cache_status_and_the_access_log_has_a_line_per_request() {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok(pattern(1000, 1)));
    let metrics_port = free_port();
    let proxy = Proxy::start(&format!(
        "{}\n[metrics]\naddr = \"127.0.0.1:{metrics_port}\"\n[log]\nformat = \"json\"\n",
        upstream_config(&origin, None)
    ))
    .await;
    get(proxy.addr, "/live/1.ts").await.unwrap();
    get(proxy.addr, "/live/1.ts").await.unwrap();

    let scrape = get(
        format!("127.0.0.1:{metrics_port}").parse().unwrap(),
        "/metrics",
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&scrape.body);
    assert!(
        text.contains("parallax_requests_total{cache_status=\"hit\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("parallax_requests_total{cache_status=\"miss\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("parallax_origin_requests_total{group=\"live\",origin=\"primary\"} 1"),
        "{text}"
    );

    // The log is written by a background thread: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (log, access) = loop {
        let log = proxy.log();
        let access: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access" && v["fields"]["path"] == "/live/1.ts")
            .collect();
        if access.len() >= 2 || Instant::now() > deadline {
            break (log, access);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(access.len(), 2, "{log}");
    assert_eq!(access[0]["fields"]["cache"], "MISS");
    assert_eq!(access[1]["fields"]["cache"], "HIT");
    assert_eq!(access[1]["fields"]["status"], 200);
    assert_eq!(access[1]["fields"]["bytes"], 1000);
}

#[tokio::test]
async fn an_invalid_config_exits_non_zero_with_one_message_naming_the_key() {
    let dir = temp_dir("bad-config");
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "[[upstreams]]\nname = \"live\"\nprimary.address = \"127.0.0.1:1\"\n[cache]\nmax_bytes = 0\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cache.max_bytes"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_taken_admin_port_stops_startup_with_a_message_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let dir = temp_dir("taken-port");
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"0123456789abcdef0123\"\n"
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--upstream", "127.0.0.1:1", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {admin}")),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn upstream_and_listen_flags_alone_make_a_working_cache() {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok("segment"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
        .args([
            "--upstream",
            &origin.host_port(),
            "--listen",
            &addr.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let resp = loop {
        if let Ok(resp) = get(addr, "/live/1.ts").await {
            break resp;
        }
        assert!(Instant::now() < deadline, "proxy never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let again = get(addr, "/live/1.ts").await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"segment");
    assert_eq!(again.header("x-cache"), Some("HIT"));
}

#[tokio::test]
async fn routes_send_hosts_and_path_prefixes_to_their_groups() {
    let live = Origin::start().await;
    let vod = Origin::start().await;
    live.set("/live/1.ts", Reply::ok("live"));
    vod.set("/vod/1.ts", Reply::ok("vod by path"));
    vod.set("/any/1.ts", Reply::ok("vod by host"));
    let proxy = Proxy::start(&format!(
        "{}[[upstreams]]\nname = \"vod\"\nprimary.address = \"{}\"\nhealth_check.enabled = false\n\
         [[routes]]\nhost = \"vod.test\"\ngroup = \"vod\"\n\
         [[routes]]\npath_prefix = \"/vod/\"\ngroup = \"vod\"\n",
        upstream_config(&live, None),
        vod.host_port()
    ))
    .await;

    // No route matches: the first group.
    assert_eq!(get(proxy.addr, "/live/1.ts").await.unwrap().body, b"live");
    assert_eq!(
        get(proxy.addr, "/vod/1.ts").await.unwrap().body,
        b"vod by path"
    );
    let raw = b"GET /any/1.ts HTTP/1.1\r\nhost: VOD.test:8080\r\nconnection: close\r\n\r\n";
    let by_host = send_raw(proxy.addr, raw, false).await.unwrap();
    assert_eq!(by_host.body, b"vod by host");
    assert_eq!(live.hits("/vod/1.ts") + live.hits("/any/1.ts"), 0);
}
