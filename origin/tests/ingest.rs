//! Ingest tests.
//!
//! First the built-in publisher against an RTMP acceptor made of rml_rtmp's `ServerSession`,
//! with and without the `Dechunker` in front of it: a publisher interleaving audio chunks
//! inside video messages (as OBS 30+ and FFmpeg 6.1+ do) reaches rml_rtmp intact through the
//! Dechunker, and does not without it. Then the same publisher against the real origin, and
//! bad input on its RTMP port next to a good publisher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use parallax_origin::publisher::{
    publish, Clip, PublishError, PublishOptions, PublishStats, Publisher, RtmpUrl, TagKind,
};
use parallax_origin::rtmp::dechunk::{write_message_chunks, Dechunker, MessageHeader};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use support::{get, parse_playlist, probe_url, require_ffmpeg, temp_dir, wait_for, TestOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on every test; the longest publishes 20 s of media in real time.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the acceptor saw on one connection.
#[derive(Debug, Default)]
struct Received {
    video: Vec<(u32, Bytes)>,
    audio: Vec<(u32, Bytes)>,
    publish_finished: bool,
    /// Why the acceptor stopped early (a Dechunker or session error).
    error: Option<String>,
}

/// How the acceptor answers a publish request.
#[derive(Clone, Copy)]
enum Answer {
    Accept,
    Reject {
        code: &'static str,
        description: &'static str,
    },
}

/// Accepts one RTMP connection and records the media published on it. The acceptor is what
/// o-server's RTMP server does, reduced to rml_rtmp's session: handshake, optionally the
/// Dechunker, then `ServerSession::handle_input`.
async fn acceptor(dechunk: bool, answer: Answer) -> (String, JoinHandle<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("rtmp://{}/live/test", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut received = Received::default();
        if let Err(e) = serve(&mut socket, dechunk, answer, &mut received).await {
            received.error = Some(e);
        }
        received
    });
    (url, task)
}

