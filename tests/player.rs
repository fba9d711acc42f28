//! End-to-end: the web player in headless Chromium, through the proxy, while the primary origin
//! dies.
//!
//! Two origins fed by the built-in publisher, the proxy in front with the embedded player on.
//! `tests/browser/play.mjs` (playwright-core driving Debian's Chromium) opens
//! `/player/?url=/live/<stream>/index.m3u8`; once the video has advanced 5 s it prints `PLAYING`,
//! the test SIGKILLs origin A, and the player must keep playing from B with no fatal hls.js
//! error. The driver also checks that the 360° canvas renders (a non-blank WebGL read-back and
//! screenshot) and that the flat toggle shows the video element.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::origin_support::{require_ffmpeg, temp_dir};
use support::{fetch, start_proxy, start_published_pair, wait_for_segments};
use tokio::io::{AsyncBufReadExt, BufReader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Chromium, Node and playwright-core, or a failure naming the command that installs them.
fn require_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = repo().join("player/node_modules/playwright-core/package.json");
    assert!(
        Path::new(&chromium).exists() && playwright.exists(),
        "the browser tests need Chromium ({chromium}) and playwright-core \
         ({}): run `bash scripts/test.sh`, which installs both (apt-get install -y chromium; \
         npm ci in player/)",
        playwright.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_plays_through_the_proxy_in_chromium_and_survives_losing_the_primary() {
    require_ffmpeg();
    require_browser();
    let dir = temp_dir("e2e-player");
    let mut pair = start_published_pair(&dir, "view").await;
    let (a, b) = (&mut pair.a, &pair.b);
    let (proxy, port) = start_proxy(&dir, a.http, b.http, "view", "[player]\nenabled = true").await;
    let base = format!("http://127.0.0.1:{port}");
    let playlist = format!("{base}/live/view/index.m3u8");
    wait_for_segments(&playlist, 3).await;

    // The page itself: served from the binary, not the origin.
    let (status, page) = fetch(&format!("{base}/player/")).await.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("./vendor/hls.min.js"));
    assert_eq!(
        fetch(&format!("{base}/player/nope.js")).await.unwrap().0,
        404
    );

    let shot = dir.join("player.png");
    let mut driver = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser/play.mjs"))
        .arg(format!("--url={base}/player/?url=/live/view/index.m3u8"))
        .arg("--seconds=14")
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--flat")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is not installed: run `bash scripts/test.sh`");
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let mut killed = false;
    let mut result: Option<Value> = None;
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("PLAYING ") && !killed {
                // Mid-play: the primary dies without a goodbye.
                a.proc.kill();
                killed = true;
            } else if let Some(json) = line.strip_prefix("RESULT ") {
                result = Some(serde_json::from_str(json).unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser driver ran past 180 s");
    let status = driver.wait().await.unwrap();
    let result = result.unwrap_or_else(|| panic!("no RESULT line (exit {status})"));
    assert!(killed, "the player never reached PLAYING: {result:#}");
    assert_eq!(
        result["fatalErrors"],
        Value::Array(vec![]),
        "fatal hls.js errors: {result:#}\nproxy log:\n{}",
        proxy.log()
    );
    assert!(
        result["playedSeconds"].as_f64().unwrap() >= 5.0,
        "currentTime advanced less than 5 s: {result:#}"
    );
    // After the kill, playback went on (the proxy failed over to origin B).
    assert!(
        result["advancedAfterMark"].as_f64().unwrap() >= 8.0,
        "playback after losing the primary: {result:#}"
    );
    assert_eq!(result["stillAdvancing"], true, "{result:#}");
    assert_eq!(
        result["canvasNonBlank"], true,
        "the 360° canvas is blank: {result:#}"
    );
    assert_eq!(result["flatToggleOk"], true, "{result:#}");
    assert_eq!(result["ok"], true, "{result:#}");
    assert!(status.success(), "driver exit {status}: {result:#}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let _ = std::fs::remove_dir_all(&dir);
}
