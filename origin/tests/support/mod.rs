//! Shared helpers for the origin's integration tests: an in-process origin on 127.0.0.1:0, a
//! tiny HTTP client, playlist parsing, real-time clip pacing and the ffmpeg/ffprobe peers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parallax_origin::publisher::{Clip, Publisher, RtmpUrl, TagKind};
use parallax_origin::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// An origin running in this process.
pub struct TestOrigin {
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestOrigin {
    /// Starts an origin with test defaults (short timeouts, a fresh data dir), adjusted by `f`
    /// (which may point `data_dir` at an earlier origin's, to restart it).
    pub async fn start(f: impl FnOnce(&mut Config)) -> Self {
        init_tracing();
        let fresh = temp_dir("origin");
        let mut config = Config {
            data_dir: fresh.clone(),
            ..Config::default()
        };
        config.hls.reconnect_grace_ms = 1_000;
        f(&mut config);
        let data_dir = config.data_dir.clone();
        if data_dir != fresh {
            let _ = std::fs::remove_dir_all(&fresh);
        }
        let rtmp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (rtmp_addr, http_addr) = (rtmp.local_addr().unwrap(), http.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            parallax_origin::run(rtmp, http, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestOrigin {
            rtmp: rtmp_addr,
            http: http_addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `rtmp://127.0.0.1:PORT/live/<stream>`
    pub fn rtmp_url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.rtmp)
    }

    /// `http://127.0.0.1:PORT<path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Shuts the origin down and waits for it, then deletes its data dir.
    pub async fn stop(self) {
        let data_dir = self.shutdown().await;
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    /// Shuts the origin down gracefully (as SIGTERM does) and waits for it; returns its data
    /// dir, left in place for inspection or a restart.
    pub async fn shutdown(mut self) -> PathBuf {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("origin shut down in time")
                .unwrap();
        }
        std::mem::take(&mut self.data_dir)
    }
}

/// Logs from the origin appear in a failing test's output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "parallax-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A response, fully read.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
}

/// Sends a request with the given method and headers.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("response within 10 s")
    .unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(url: &str) -> Resp {
    request("GET", url, &[]).await
}

/// Sends raw bytes as the request (for paths a client library would normalise).
pub async fn raw_request(addr: SocketAddr, request_line_path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {request_line_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One segment line of a media playlist with the tags that apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub uri: String,
    pub sequence: u64,
    pub discontinuity_sequence: u64,
    pub extinf: String,
    pub discontinuity: bool,
    pub program_date_time: Option<String>,
}

/// A parsed media playlist, checked against RFC 8216's rules as it is parsed.
#[derive(Debug, Clone)]
pub struct Playlist {
    pub target_duration: u64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub entries: Vec<Entry>,
    pub ended: bool,
    pub vod: bool,
}

/// Parses and validates a media playlist (RFC 8216 §4.3): EXTM3U first, one
/// TARGETDURATION, EXTINF before each URI, every EXTINF rounded ≤ TARGETDURATION.
pub fn parse_playlist(text: &str) -> Playlist {
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("#EXTM3U"),
        "playlist must start with #EXTM3U:\n{text}"
    );
    let mut p = Playlist {
        target_duration: 0,
        media_sequence: 0,
        discontinuity_sequence: 0,
        entries: Vec::new(),
        ended: false,
        vod: false,
    };
    let mut target_seen = 0;
    let (mut extinf, mut disc, mut pdt) = (None::<String>, false, None);
    let mut seq = None;
    let mut dseq = 0;
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target_duration = v.parse().unwrap();
            target_seen += 1;
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            assert!(p.entries.is_empty(), "MEDIA-SEQUENCE after a segment");
            p.media_sequence = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:") {
            assert!(
                p.entries.is_empty(),
                "DISCONTINUITY-SEQUENCE after a segment"
            );
            p.discontinuity_sequence = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            extinf = Some(
                v.trim_end_matches(',')
                    .split(',')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        } else if line == "#EXT-X-DISCONTINUITY" {
            disc = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            pdt = Some(v.to_owned());
        } else if line == "#EXT-X-ENDLIST" {
            p.ended = true;
        } else if line == "#EXT-X-PLAYLIST-TYPE:VOD" {
            p.vod = true;
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let s = *seq.get_or_insert(p.media_sequence);
            if p.entries.is_empty() {
                dseq = p.discontinuity_sequence;
            }
            // A segment's discontinuity sequence number counts its own EXT-X-DISCONTINUITY
            // (RFC 8216 §6.2.2: removing the tag increments EXT-X-DISCONTINUITY-SEQUENCE).
            if disc {
                dseq += 1;
            }
            let inf = extinf
                .take()
                .unwrap_or_else(|| panic!("URI {line} without EXTINF"));
            let secs: f64 = inf.parse().unwrap();
            assert!(
                secs.round() as u64 <= p.target_duration,
                "EXTINF {secs} exceeds TARGETDURATION {}",
                p.target_duration
            );
            p.entries.push(Entry {
                uri: line.to_owned(),
                sequence: s + p.entries.len() as u64,
                discontinuity_sequence: dseq,
                extinf: inf,
                discontinuity: std::mem::take(&mut disc),
                program_date_time: pdt.take(),
            });
        }
    }
    assert_eq!(target_seen, 1, "exactly one EXT-X-TARGETDURATION:\n{text}");
    p
}

/// Fails the test with the install command when ffmpeg/ffprobe are missing.
pub fn require_ffmpeg() {
    for tool in ["ffmpeg", "ffprobe"] {
        let ok = Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} not found; install it with: apt-get install -y ffmpeg"
        );
    }
}

