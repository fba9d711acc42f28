//! Live HLS end to end: real publishers (the built-in one, contiguous and interleaving, and the
//! ffmpeg command operators use) into an in-process origin, checked with a real HTTP client,
//! ffprobe and ffmpeg; plus the HTTP semantics a cache relies on and hostile RTMP peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use parallax_origin::publisher::{self, PublishOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Waits until the live playlist of `stream` lists at least `n` segments.
async fn wait_for_segments(origin: &TestOrigin, stream: &str, n: usize) -> Playlist {
    let url = origin.url(&format!("/live/{stream}/index.m3u8"));
    wait_for(
        &format!("{n} segments in {url}"),
        Duration::from_secs(30),
        || async {
            let r = get(&url).await;
            (r.status == 200)
                .then(|| parse_playlist(&r.text()))
                .filter(|p| p.entries.len() >= n)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clip_publish_serves_valid_hls_with_cache_headers() {
    require_ffmpeg();
    let origin = TestOrigin::start(|_| {}).await;
    let work = temp_dir("serve");

    // Two publishers at once: the plain one, and one interleaving audio chunks inside video
    // messages the way OBS 30+ / FFmpeg 6.1+ do.
    let mut plain = PublishOptions::new(origin.rtmp_url("plain"));
    plain.loops = Some(1);
    let mut inter = PublishOptions::new(origin.rtmp_url("inter"));
    inter.loops = Some(1);
    inter.interleave_chunks = true;
    let plain = tokio::spawn(publisher::publish(plain));
    let inter = tokio::spawn(publisher::publish(inter));

    for stream in ["plain", "inter"] {
        let playlist = wait_for_segments(&origin, stream, 3).await;
        assert_eq!(playlist.target_duration, 2);
        assert!(!playlist.ended && !playlist.vod);
        for e in &playlist.entries {
            assert!(
                e.program_date_time.is_some(),
                "PROGRAM-DATE-TIME on {}",
                e.uri
            );
            assert!(!e.uri.contains('/'), "relative segment URI {}", e.uri);
            let probe = probe_url(&origin.url(&format!("/live/{stream}/{}", e.uri)), &work).await;
            assert_eq!(probe.codecs, ["aac", "h264"], "{stream}/{}", e.uri);
            let extinf: f64 = e.extinf.parse().unwrap();
            assert!((extinf - 2.0).abs() < 0.1, "EXTINF {extinf} ≈ target 2 s");
            assert!(
                (probe.duration_secs - extinf).abs() < 0.25,
                "{stream}/{} lasts {} s, EXTINF says {extinf}",
                e.uri,
                probe.duration_secs
            );
        }
    }

    // Headers per type.
    let playlist_url = origin.url("/live/plain/index.m3u8");
    let p = get(&playlist_url).await;
    assert_eq!(p.header("content-type"), "application/vnd.apple.mpegurl");
    assert_eq!(p.header("cache-control"), "max-age=1");
    assert_eq!(p.header("access-control-allow-origin"), "*");
    assert_eq!(p.header("content-length"), p.body.len().to_string());
    assert!(!p.header("last-modified").is_empty());
    let first = parse_playlist(&p.text()).entries[0].uri.clone();
    let seg_url = origin.url(&format!("/live/plain/{first}"));
    let s = get(&seg_url).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), "video/mp2t");
    assert_eq!(s.header("cache-control"), "max-age=1209600, immutable");
    assert_eq!(s.header("content-length"), s.body.len().to_string());
    assert_eq!(s.body.len() % 188, 0, "whole TS packets");
    let etag = s.header("etag").to_owned();
    assert!(etag.starts_with('"'));

    // Conditional, HEAD and Range.
    let nm = request("GET", &seg_url, &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    let head = request("HEAD", &seg_url, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), s.body.len().to_string());
    assert_eq!(head.header("etag"), etag);
    let range = request("GET", &seg_url, &[("range", "bytes=188-375")]).await;
    assert_eq!(range.status, 206);
    assert_eq!(&range.body[..], &s.body[188..376]);
    assert_eq!(
        range.header("content-range"),
        format!("bytes 188-375/{}", s.body.len())
    );
    let suffix = request("GET", &seg_url, &[("range", "bytes=-188")]).await;
    assert_eq!(suffix.status, 206);
    assert_eq!(&suffix.body[..], &s.body[s.body.len() - 188..]);
    let past = format!("bytes={}-", s.body.len());
    let bad = request("GET", &seg_url, &[("range", &past)]).await;
    assert_eq!(bad.status, 416);
    assert_eq!(
        bad.header("content-range"),
        format!("bytes */{}", s.body.len())
    );

    // Not there yet, unknown, wrong method, escapes.
    let missing = get(&origin.url("/live/plain/999999999.ts")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("cache-control"), "max-age=1");
    assert_eq!(
        get(&origin.url("/live/nobody/index.m3u8")).await.status,
        404
    );
    assert_eq!(get(&origin.url("/vod/nobody/")).await.status, 404);
    let post = request("POST", &playlist_url, &[]).await;
    assert_eq!(post.status, 405);
    for evil in [
        "/live/../../etc/passwd",
        "/live/%2e%2e/%2e%2e/etc/passwd",
        "/live/plain/..%2f..%2f..%2fetc%2fpasswd",
        "/live/plain%2f..%2f..%2f/index.m3u8",
        "/live/..%5c..%5c/index.m3u8",
        "/live/./index.m3u8",
    ] {
        assert_eq!(raw_request(origin.http, evil).await, 404, "{evil}");
    }

    let plain = plain.await.unwrap().unwrap();
    let inter = inter.await.unwrap().unwrap();
    assert!(plain.video_frames > 0 && inter.video_frames > 0);
    origin.stop().await;
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_command_from_the_issue_publishes_and_plays() {
    require_ffmpeg();
    let origin = TestOrigin::start(|c| c.hls.reconnect_grace_ms = 500).await;
    // The operators' command from the issue, bounded with -t.
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine"])
        .args([
            "-c:v",
            "libx264",
            "-x264opts",
            "keyint=60:min-keyint=60:scenecut=-1",
        ])
        .args(["-c:a", "aac", "-t", "8", "-f", "flv"])
        .arg(origin.rtmp_url("test"))
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("ffmpeg published within 60 s")
        .unwrap();
    assert!(status.success(), "ffmpeg publish: {status}");

    let url = origin.url("/live/test/index.m3u8");
    let playlist = wait_for(
        "ENDLIST after the grace",
        Duration::from_secs(10),
        || async { Some(parse_playlist(&get(&url).await.text())).filter(|p| p.ended) },
    )
    .await;
    assert!(playlist.entries.len() >= 3, "{playlist:?}");
    ffmpeg_decodes(&url).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_with_an_unsupported_codec_is_told_why_and_disconnected() {
    require_ffmpeg();
    let origin = TestOrigin::start(|_| {}).await;
    // Sorenson H.263 + MP3: what FLV carried before H.264.
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine"])
        .args(["-c:v", "flv1", "-c:a", "libmp3lame", "-t", "5", "-f", "flv"])
        .arg(origin.rtmp_url("old"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("ffmpeg gave up within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the publish must fail");
    assert!(
        stderr.contains("Server error: unsupported codec: Sorenson H.263"),
        "ffmpeg is told the codec: {stderr}"
    );
    assert_eq!(get(&origin.url("/live/old/index.m3u8")).await.status, 404);
    origin.stop().await;
}

/// Handshakes as a client; returns the socket ready for chunks.
async fn rtmp_handshake(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    s.write_all(&c0c1).await.unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 1536 + 1536];
    s.read_exact(&mut s0s1s2).await.unwrap();
    // C2 echoes S1.
    s.write_all(&s0s1s2[1..1537]).await.unwrap();
    s
}

/// Whether the server closes `s` within `within` (reads until EOF or error).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_disconnected_while_a_good_stream_keeps_serving() {
    let origin = TestOrigin::start(|c| {
        c.rtmp.handshake_timeout_ms = 1_000;
        c.rtmp.keyframe_timeout_ms = 1_500;
    })
    .await;
    let mut good = PublishOptions::new(origin.rtmp_url("good"));
    good.loops = Some(1);
    let good = tokio::spawn(publisher::publish(good));

    // Random bytes instead of a handshake.
    let mut s = tokio::net::TcpStream::connect(origin.rtmp).await.unwrap();
    s.write_all(&[0x42; 3000]).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "random bytes"
    );

    // Truncated handshake: C0 and half of C1, then silence.
    let mut s = tokio::net::TcpStream::connect(origin.rtmp).await.unwrap();
    s.write_all(&[3u8; 700]).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "truncated handshake"
    );

    // A 2 GiB chunk size: Set Chunk Size (type 1) on chunk stream 2.
    let mut s = rtmp_handshake(origin.rtmp).await;
    let mut msg = vec![0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0];
    msg.extend(0x8000_0000u32.to_be_bytes());
    s.write_all(&msg).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "2 GiB chunk size"
    );

    // Wrong application name.
    let err = parallax_origin::publisher::Publisher::connect(
        &parallax_origin::publisher::RtmpUrl::parse(&format!("rtmp://{}/other/x", origin.rtmp))
            .unwrap(),
        false,
    )
    .await
    .err()
    .expect("connect to an unknown app is refused");
    assert!(
        err.to_string().contains("reject") || err.to_string().contains("closed"),
        "{err}"
    );

    // HEVC video (FLV codec id 12): refused with an error status, connection closed.
    let mut hevc = parallax_origin::publisher::Publisher::connect(
        &parallax_origin::publisher::RtmpUrl::parse(&origin.rtmp_url("hevc")).unwrap(),
        false,
    )
    .await
    .unwrap();
    let refused = async {
        for ts in 0..200u32 {
            hevc.send_video(
                ts * 33,
                bytes::Bytes::from_static(&[0x1c, 0x01, 0, 0, 0, 1, 2, 3]),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, parallax_origin::publisher::PublishError>(())
    };
    let err = refused
        .await
        .expect_err("HEVC publisher must be disconnected");
    eprintln!("HEVC publisher saw: {err}");

    // Audio only, never a keyframe: closed after keyframe_timeout_ms.
    let mut audio_only = parallax_origin::publisher::Publisher::connect(
        &parallax_origin::publisher::RtmpUrl::parse(&origin.rtmp_url("nokey")).unwrap(),
        false,
    )
    .await
    .unwrap();
    // AAC sequence header (AAC LC, 44.1 kHz, stereo), then raw AAC frames.
    audio_only
        .send_audio(0, bytes::Bytes::from_static(&[0xaf, 0x00, 0x12, 0x10]))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let closed = async {
        for ts in 0..400u32 {
            audio_only
                .send_audio(
                    ts * 23,
                    bytes::Bytes::from_static(&[0xaf, 0x01, 0x21, 0x00]),
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, parallax_origin::publisher::PublishError>(())
    };
    assert!(
        closed.await.is_err(),
        "a publish without keyframes must be closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "closed by the keyframe timeout, not for its audio"
    );

    // The good stream was never disturbed.
    let playlist = wait_for_segments(&origin, "good", 2).await;
    assert!(!playlist.ended);
    good.await.unwrap().unwrap();
    origin.stop().await;
}