async fn serve(
    socket: &mut TcpStream,
    dechunk: bool,
    answer: Answer,
    received: &mut Received,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut handshake = Handshake::new(PeerType::Server);
    let mut input = loop {
        let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during handshake".into());
        }
        match handshake
            .process_bytes(&buf[..n])
            .map_err(|e| e.to_string())?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.unwrap();
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await.unwrap();
                break remaining_bytes;
            }
        }
    };

    let (mut session, initial) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let mut pending = initial;
    let mut dechunker = dechunk.then(Dechunker::new);
    loop {
        let bytes = match dechunker.as_mut() {
            Some(d) => d.push(&input).map_err(|e| e.to_string())?.to_vec(),
            None => input,
        };
        pending.extend(session.handle_input(&bytes).map_err(|e| e.to_string())?);
        while !pending.is_empty() {
            for result in std::mem::take(&mut pending) {
                match result {
                    ServerSessionResult::OutboundResponse(packet) => {
                        socket.write_all(&packet.bytes).await.unwrap();
                    }
                    ServerSessionResult::RaisedEvent(event) => {
                        pending.extend(handle_event(&mut session, event, answer, received)?);
                    }
                    ServerSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }
        if received.publish_finished {
            return Ok(());
        }
        let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        input = buf[..n].to_vec();
    }
}

fn handle_event(
    session: &mut ServerSession,
    event: ServerSessionEvent,
    answer: Answer,
    received: &mut Received,
) -> Result<Vec<ServerSessionResult>, String> {
    let results = match event {
        ServerSessionEvent::ConnectionRequested { request_id, .. } => {
            session.accept_request(request_id)
        }
        ServerSessionEvent::PublishStreamRequested { request_id, .. } => match answer {
            Answer::Accept => session.accept_request(request_id),
            Answer::Reject { code, description } => {
                session.reject_request(request_id, code, description)
            }
        },
        ServerSessionEvent::VideoDataReceived {
            data, timestamp, ..
        } => {
            received.video.push((timestamp.value, data));
            return Ok(Vec::new());
        }
        ServerSessionEvent::AudioDataReceived {
            data, timestamp, ..
        } => {
            received.audio.push((timestamp.value, data));
            return Ok(Vec::new());
        }
        ServerSessionEvent::PublishStreamFinished { .. } => {
            received.publish_finished = true;
            return Ok(Vec::new());
        }
        _ => return Ok(Vec::new()),
    };
    results.map_err(|e| e.to_string())
}

/// The clip's messages as the server should receive them: sequence headers at 0, then the
/// tags of `loops` passes with timestamps offset by the clip duration.
fn expected(clip: &Clip, kind: TagKind, loops: u64) -> Vec<(u32, Bytes)> {
    let config = match kind {
        TagKind::Video => clip.video_config.clone(),
        TagKind::Audio => clip.audio_config.clone(),
    };
    let mut messages: Vec<_> = config.into_iter().map(|c| (0, c)).collect();
    for pass in 0..loops {
        messages.extend(clip.tags.iter().filter(|t| t.kind == kind).map(|t| {
            (
                (pass * clip.duration_ms) as u32 + t.timestamp_ms,
                t.data.clone(),
            )
        }));
    }
    messages
}

/// Sends the whole clip at once (no pacing), each video frame paired with the following audio
/// frame so their chunks interleave.
async fn blast_clip(url: &str, interleave: bool) -> Result<(), PublishError> {
    let clip = Clip::bundled()?;
    let mut publisher = Publisher::connect(&RtmpUrl::parse(url)?, interleave).await?;
    publisher.send_metadata(&clip.metadata).await?;
    publisher
        .send_video(0, clip.video_config.clone().unwrap())
        .await?;
    publisher
        .send_audio(0, clip.audio_config.clone().unwrap())
        .await?;
    let mut tags = clip.tags.iter().peekable();
    while let Some(tag) = tags.next() {
        match (tag.kind, tags.peek()) {
            (TagKind::Video, Some(next)) if next.kind == TagKind::Audio => {
                publisher
                    .send_video_and_audio(
                        (tag.timestamp_ms, tag.data.clone()),
                        (next.timestamp_ms, next.data.clone()),
                    )
                    .await?;
                tags.next();
            }
            (TagKind::Video, _) => {
                publisher
                    .send_video(tag.timestamp_ms, tag.data.clone())
                    .await?
            }
            (TagKind::Audio, _) => {
                publisher
                    .send_audio(tag.timestamp_ms, tag.data.clone())
                    .await?
            }
        }
    }
    publisher.finish().await?;
    Ok(())
}

#[tokio::test]
async fn interleaved_publish_reaches_rml_rtmp_intact_through_the_dechunker() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (url, server) = acceptor(true, Answer::Accept).await;
        blast_clip(&url, true).await.unwrap();
        let received = server.await.unwrap();

        assert_eq!(received.error, None);
        assert!(received.publish_finished);
        let clip = Clip::bundled().unwrap();
        assert_eq!(received.video, expected(&clip, TagKind::Video, 1));
        assert_eq!(received.audio, expected(&clip, TagKind::Audio, 1));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn interleaved_publish_breaks_rml_rtmp_without_the_dechunker() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (url, server) = acceptor(false, Answer::Accept).await;
        // The publisher may see the connection drop; what matters is the server side.
        let _ = blast_clip(&url, true).await;
        let clip = Clip::bundled().unwrap();
        // rml_rtmp 0.8 either fails, panics on its length arithmetic (the task's JoinError),
        // or delivers corrupted media.
        let intact = match server.await {
            Ok(received) => {
                received.error.is_none()
                    && received.video == expected(&clip, TagKind::Video, 1)
                    && received.audio == expected(&clip, TagKind::Audio, 1)
            }
            Err(join_error) => !join_error.is_panic(),
        };
        assert!(!intact, "rml_rtmp alone decoded interleaved chunks");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn contiguous_publish_passes_through_the_dechunker_unchanged() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (url, server) = acceptor(true, Answer::Accept).await;
        blast_clip(&url, false).await.unwrap();
        let received = server.await.unwrap();

        assert_eq!(received.error, None);
        let clip = Clip::bundled().unwrap();
        assert_eq!(received.video, expected(&clip, TagKind::Video, 1));
        assert_eq!(received.audio, expected(&clip, TagKind::Audio, 1));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn looping_publish_is_paced_in_real_time_with_continuous_timestamps() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (url, server) = acceptor(true, Answer::Accept).await;
        let mut opts = PublishOptions::new(url);
        opts.loops = Some(2);
        opts.interleave_chunks = true;
        let started = std::time::Instant::now();
        let stats = publish(opts).await.unwrap();
        let elapsed = started.elapsed();
        let received = server.await.unwrap();

        let clip = Clip::bundled().unwrap();
        // The last tag of the second pass is due just before 20 s.
        assert!(
            elapsed >= Duration::from_millis(19_900) && elapsed < Duration::from_secs(25),
            "{elapsed:?}"
        );
        assert_eq!(stats.loops_completed, 2);
        assert_eq!(received.error, None);
        assert_eq!(received.video, expected(&clip, TagKind::Video, 2));
        assert_eq!(received.audio, expected(&clip, TagKind::Audio, 2));
        assert_eq!(stats.video_frames, received.video.len() as u64);
        assert_eq!(stats.audio_frames, received.audio.len() as u64);
        // Keyframes stay on the 2 s grid across the loop boundary.
        let keyframes: Vec<u32> = received
            .video
            .iter()
            .filter(|(_, data)| data[0] >> 4 == 1 && data[1] == 1)
            .map(|(ts, _)| *ts)
            .collect();
        assert_eq!(keyframes, (0..10).map(|i| i * 2000).collect::<Vec<_>>());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rejected_publish_reports_the_servers_status() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let answer = Answer::Reject {
            code: "NetStream.Publish.BadName",
            description: "stream key not allowed",
        };
        let (url, _server) = acceptor(true, answer).await;
        let err = publish(PublishOptions::new(url)).await.unwrap_err();
        match err {
            PublishError::Rejected {
                code, description, ..
            } => {
                assert_eq!(code, "NetStream.Publish.BadName");
                assert_eq!(description, "stream key not allowed");
            }
            other => panic!("expected a rejection, got {other}"),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn shutdown_ends_the_publish_with_delete_stream() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (url, server) = acceptor(true, Answer::Accept).await;
        let mut opts = PublishOptions::new(url);
        opts.shutdown = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1500))));
        let stats = publish(opts).await.unwrap();
        let received = server.await.unwrap();

        assert!(received.publish_finished);
        assert_eq!(stats.loops_completed, 0);
        // 1.5 s of 30 fps video, plus the sequence header.
        assert!(
            (40..=50).contains(&received.video.len()),
            "{}",
            received.video.len()
        );
        assert_eq!(stats.video_frames, received.video.len() as u64);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn server_closing_the_connection_is_reported() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("rtmp://{}/live/test", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            drop(socket);
        });
        let err = publish(PublishOptions::new(url)).await.unwrap_err();
        assert!(
            matches!(err, PublishError::ConnectionClosed { stage: "handshake" })
                || matches!(
                    err,
                    PublishError::Io {
                        stage: "handshake",
                        ..
                    }
                ),
            "{err}"
        );
    })
    .await
    .unwrap();
}

