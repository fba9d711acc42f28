//! Cache behaviour end to end: the real `proxy` binary in front of the in-test origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(origin: &Origin) -> String {
    upstream_config(origin, None)
}

#[tokio::test]
async fn a_repeated_request_is_served_from_cache_with_age_and_x_cache() {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok(pattern(10_000, 1)));
    let proxy = Proxy::start(&config(&origin)).await;

    let first = get(proxy.addr, "/live/1.ts").await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.body, pattern(10_000, 1));

    let second = get(proxy.addr, "/live/1.ts").await.unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert!(second.header("age").is_some(), "{second:?}");
    assert!(second.header("via").is_some_and(|v| v.contains("parallax")));
    assert_eq!(second.body, pattern(10_000, 1));
    assert_eq!(origin.hits("/live/1.ts"), 1);
}

#[tokio::test]
async fn a_playlist_is_refetched_after_its_ttl_but_a_segment_is_not() {
    let origin = Origin::start().await;
    origin.set("/live/index.m3u8", Reply::ok("#EXTM3U\n"));
    origin.set("/live/7.ts", Reply::ok(pattern(1000, 7)));
    let proxy = Proxy::start(&config(&origin)).await;

    for path in ["/live/index.m3u8", "/live/7.ts"] {
        assert_eq!(get(proxy.addr, path).await.unwrap().status, 200);
        assert_eq!(get(proxy.addr, path).await.unwrap().status, 200);
        assert_eq!(origin.hits(path), 1, "{path} within its TTL");
    }
    // Playlist TTL is 1 s by default; segments live for a day.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for path in ["/live/index.m3u8", "/live/7.ts"] {
        assert_eq!(get(proxy.addr, path).await.unwrap().status, 200);
    }
    assert_eq!(origin.hits("/live/index.m3u8"), 2);
    assert_eq!(origin.hits("/live/7.ts"), 1);
}

#[tokio::test]
async fn a_thousand_concurrent_misses_cost_one_origin_request_and_all_get_the_body() {
    let origin = Origin::start().await;
    let body = pattern(256 * 1024, 9);
    origin.set(
        "/live/burst.ts",
        Reply::ok(body.clone()).delay(Duration::from_millis(200)),
    );
    let proxy = Proxy::start(&config(&origin)).await;

    let started = Instant::now();
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let t = Instant::now();
                (get(addr, "/live/burst.ts").await, t.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        let (resp, latency) = client.await.unwrap();
        let resp = resp.unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.complete);
        assert!(resp.body == body, "a client got a different body");
        latencies.push(latency);
    }
    assert_eq!(origin.hits("/live/burst.ts"), 1);
    let max = latencies.iter().max().unwrap();
    eprintln!(
        "1000 clients: wall {:?}, max latency {max:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_aborted_fill_is_not_served_as_complete_nor_cached() {
    let origin = Origin::start().await;
    origin.set(
        "/live/broken.ts",
        Reply::ok(pattern(200_000, 3)).fault(Fault::DropMidBody),
    );
    let proxy = Proxy::start(&config(&origin)).await;

    let first = get(proxy.addr, "/live/broken.ts").await.unwrap();
    assert!(
        !first.complete || first.status >= 500,
        "truncated body served as complete: status {}, {} bytes",
        first.status,
        first.body.len()
    );

    origin.set("/live/broken.ts", Reply::ok(pattern(200_000, 4)));
    let second = get(proxy.addr, "/live/broken.ts").await.unwrap();
    assert_eq!(second.status, 200);
    assert!(second.complete);
    assert!(
        second.body == pattern(200_000, 4),
        "the partial fill was cached"
    );
    assert_eq!(origin.hits("/live/broken.ts"), 2);
}

