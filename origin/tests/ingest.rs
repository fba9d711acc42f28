//! Ingest tests: the built-in publisher against an RTMP acceptor made of rml_rtmp's
//! `ServerSession`, with and without the `Dechunker` in front of it.
//!
//! They prove that a publisher interleaving audio chunks inside video messages (as OBS 30+ and
//! FFmpeg 6.1+ do) reaches rml_rtmp intact through the Dechunker, and document that it does not
//! without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use parallax_origin::publisher::{
    publish, Clip, PublishError, PublishOptions, Publisher, RtmpUrl, TagKind,
};
use parallax_origin::rtmp::dechunk::Dechunker;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
