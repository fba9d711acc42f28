//! End-to-end: `proxy loadtest` against the real chain (publisher → origins → proxy).
//!
//! Simulated viewers must play the stream with no errors, the summary must show the proxy's
//! offload (origin requests per viewer from its metrics), the HTML report must carry its charts,
//! and the load tester must only contact the hosts it was given.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::origin_support::{require_ffmpeg, temp_dir};
use support::ports::free_port;
use support::{bin, start_proxy, start_published_pair, wait_for_segments, wait_listening, Proc};

/// Runs `proxy loadtest` with `args`, bounded by the test's own timeout.
async fn loadtest(args: Vec<String>) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin("proxy"))
            .arg("loadtest")
            .args(&args)
            .output()
            .unwrap()
    });
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("proxy loadtest ran past its duration")
        .unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn by_type<'a>(summary: &'a Value, kind: &str) -> &'a Value {
    summary["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} row in {summary:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_viewers_play_through_the_proxy_and_only_reach_named_hosts() {
    require_ffmpeg();
    let dir = temp_dir("e2e-loadtest");
    let pair = start_published_pair(&dir, "load").await;
    let (a, b) = (&pair.a, &pair.b);
    let metrics_port = free_port();
    let (proxy, port) = start_proxy(
        &dir,
        a.http,
        b.http,
        "load",
        &format!("[metrics]\naddr = \"127.0.0.1:{metrics_port}\""),
    )
    .await;
    let playlist = format!("http://127.0.0.1:{port}/live/load/index.m3u8");
    wait_for_segments(&playlist, 3).await;

    // 1. Viewers of the media playlist, with the proxy's metrics.
    let viewers = 100;
    let report = dir.join("report.html");
    let summary_path = dir.join("summary.json");
    let out = loadtest(vec![
        playlist.clone(),
        format!("--viewers={viewers}"),
        "--ramp-up=2s".into(),
        "--duration=10s".into(),
        format!("--metrics=http://127.0.0.1:{metrics_port}/metrics"),
        format!("--report={}", report.display()),
        format!("--json={}", summary_path.display()),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest failed: {stdout}\n{stderr}\nproxy log:\n{}",
        proxy.log()
    );
    assert!(stdout.contains("errors: none"), "{stdout}");
    assert!(stdout.contains("per viewer"), "{stdout}");
    // The progress line went to stderr while it ran (every 5 s when not a terminal).
    assert!(stderr.contains("viewers 100/100"), "{stderr}");
    let summary = json(&summary_path);
    assert_eq!(summary["viewers"], viewers);
    assert_eq!(summary["peak_viewers"], viewers);
    assert_eq!(summary["errors"], 0, "{summary:#}");
    // Each viewer joins three segments from the live edge, then follows it for ~8 s.
    let segments = by_type(&summary, "segment");
    assert!(
        segments["requests"].as_u64().unwrap() >= 3 * viewers,
        "{segments:#}"
    );
    assert!(segments["bytes"].as_u64().unwrap() > 10_000 * 3 * viewers);
    // Reloads follow RFC 8216 §6.3.4 (every 1-2 s for a 2 s target duration), not a tight loop.
    let reloads = by_type(&summary, "playlist")["requests"].as_u64().unwrap();
    assert!(
        (4 * viewers..=11 * viewers).contains(&reloads),
        "{reloads} playlist loads by {viewers} viewers in 10 s"
    );
    // The proxy coalesced: the origin saw a small fraction of a request per viewer.
    let per_viewer = summary["origin_requests_per_viewer"].as_f64().unwrap();
    assert!(
        per_viewer > 0.0 && per_viewer < 0.5,
        "{per_viewer} origin requests per viewer"
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for chart in [
        "Response time over time",
        "Response-time percentiles",
        "Throughput",
        "Active viewers",
    ] {
        assert!(html.contains(chart), "report lacks {chart:?}");
    }
    assert!(html.matches("<polyline").count() >= 8);

    // 2. A multivariant playlist on another server: one variant on the proxy, one on a host
    //    the operator did not name. That host is never contacted (192.0.2.1 is TEST-NET-1).
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("master.m3u8"),
        format!(
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n{playlist}\n\
             #EXT-X-STREAM-INF:BANDWIDTH=5000000\nhttp://192.0.2.1/hi/index.m3u8\n"
        ),
    )
    .unwrap();
    let site_port = free_port();
    let _site = Proc::spawn(
        &dir,
        "site",
        Path::new("python3"),
        &[
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            site.to_str().unwrap(),
            &site_port.to_string(),
        ],
    );
    wait_listening(site_port, "static file server").await;
    let master = format!("http://127.0.0.1:{site_port}/master.m3u8");
    let common = |variant: &str, json: &Path| {
        vec![
            master.clone(),
            "--viewers=10".into(),
            "--ramp-up=1s".into(),
            "--duration=5s".into(),
            format!("--variant={variant}"),
            format!("--json={}", json.display()),
            "--quiet".into(),
        ]
    };
    // The lowest variant is on the proxy: allowed by name, played without errors.
    let lowest = dir.join("lowest.json");
    let mut args = common("lowest", &lowest);
    args.push(format!("--allow-host=127.0.0.1:{port}"));
    let out = loadtest(args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&lowest);
    assert_eq!(summary["errors"], 0, "{summary:#}");
    assert_eq!(by_type(&summary, "master")["requests"], 10);
    assert!(by_type(&summary, "segment")["requests"].as_u64().unwrap() >= 30);
    // The highest is off-target: reported, not fetched, and the run fails on its error rate.
    let highest = dir.join("highest.json");
    let mut args = common("highest", &highest);
    args.push(format!("--allow-host=127.0.0.1:{port}"));
    let out = loadtest(args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let summary = json(&highest);
    assert!(
        summary["errors_by_kind"]["off-target uri"]
            .as_u64()
            .unwrap()
            >= 10,
        "{summary:#}"
    );

    // 3. Bad input: a URL that is not a playlist is one clear error, exit status 2.
    let out = loadtest(vec![
        format!("http://127.0.0.1:{port}/healthz"),
        "--viewers=5".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an HLS playlist"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