#[tokio::test]
async fn conditional_and_range_requests_are_answered_from_cache() {
    let origin = Origin::start().await;
    origin.set(
        "/live/2.ts",
        Reply::ok(pattern(4096, 2)).header("etag", "\"v2\""),
    );
    let proxy = Proxy::start(&config(&origin)).await;
    assert_eq!(get(proxy.addr, "/live/2.ts").await.unwrap().status, 200);

    let not_modified = get_with(proxy.addr, "/live/2.ts", &[("if-none-match", "\"v2\"")])
        .await
        .unwrap();
    assert_eq!(not_modified.status, 304);

    let range = get_with(proxy.addr, "/live/2.ts", &[("range", "bytes=100-199")])
        .await
        .unwrap();
    assert_eq!(range.status, 206);
    assert_eq!(range.body, pattern(4096, 2)[100..200].to_vec());

    let head = request(proxy.addr, "HEAD", "/live/2.ts", &[])
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("4096"));
    assert_eq!(origin.hits("/live/2.ts"), 1);
}

#[tokio::test]
async fn a_missing_segment_is_negatively_cached_for_a_second() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin)).await;
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/live/99.ts").await.unwrap().status, 404);
    }
    assert_eq!(origin.hits("/live/99.ts"), 1);
}

#[tokio::test]
async fn the_forwarded_request_carries_x_forwarded_for_and_via() {
    let origin = Origin::start().await;
    origin.set("/live/3.ts", Reply::ok("x"));
    let proxy = Proxy::start(&config(&origin)).await;
    get_with(
        proxy.addr,
        "/live/3.ts",
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await
    .unwrap();
    let seen = origin.seen();
    let request = seen.last().unwrap();
    assert_eq!(
        request.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert!(request
        .header("via")
        .is_some_and(|v| v.contains("parallax")));
}

#[tokio::test]
async fn stale_while_revalidate_serves_the_old_object_at_once_and_refreshes_it_once() {
    let origin = Origin::start().await;
    origin.set(
        "/live/swr.ts",
        Reply::ok("v1").header("cache-control", "max-age=1, stale-while-revalidate=30"),
    );
    let proxy = Proxy::start(&config(&origin)).await;
    assert_eq!(get(proxy.addr, "/live/swr.ts").await.unwrap().body, b"v1");

    // The next version is slow to produce; clients must not wait for it.
    origin.set(
        "/live/swr.ts",
        Reply::ok("v2")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(1500)),
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let started = Instant::now();
                (get(addr, "/live/swr.ts").await.unwrap(), started.elapsed())
            })
        })
        .collect();
    for client in clients {
        let (resp, latency) = client.await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"v1");
        assert_eq!(resp.header("x-cache"), Some("STALE"));
        assert!(latency < Duration::from_millis(1000), "{latency:?}");
    }
    // One background revalidation, whatever the number of stale hits.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(origin.hits("/live/swr.ts"), 2);
    let fresh = get(proxy.addr, "/live/swr.ts").await.unwrap();
    assert_eq!(fresh.body, b"v2");
    assert_eq!(fresh.header("x-cache"), Some("HIT"));
}

#[tokio::test]
async fn stale_if_error_serves_the_old_object_when_the_origin_fails() {
    let origin = Origin::start().await;
    origin.set(
        "/live/sie.ts",
        Reply::ok("v1").header("cache-control", "max-age=1, stale-if-error=60"),
    );
    let proxy = Proxy::start(&config(&origin)).await;
    assert_eq!(get(proxy.addr, "/live/sie.ts").await.unwrap().body, b"v1");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The origin answers 500: the stale copy is served instead.
    origin.set("/live/sie.ts", Reply::status(500));
    let resp = get(proxy.addr, "/live/sie.ts").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"v1");
    assert_eq!(resp.header("x-cache"), Some("STALE"));

    // The origin is gone altogether: same.
    origin.stop();
    let resp = get(proxy.addr, "/live/sie.ts").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"v1");
}

#[tokio::test]
async fn an_origin_5xx_is_retried_on_the_backup_before_the_client_sees_anything() {
    let primary = Origin::start().await;
    let backup = Origin::start().await;
    primary.set("/live/5.ts", Reply::status(503));
    backup.set("/live/5.ts", Reply::ok("from backup"));
    let proxy = Proxy::start(&upstream_config(&primary, Some(&backup))).await;

    let resp = get(proxy.addr, "/live/5.ts").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"from backup");
    assert_eq!(primary.hits("/live/5.ts"), 1);
    assert_eq!(backup.hits("/live/5.ts"), 1);
}