/// The last segment's sequence number in a stream's live playlist, once it lists one.
async fn last_sequence(origin: &TestOrigin, stream: &str) -> Option<u64> {
    let resp = get(&origin.url(&format!("/live/{stream}/index.m3u8"))).await;
    if resp.status != 200 {
        return None;
    }
    parse_playlist(&resp.text())
        .entries
        .last()
        .map(|e| e.sequence)
}

/// Starts `publish()` of the bundled clip on `stream`, interleaved; stop it with the sender.
fn spawn_publisher(
    origin: &TestOrigin,
    stream: &str,
) -> (
    oneshot::Sender<()>,
    JoinHandle<Result<PublishStats, PublishError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let mut opts = PublishOptions::new(origin.rtmp_url(stream));
    opts.interleave_chunks = true;
    opts.shutdown = Some(Box::pin(async {
        let _ = stopped.await;
    }));
    (stop, tokio::spawn(publish(opts)))
}

/// Waits until the server closes `socket` (EOF or reset), reading and discarding its output.
async fn closed_by_server(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Connects and completes the client side of the RTMP handshake.
async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut handshake = Handshake::new(PeerType::Client);
    socket
        .write_all(&handshake.generate_outbound_p0_and_p1().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during the handshake");
        match handshake.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.unwrap();
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                socket.write_all(&response_bytes).await.unwrap();
                return socket;
            }
        }
    }
}

