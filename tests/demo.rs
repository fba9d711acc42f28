//! End-to-end: the README's demo command, `scripts/demo.sh`, as a user runs it.
//!
//! It must bring up two origins, the proxy with the three shipped policy modules and the
//! player, print working URLs (here with token auth on, so the printed URL carries a signed
//! token), start from a clean data dir, and stop everything on Ctrl-C (SIGINT).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::origin_support::{require_ffmpeg, temp_dir};
use support::ports::free_port;
use support::{bin, fetch};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_the_whole_system_prints_working_urls_and_stops_on_ctrl_c() {
    require_ffmpeg();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = temp_dir("e2e-demo");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A leftover from a "previous run": the demo must start clean.
    std::fs::write(data.join("leftover"), "old").unwrap();
    let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let token = "demo-admin-token-0123456789";
    let mut demo = tokio::process::Command::new("bash")
        .arg(repo.join("scripts/demo.sh"))
        .env("PARALLAX_DEMO_DIR", &data)
        .env("DEMO_BIN", bin("proxy").parent().unwrap())
        .env("DEMO_TOKEN_AUTH", "1")
        .env("PROXY_PORT", ports[0].to_string())
        .env("ADMIN_PORT", ports[1].to_string())
        .env("METRICS_PORT", ports[2].to_string())
        .env("ORIGIN_A_HTTP", ports[3].to_string())
        .env("ORIGIN_B_HTTP", ports[4].to_string())
        .env("ORIGIN_A_RTMP", ports[5].to_string())
        .env("ORIGIN_B_RTMP", ports[6].to_string())
        .env("ADMIN_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = demo.id().unwrap() as i32;
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let up = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("Ctrl-C stops everything");
            printed.push(line);
            if done {
                return;
            }
        }
        panic!("the demo exited early:\n{}", printed.join("\n"));
    };
    // Guest modules may need building (a few minutes on a cold target/wasm-guests).
    tokio::time::timeout(Duration::from_secs(600), up)
        .await
        .expect("the demo did not come up within 600 s");
    let url = |label: &str| -> String {
        printed
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", printed.join("\n")))
            .trim()
            .to_owned()
    };
    let player = url("player (360°/flat)");
    let playlist = url("playlist via proxy");
    assert!(
        !data.join("leftover").exists(),
        "the data dir was not wiped"
    );

    // The printed playlist URL plays: signed token accepted, segment URIs made absolute by
    // playlist-rewrite, the region cookie from region-steer.
    let (status, body) = fetch(&playlist).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{playlist}: {text}");
    let base = format!("http://127.0.0.1:{}/live/demo/", ports[0]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&base) && l.ends_with(".ts")),
        "{text}"
    );
    // Without the token, token-auth refuses.
    let unsigned = format!("http://127.0.0.1:{}/live/demo/index.m3u8", ports[0]);
    assert_eq!(fetch(&unsigned).await.unwrap().0, 403);
    // The player page.
    let (status, page) = fetch(&player).await.unwrap();
    assert_eq!(status, 200, "{player}");
    assert!(String::from_utf8_lossy(&page).contains("Parallax"));
    // The admin API lists the three modules as loaded.
    let modules = curl_admin(ports[1], token, "/modules").await;
    for file in ["token-auth", "region-steer", "playlist-rewrite"] {
        assert!(
            modules.contains(&format!("\"file\":\"{file}\"")),
            "{modules}"
        );
    }

    // Ctrl-C, as a terminal sends it: SIGINT to the whole process group. Everything stops and
    // the ports are released.
    let status = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo did not stop within 30 s of Ctrl-C")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for port in &ports {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err(),
            "port {port} still open after Ctrl-C"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn curl_admin(port: u16, token: &str, path: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