#[tokio::test]
async fn a_5xx_from_both_origins_reaches_the_client_and_is_negatively_cached() {
    let primary = Origin::start().await;
    let backup = Origin::start().await;
    primary.set("/live/6.ts", Reply::status(502));
    backup.set("/live/6.ts", Reply::status(503));
    let proxy = Proxy::start(&upstream_config(&primary, Some(&backup))).await;

    for _ in 0..3 {
        let resp = get(proxy.addr, "/live/6.ts").await.unwrap();
        assert!(resp.status >= 500, "{}", resp.status);
    }
    assert_eq!(primary.hits("/live/6.ts") + backup.hits("/live/6.ts"), 2);
}

#[tokio::test]
async fn coalesced_waiters_stream_the_body_while_it_is_still_arriving() {
    let origin = Origin::start().await;
    let body = pattern(400_000, 8);
    origin.set(
        "/live/slow.ts",
        Reply::ok(body.clone()).stall(Duration::from_millis(3000)),
    );
    // The stall must stay under the origin read timeout, or the fill is (rightly) aborted.
    let proxy = Proxy::start(&format!(
        "{}first_byte_timeout_ms = 10000\n",
        config(&origin)
    ))
    .await;

    let first = tokio::spawn(get(proxy.addr, "/live/slow.ts"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A waiter joining mid-fill gets the first half long before the origin sends the rest.
    let started = Instant::now();
    let mut waiter = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    waiter
        .write_all(b"GET /live/slow.ts HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    while received.len() < 100_000 {
        let n = waiter.read(&mut buf).await.unwrap();
        assert!(n > 0);
        received.extend_from_slice(&buf[..n]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "the waiter saw nothing until the fill completed: {:?}",
        started.elapsed()
    );
    let _ = waiter.read_to_end(&mut received).await;
    let waiter_resp = parse_response(&received, false).unwrap();
    assert!(waiter_resp.complete);
    assert!(waiter_resp.body == body);
    assert!(first.await.unwrap().unwrap().body == body);
    assert_eq!(origin.hits("/live/slow.ts"), 1);
}

#[tokio::test]
async fn waiters_on_an_aborted_fill_never_see_a_complete_looking_body() {
    let origin = Origin::start().await;
    origin.set(
        "/live/abort.ts",
        Reply::ok(pattern(300_000, 6))
            .delay(Duration::from_millis(200))
            .fault(Fault::DropMidBody),
    );
    let proxy = Proxy::start(&config(&origin)).await;

    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(proxy.addr, "/live/abort.ts")))
        .collect();
    for client in clients {
        // A reset before any response is also an acceptable outcome.
        if let Ok(resp) = client.await.unwrap() {
            assert!(
                !resp.complete || resp.status >= 500,
                "truncated body presented as complete: status {}, {} bytes",
                resp.status,
                resp.body.len()
            );
        }
    }

    origin.set("/live/abort.ts", Reply::ok(pattern(300_000, 7)));
    let after = get(proxy.addr, "/live/abort.ts").await.unwrap();
    assert_eq!(after.status, 200);
    assert!(after.complete);
    assert!(
        after.body == pattern(300_000, 7),
        "a partial fill was cached"
    );
}

#[tokio::test]
async fn an_expired_object_with_a_validator_is_revalidated_with_a_conditional_request() {
    let origin = Origin::start().await;
    origin.set(
        "/live/etag.ts",
        Reply::ok("v1")
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\""),
    );
    let proxy = Proxy::start(&config(&origin)).await;
    assert_eq!(get(proxy.addr, "/live/etag.ts").await.unwrap().body, b"v1");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The origin's copy has not changed: it answers the conditional request with 304.
    let resp = get(proxy.addr, "/live/etag.ts").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"v1");
    assert_eq!(resp.header("x-cache"), Some("REVALIDATED"));
    let seen = origin.seen();
    let revalidation = seen.last().unwrap();
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
    assert_eq!(
        get(proxy.addr, "/live/etag.ts")
            .await
            .unwrap()
            .header("x-cache"),
        Some("HIT")
    );
}