/// What ffprobe says about a segment file.
#[derive(Debug)]
pub struct Probe {
    pub codecs: Vec<String>,
    pub duration_secs: f64,
    pub start_time: String,
}

/// Runs `ffprobe -v error` on a file; panics if it prints any error.
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration,start_time",
        ])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe {}: {stderr}",
        path.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut probe = Probe {
        codecs: Vec::new(),
        duration_secs: 0.0,
        start_time: String::new(),
    };
    for line in stdout.lines() {
        match line.split_once('=') {
            Some(("codec_name", c)) => probe.codecs.push(c.to_owned()),
            Some(("duration", d)) => probe.duration_secs = d.parse().unwrap_or(0.0),
            Some(("start_time", s)) => probe.start_time = s.to_owned(),
            _ => {}
        }
    }
    probe.codecs.sort();
    // ffprobe lists each stream twice for MPEG-TS: under its program and on its own.
    probe.codecs.dedup();
    probe
}

/// Downloads `url` to a file in `dir` and ffprobes it.
pub async fn probe_url(url: &str, dir: &Path) -> Probe {
    let resp = get(url).await;
    assert_eq!(resp.status, 200, "{url}");
    let path = dir.join(url.rsplit('/').next().unwrap());
    std::fs::write(&path, &resp.body).unwrap();
    let probe = tokio::task::spawn_blocking(move || ffprobe(&path))
        .await
        .unwrap();
    probe
}

/// Decodes a playlist URL with `ffmpeg -v error -i URL -f null -`; panics on a non-zero exit
/// or any error output.
pub async fn ffmpeg_decodes(url: &str) {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", url, "-f", "null", "-"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("ffmpeg decode finished within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffmpeg -i {url}: {} {stderr}",
        out.status
    );
}

/// Publishes the bundled clip's media with timestamps in `[from_ms, to_ms)`, paced in real
/// time from `from_ms` (as an encoder that was already running when we joined would send it).
/// Returns the publisher so the caller decides how it ends.
pub async fn publish_clip_range(url: &str, from_ms: u32, to_ms: u32) -> Publisher {
    let clip = Clip::bundled().unwrap();
    let mut p = Publisher::connect(&RtmpUrl::parse(url).unwrap(), false)
        .await
        .unwrap();
    p.send_metadata(&clip.metadata).await.unwrap();
    if let Some(v) = &clip.video_config {
        p.send_video(from_ms, v.clone()).await.unwrap();
    }
    if let Some(a) = &clip.audio_config {
        p.send_audio(from_ms, a.clone()).await.unwrap();
    }
    let start = Instant::now();
    for tag in clip
        .tags
        .iter()
        .filter(|t| t.timestamp_ms >= from_ms && t.timestamp_ms < to_ms)
    {
        let at = start + Duration::from_millis(u64::from(tag.timestamp_ms - from_ms));
        tokio::time::sleep_until(at).await;
        match tag.kind {
            TagKind::Video => p
                .send_video(tag.timestamp_ms, tag.data.clone())
                .await
                .unwrap(),
            TagKind::Audio => p
                .send_audio(tag.timestamp_ms, tag.data.clone())
                .await
                .unwrap(),
        }
    }
    p
}
