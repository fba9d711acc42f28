//! End-to-end: encoder → redundant origin pair → proxy → viewer, with the shipped binaries.
//!
//! The built-in publisher pushes the same clip to two `origin` processes (as an encoder
//! configured with two RTMP outputs does); a `proxy` process has origin A as primary and B as
//! backup; a viewer loop in the test behaves like an HLS player (reload the playlist every half
//! target duration, fetch each new segment once). Origin A is SIGKILLed mid-stream, a crash
//! with no chance to say goodbye, and the viewer must not notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../origin/tests/support/mod.rs"]
#[allow(unused_imports)]
mod origin_support;
#[path = "../proxy/tests/support/ports.rs"]
mod ports;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use origin_support::{ffprobe, parse_playlist, require_ffmpeg, temp_dir, wait_for};
use ports::free_port;
use tokio::time::Instant;

/// A shipped binary built by `cargo test --workspace` next to this test's directory.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/chain-<hash> → target/<profile>/<name>
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `bash scripts/test.sh` (or `cargo test --workspace`), \
         which builds every binary first",
        path.display()
    );
    path
}

/// A child process, SIGKILLed on drop so a failing test leaves nothing running.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, program: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_listening(port: u16, what: &str) {
    wait_for(what, Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

struct Origin {
    proc: Proc,
    rtmp: u16,
    http: u16,
}

async fn start_origin(dir: &Path, name: &str) -> Origin {
    let (rtmp, http) = (free_port(), free_port());
    let config = dir.join(format!("origin-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[rtmp]\nlisten = \"127.0.0.1:{rtmp}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n",
            dir.join(format!("data-{name}"))
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        dir,
        &format!("origin-{name}"),
        &bin("origin"),
        &["--config", config.to_str().unwrap()],
    );
    wait_listening(rtmp, "origin RTMP listener").await;
    wait_listening(http, "origin HTTP listener").await;
    Origin { proc, rtmp, http }
}

/// The proxy with A as primary and B as backup, active checks on the live playlist.
async fn start_proxy(dir: &Path, primary: u16, backup: u16) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:{port}\"\n\
             [[upstreams]]\nname = \"live\"\n\
             primary.address = \"127.0.0.1:{primary}\"\nbackup.address = \"127.0.0.1:{backup}\"\n\
             health_check.path = \"/live/e2e/index.m3u8\"\n\
             [server]\nthreads = 2\ndrain_secs = 0\ngrace_period_secs = 1\n\
             graceful_shutdown_timeout_secs = 1\npid_file = {:?}\nupgrade_sock = {:?}\n",
            dir.join("proxy.pid"),
            dir.join("proxy-upgrade.sock"),
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        dir,
        "proxy",
        &bin("proxy"),
        &["--config", config.to_str().unwrap()],
    );
    wait_for("proxy /healthz", Duration::from_secs(30), || async move {
        match fetch(&format!("http://127.0.0.1:{port}/healthz")).await {
            Ok((200, _)) => Some(()),
            _ => None,
        }
    })
    .await;
    (proc, port)
}

