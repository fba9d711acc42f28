//! End-to-end: encoder → redundant origin pair → proxy → viewer, with the shipped binaries.
//!
//! The built-in publisher pushes the same clip to two `origin` processes (as an encoder
//! configured with two RTMP outputs does); a `proxy` process has origin A as primary and B as
//! backup; a viewer loop in the test behaves like an HLS player (reload the playlist every half
//! target duration, fetch each new segment once). Origin A is SIGKILLed mid-stream, a crash
//! with no chance to say goodbye, and the viewer must not notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::origin_support::{ffprobe, parse_playlist, require_ffmpeg, temp_dir};
use support::{fetch, start_proxy, start_published_pair, wait_for_segments};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_keep_playing_through_the_proxy_when_the_primary_origin_is_killed_mid_stream() {
    require_ffmpeg();
    let dir = temp_dir("e2e-chain");
    let mut pair = start_published_pair(&dir, "e2e").await;
    let (a, b) = (&mut pair.a, &pair.b);
    let (proxy, port) = start_proxy(&dir, a.http, b.http, "e2e", "").await;
    let playlist_url = format!("http://127.0.0.1:{port}/live/e2e/index.m3u8");

    // A player starts once the playlist lists a few segments.
    wait_for_segments(&playlist_url, 3).await;

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
