//! Publisher lifecycle on one stream: an encoder that drops and comes back within the grace
//! continues the same playlist after EXT-X-DISCONTINUITY (sequence never going backwards) and
//! the playlist ends only after the grace; a publish after the grace (even after an origin
//! restart) continues the numbering, never reusing a name; an origin shutdown finalizes the
//! recording but leaves the live playlist without ENDLIST; a second publisher is refused, or
//! takes over when configured; publish authorization (key list, HTTP callback) and media the
//! packager refuses end a publish before it starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use parallax_origin::publisher::{Publisher, RtmpUrl};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoder_reconnect_within_grace_continues_the_playlist_with_a_discontinuity() {
    let origin = TestOrigin::start(|c| c.hls.reconnect_grace_ms = 3_000).await;
    let url = origin.url("/live/cam/index.m3u8");

    // Every playlist a player would have seen, polled throughout.
    let seen: Arc<Mutex<Vec<Playlist>>> = Arc::default();
    let poller = {
        let (seen, url) = (seen.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                let r = get(&url).await;
                if r.status == 200 {
                    let p = parse_playlist(&r.text());
                    let ended = p.ended;
                    seen.lock().unwrap().push(p);
                    if ended {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let first = publish_clip_range(&origin.rtmp_url("cam"), 0, 6_000).await;
    first.finish().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // The encoder restarts: its timestamps start from zero again.
    let second = publish_clip_range(&origin.rtmp_url("cam"), 0, 6_000).await;
    let second_ended = tokio::time::Instant::now();
    second.finish().await.unwrap();

    tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .expect("ENDLIST within the grace after the last publish")
        .unwrap();
    assert!(
        second_ended.elapsed() >= Duration::from_millis(2_500),
        "ENDLIST only after the grace"
    );

    let seen = seen.lock().unwrap().clone();
    for pair in seen.windows(2) {
        assert!(
            pair[1].media_sequence >= pair[0].media_sequence,
            "media sequence went backwards: {} then {}",
            pair[0].media_sequence,
            pair[1].media_sequence
        );
        assert!(pair[1].discontinuity_sequence >= pair[0].discontinuity_sequence);
        let last = |p: &Playlist| p.entries.last().map(|e| e.sequence);
        assert!(last(&pair[1]) >= last(&pair[0]));
    }
    assert!(
        seen[..seen.len() - 1].iter().all(|p| !p.ended),
        "no ENDLIST while in grace"
    );
    let last = seen.last().unwrap();
    assert!(last.ended);
    let disc: Vec<&Entry> = last.entries.iter().filter(|e| e.discontinuity).collect();
    assert_eq!(
        disc.len(),
        1,
        "one EXT-X-DISCONTINUITY at the reconnect: {last:?}"
    );
    assert!(
        last.entries.len() >= 5,
        "both publishes in one playlist: {last:?}"
    );
    for pair in last.entries.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
        assert_ne!(pair[1].uri, pair[0].uri);
    }
    origin.stop().await;
}

/// Publishes the clip's first 4 s on `stream`, disconnects, and returns the live playlist once
/// it has ENDLIST and lists segments numbered past `after` (the previous publish's last).
async fn publish_until_ended(origin: &TestOrigin, stream: &str, after: Option<u64>) -> Playlist {
    publish_clip_range(&origin.rtmp_url(stream), 0, 4_000)
        .await
        .finish()
        .await
        .unwrap();
    let url = origin.url(&format!("/live/{stream}/index.m3u8"));
    wait_for(
        "ENDLIST of this publish",
        Duration::from_secs(10),
        || async {
            let p = parse_playlist(&get(&url).await.text());
            let new = after.is_none_or(|last| p.entries.iter().any(|e| e.sequence > last));
            (p.ended && new).then_some(p)
        },
    )
    .await
}

/// Checks `next` (a later publish's playlist) continues after `earlier` without reusing a name.
fn assert_continues(earlier: &[Playlist], next: &Playlist) {
    let last = earlier.last().unwrap().entries.last().unwrap();
    assert!(
        next.media_sequence > last.sequence,
        "media sequence went back: {next:?} after {last:?}"
    );
    assert_eq!(next.discontinuity_sequence, last.discontinuity_sequence);
    let first = &next.entries[0];
    assert!(
        first.discontinuity,
        "a new publish is a discontinuity: {next:?}"
    );
    assert_eq!(
        first.discontinuity_sequence,
        last.discontinuity_sequence + 1
    );
    for e in &next.entries {
        for p in earlier {
            assert!(
                p.entries.iter().all(|old| old.uri != e.uri),
                "{} was already published: {p:?}",
                e.uri
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_again_after_the_grace_never_reuses_a_segment_name() {
    let origin = TestOrigin::start(|c| c.hls.reconnect_grace_ms = 500).await;
    let first = publish_until_ended(&origin, "show", None).await;
    assert!(first.entries.len() >= 2, "{first:?}");

    // The encoder comes back after the grace: its timestamps start from zero again.
    let last = first.entries.last().unwrap().sequence;
    let second = publish_until_ended(&origin, "show", Some(last)).await;
    assert_continues(std::slice::from_ref(&first), &second);
    // The new publish's segments are on disk under their new names.
    for e in &second.entries {
        let r = get(&origin.url(&format!("/live/show/{}", e.uri))).await;
        assert_eq!(r.status, 200, "{}", e.uri);
    }

    // The numbering survives an origin restart too.
    let data_dir = origin.shutdown().await;
    let origin = TestOrigin::start(|c| {
        c.hls.reconnect_grace_ms = 500;
        c.data_dir = data_dir;
    })
    .await;
    let last = second.entries.last().unwrap().sequence;
    let third = publish_until_ended(&origin, "show", Some(last)).await;
    assert_continues(&[first, second], &third);
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_shutdown_finalizes_the_recording_but_does_not_end_the_live_playlist() {
    let origin = TestOrigin::start(|c| c.hls.reconnect_grace_ms = 500).await;
    // Still publishing when the origin goes down, as the encoder of a redundant pair would be.
    let publisher = publish_clip_range(&origin.rtmp_url("deploy"), 0, 5_000).await;
    let data_dir = origin.shutdown().await;
    drop(publisher);
    // Longer than the grace: nothing may still write ENDLIST after the shutdown returned.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let live = std::fs::read_to_string(data_dir.join("live/deploy/index.m3u8")).unwrap();
    let live = parse_playlist(&live);
    assert!(!live.ended, "ENDLIST on the live playlist: {live:?}");
    assert!(live.entries.len() >= 2, "{live:?}");

    let vod = data_dir.join("vod/deploy");
    let recordings: Vec<_> = std::fs::read_dir(&vod)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(recordings.len(), 1, "{recordings:?}");
    let recording = std::fs::read_to_string(recordings[0].join("index.m3u8")).unwrap();
    let recording = parse_playlist(&recording);
    assert!(recording.vod && recording.ended, "{recording:?}");
    assert_eq!(
        recording.entries.iter().map(|e| &e.uri).collect::<Vec<_>>(),
        live.entries.iter().map(|e| &e.uri).collect::<Vec<_>>()
    );
    assert!(recordings[0].join("recording.json").exists());
    std::fs::remove_dir_all(&data_dir).unwrap();
}

async fn connect(
    origin: &TestOrigin,
    stream: &str,
) -> Result<Publisher, parallax_origin::publisher::PublishError> {
    Publisher::connect(&RtmpUrl::parse(&origin.rtmp_url(stream)).unwrap(), false).await
}

/// Sends audio until the server drops the connection; whether it did within ~4 s.
async fn is_disconnected(p: &mut Publisher) -> bool {
    for i in 0..200u32 {
        if p.send_audio(i * 23, bytes::Bytes::from_static(&[0xaf, 0x01, 0x21, 0x00]))
            .await
            .is_err()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_is_refused_unless_takeover_is_on() {
    let (strict, lenient) = tokio::join!(
        TestOrigin::start(|_| {}),
        TestOrigin::start(|c| c.hls.takeover = true)
    );

    let _first = connect(&strict, "key").await.unwrap();
    let err = connect(&strict, "key")
        .await
        .err()
        .expect("second publisher refused");
    assert!(err.to_string().contains("BadName"), "{err}");

    let mut first = connect(&lenient, "key").await.unwrap();
    let _second = connect(&lenient, "key").await.unwrap();
    assert!(
        is_disconnected(&mut first).await,
        "the first publisher is taken over"
    );

    strict.stop().await;
    lenient.stop().await;
}

/// An auth callback on 127.0.0.1:0 allowing only bodies with `query=token%3Dgood`; returns its
/// URL and every body it received.
async fn auth_callback() -> (String, Arc<Mutex<Vec<String>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/on_publish", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = String::from_utf8(body.to_vec()).unwrap();
                            let status = if body.contains("query=token%3Dgood") {
                                204
                            } else {
                                403
                            };
                            seen.lock().unwrap().push(body);
                            let mut r =
                                http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), svc)
                    .await;
            });
        }
    });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_auth_checks_keys_and_the_callback() {
    let (callback, bodies) = auth_callback().await;
    let (keys, cb) = tokio::join!(
        TestOrigin::start(|c| c.auth.allowed_keys = vec!["s3cret".into()]),
        TestOrigin::start(|c| c.auth.callback_url = Some(callback))
    );
    let err = connect(&keys, "guess")
        .await
        .err()
        .expect("unlisted key refused");
    assert!(err.to_string().contains("Unauthorized"), "{err}");
    let _ok = connect(&keys, "s3cret").await.unwrap();

    let err = connect(&cb, "cam?token=bad")
        .await
        .err()
        .expect("callback refuses");
    assert!(err.to_string().contains("Unauthorized"), "{err}");
    let _ok = connect(&cb, "cam?token=good").await.unwrap();
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies[1].starts_with("call=publish&app=live&stream=cam&name=cam&addr=127.0.0.1%3A"),
        "{bodies:?}"
    );
    assert!(bodies[1].ends_with("&query=token%3Dgood"), "{bodies:?}");

    keys.stop().await;
    cb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_avc_sequence_header_disconnects_only_that_publisher() {
    let origin = TestOrigin::start(|_| {}).await;
    let mut p = connect(&origin, "broken").await.unwrap();
    // AVC sequence header (keyframe, AVCPacketType 0) whose record is garbage.
    p.send_video(
        0,
        bytes::Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 0xff, 0xee]),
    )
    .await
    .unwrap();
    assert!(
        is_disconnected(&mut p).await,
        "broken sequence header must disconnect"
    );
    origin.stop().await;
}