/// GET with a 5 s bound; a transport error or timeout is returned, not panicked on, because
/// counting failed requests is the point of the test.
async fn fetch(url: &str) -> Result<(u16, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(url).body(Empty::new()).unwrap();
    let work = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "no response within 5 s".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_keep_playing_through_the_proxy_when_the_primary_origin_is_killed_mid_stream() {
    require_ffmpeg();
    let dir = temp_dir("e2e-chain");
    let mut a = start_origin(&dir, "a").await;
    let b = start_origin(&dir, "b").await;
    let origin = bin("origin");
    let url = |port: u16| format!("rtmp://127.0.0.1:{port}/live/e2e");
    let _publish_a = Proc::spawn(&dir, "publish-a", &origin, &["publish", &url(a.rtmp)]);
    let _publish_b = Proc::spawn(&dir, "publish-b", &origin, &["publish", &url(b.rtmp)]);
    let (proxy, port) = start_proxy(&dir, a.http, b.http).await;
    let playlist_url = format!("http://127.0.0.1:{port}/live/e2e/index.m3u8");

    // A player starts once the playlist lists a few segments.
    wait_for(
        "three segments via the proxy",
        Duration::from_secs(30),
        || {
            let playlist_url = playlist_url.clone();
            async move {
                match fetch(&playlist_url).await {
                    Ok((200, body)) => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        (parse_playlist(&text).entries.len() >= 3).then_some(())
                    }
                    _ => None,
                }
            }
        },
    )
    .await;

    let started = Instant::now();
    let kill_at = Duration::from_secs(8);
    let run_for = Duration::from_secs(22);
    let mut killed = false;
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut last_sequence = 0;
    let mut fetched = BTreeSet::new();
    let mut fetched_after_kill = Vec::new();
    let mut compared_with_backup = false;
    while started.elapsed() < run_for {
        if !killed && started.elapsed() >= kill_at {
            a.proc.kill();
            killed = true;
        }
        let t = Instant::now();
        let playlist = fetch(&playlist_url).await;
        slowest = slowest.max(t.elapsed());
        let text = match playlist {
            Ok((200, body)) => String::from_utf8_lossy(&body).into_owned(),
            other => {
                failures.push(format!("playlist at {:?}: {other:?}", started.elapsed()));
                continue;
            }
        };
        let playlist = parse_playlist(&text);
        assert!(!playlist.ended, "the live stream must not end:\n{text}");
        assert!(
            playlist.media_sequence >= last_sequence,
            "media sequence went backwards ({last_sequence} → {}):\n{text}",
            playlist.media_sequence
        );
        last_sequence = playlist.media_sequence;
        for entry in &playlist.entries {
            if !fetched.insert(entry.uri.clone()) {
                continue;
            }
            let segment_url = format!("http://127.0.0.1:{port}/live/e2e/{}", entry.uri);
            let t = Instant::now();
            let segment = fetch(&segment_url).await;
            slowest = slowest.max(t.elapsed());
            match segment {
                Ok((200, body)) if !body.is_empty() => {
                    if killed {
                        fetched_after_kill.push((entry.uri.clone(), body));
                    } else if !compared_with_backup {
                        // Interchangeable HLS: what origin A produced (served via the proxy)
                        // is byte for byte what origin B serves under the same URI.
                        let direct = format!("http://127.0.0.1:{}/live/e2e/{}", b.http, entry.uri);
                        let (status, from_b) = fetch(&direct).await.unwrap();
                        assert_eq!(status, 200, "{direct}");
                        assert!(body == from_b, "{} differs between the origins", entry.uri);
                        compared_with_backup = true;
                    }
                }
                other => failures.push(format!(
                    "{} at {:?}: {:?}",
                    entry.uri,
                    started.elapsed(),
                    other.map(|(s, b)| (s, b.len()))
                )),
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }

    assert!(
        failures.is_empty(),
        "viewer saw failures: {failures:#?}\nproxy log:\n{}",
        proxy.log()
    );
    assert!(
        compared_with_backup,
        "no segment was compared across origins"
    );
    assert!(
        fetched_after_kill.len() >= 4,
        "the stream kept advancing after the kill: only {} new segments",
        fetched_after_kill.len()
    );
    assert!(
        slowest < Duration::from_millis(1500),
        "slowest request took {slowest:?}"
    );
    // Segments served by the backup after the failover are real media.
    let (uri, body) = fetched_after_kill.last().unwrap();
    let path = dir.join(uri);
    std::fs::write(&path, body).unwrap();
    let probe = tokio::task::spawn_blocking(move || ffprobe(&path))
        .await
        .unwrap();
    assert_eq!(probe.codecs, vec!["aac".to_owned(), "h264".to_owned()]);
    assert!((probe.duration_secs - 2.0).abs() < 0.2, "{probe:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