/// Whether the server ends the publisher's connection within `within`.
async fn publisher_closed_by_server(publisher: &mut Publisher, within: Duration) -> bool {
    matches!(
        publisher.idle(within).await,
        Err(PublishError::ConnectionClosed { .. } | PublishError::Io { .. })
    )
}

#[tokio::test]
async fn interleaved_publish_of_the_bundled_clip_is_served_as_hls() {
    publish_interleaved_clip_and_probe_segments(None).await;
}

#[tokio::test]
async fn publish_read_as_bytes_arrive_is_served_as_hls_too() {
    // `read_interval_ms = 0`: the publishing socket stays registered, no pacing.
    publish_interleaved_clip_and_probe_segments(Some(0)).await;
}

/// Publishes the bundled clip, interleaved, until two segments are listed, and checks them with
/// ffprobe; `read_interval_ms` overrides the default.
async fn publish_interleaved_clip_and_probe_segments(read_interval_ms: Option<u64>) {
    require_ffmpeg();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let origin = TestOrigin::start(|config| {
            if let Some(ms) = read_interval_ms {
                config.rtmp.read_interval_ms = ms;
            }
        })
        .await;
        let (stop, publisher) = spawn_publisher(&origin, "clip");

        // Two complete 2 s segments need a little over 4 s of media.
        wait_for("two segments", Duration::from_secs(15), || async {
            last_sequence(&origin, "clip").await.filter(|&s| s >= 1)
        })
        .await;
        let playlist = parse_playlist(&get(&origin.url("/live/clip/index.m3u8")).await.text());
        let dir = temp_dir("ingest-probe");
        for entry in &playlist.entries {
            let segment_url = origin.url(&format!("/live/clip/{}", entry.uri));
            let resp = get(&segment_url).await;
            assert_eq!(resp.status, 200, "{segment_url}");
            assert_eq!(resp.header("content-type"), "video/mp2t");
            let probe = probe_url(&segment_url, &dir).await;
            assert_eq!(probe.codecs, vec!["aac", "h264"]);
            assert!(
                (probe.duration_secs - 2.0).abs() < 0.1,
                "{} lasts {} s",
                entry.uri,
                probe.duration_secs
            );
        }
        let _ = std::fs::remove_dir_all(&dir);

        stop.send(()).unwrap();
        let stats = publisher.await.unwrap().unwrap();
        assert!(stats.video_frames > 120, "{stats:?}");
        origin.stop().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn publisher_is_acknowledged_the_bytes_received_each_time_its_window_fills() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let origin = TestOrigin::start(|_| {}).await;
        let clip = Clip::bundled().unwrap();
        let url = RtmpUrl::parse(&origin.rtmp_url("acked")).unwrap();
        let mut publisher = Publisher::connect(&url, false).await.unwrap();
        let config = (clip.video_config.clone(), clip.audio_config.clone());
        publisher.send_video(0, config.0.unwrap()).await.unwrap();
        publisher.send_audio(0, config.1.unwrap()).await.unwrap();
        // rml_rtmp's client sets a 2.5 MB window; send more than that, faster than real time.
        // Media bypasses rml_rtmp's session on the origin, so these bytes are counted by the
        // connection itself.
        let mut offset_ms = 0;
        while publisher.stats().bytes_sent < 3_000_000 {
            for tag in &clip.tags {
                let ts = tag.timestamp_ms + offset_ms;
                match tag.kind {
                    TagKind::Video => publisher.send_video(ts, tag.data.clone()).await,
                    TagKind::Audio => publisher.send_audio(ts, tag.data.clone()).await,
                }
                .unwrap();
            }
            offset_ms += u32::try_from(clip.duration_ms).unwrap();
        }
        publisher.idle(Duration::from_secs(1)).await.unwrap();
        let stats = publisher.stats();
        assert!(
            (2_500_000..=stats.bytes_sent).contains(&u64::from(stats.acknowledged_bytes)),
            "{stats:?}"
        );
        publisher.finish().await.unwrap();
        origin.stop().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_input_closes_its_connection_while_a_good_publisher_keeps_publishing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let origin = TestOrigin::start(|config| {
            config.rtmp.handshake_timeout_ms = 1_000;
            config.rtmp.keyframe_timeout_ms = 1_500;
        })
        .await;
        let (stop, good) = spawn_publisher(&origin, "good");
        let before = wait_for(
            "the good stream's first segment",
            Duration::from_secs(10),
            || last_sequence(&origin, "good"),
        )
        .await;

        // Random bytes where the handshake belongs (C0 must be 3).
        let mut socket = TcpStream::connect(origin.rtmp).await.unwrap();
        let mut seed = 0x2545_F491_u32;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 24) as u8
            })
            .collect();
        let _ = socket.write_all(&noise).await;
        assert!(
            closed_by_server(&mut socket, Duration::from_secs(5)).await,
            "random bytes"
        );

        // A handshake that stops halfway through C1.
        let mut socket = TcpStream::connect(origin.rtmp).await.unwrap();
        let mut c0c1 = Handshake::new(PeerType::Client)
            .generate_outbound_p0_and_p1()
            .unwrap();
        c0c1.truncate(700);
        socket.write_all(&c0c1).await.unwrap();
        assert!(
            closed_by_server(&mut socket, Duration::from_secs(5)).await,
            "truncated handshake"
        );

        // A 2 GiB chunk size right after the handshake.
        let mut socket = handshaken(origin.rtmp).await;
        let header = MessageHeader {
            timestamp: 0,
            type_id: 1,
            message_stream_id: 0,
        };
        let mut chunk = Vec::new();
        write_message_chunks(2, &header, &0x8000_0000u32.to_be_bytes(), 128, |h, b| {
            chunk.extend_from_slice(h);
            chunk.extend_from_slice(b);
        });
        socket.write_all(&chunk).await.unwrap();
        assert!(
            closed_by_server(&mut socket, Duration::from_secs(5)).await,
            "2 GiB chunk size"
        );

        // An AVC sequence header whose AVCDecoderConfigurationRecord is garbage.
        let clip = Clip::bundled().unwrap();
        let url = RtmpUrl::parse(&origin.rtmp_url("broken-avc")).unwrap();
        let mut publisher = Publisher::connect(&url, false).await.unwrap();
        publisher.send_metadata(&clip.metadata).await.unwrap();
        let broken = Bytes::from_static(&[0x17, 0x00, 0x00, 0x00, 0x00, 0x01, 0xFF]);
        let sent = publisher.send_video(0, broken).await;
        let mut closed = sent.is_err();
        for tag in clip.tags.iter().take(60) {
            if closed {
                break;
            }
            let sent = match tag.kind {
                TagKind::Video => {
                    publisher
                        .send_video(tag.timestamp_ms, tag.data.clone())
                        .await
                }
                TagKind::Audio => {
                    publisher
                        .send_audio(tag.timestamp_ms, tag.data.clone())
                        .await
                }
            };
            closed = sent.is_err()
                || publisher_closed_by_server(&mut publisher, Duration::from_millis(30)).await;
        }
        assert!(
            closed || publisher_closed_by_server(&mut publisher, Duration::from_secs(5)).await,
            "broken AVC sequence header"
        );

        // A publish that sends inter frames but never a keyframe.
        let url = RtmpUrl::parse(&origin.rtmp_url("no-keyframe")).unwrap();
        let mut publisher = Publisher::connect(&url, false).await.unwrap();
        publisher.send_metadata(&clip.metadata).await.unwrap();
        publisher
            .send_video(0, clip.video_config.clone().unwrap())
            .await
            .unwrap();
        let inter_frames = clip
            .tags
            .iter()
            .filter(|t| t.kind == TagKind::Video && t.data[0] >> 4 != 1);
        let mut closed = false;
        for tag in inter_frames {
            let sent = publisher
                .send_video(tag.timestamp_ms, tag.data.clone())
                .await;
            closed = sent.is_err()
                || publisher_closed_by_server(&mut publisher, Duration::from_millis(33)).await;
            if closed {
                break;
            }
        }
        assert!(closed, "publish without a keyframe");

        // Meanwhile the good stream kept publishing and its playlist kept advancing.
        let after = before + 2;
        wait_for(
            "the good stream to advance",
            Duration::from_secs(10),
            || async { last_sequence(&origin, "good").await.filter(|&s| s >= after) },
        )
        .await;
        assert!(!good.is_finished(), "the good publisher stopped");
        stop.send(()).unwrap();
        let stats = good.await.unwrap().unwrap();
        assert!(stats.video_frames > 0);
        origin.stop().await;
    })
    .await
    .unwrap();
}
