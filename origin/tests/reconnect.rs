//! Publisher lifecycle on one stream: an encoder that drops and comes back within the grace
//! continues the same playlist after EXT-X-DISCONTINUITY (sequence never going backwards) and
//! the playlist ends only after the grace; a second publisher is refused, or takes over when
//! configured.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_auth_refuses_keys_not_listed() {
    let origin = TestOrigin::start(|c| c.auth.allowed_keys = vec!["s3cret".into()]).await;
    let err = connect(&origin, "guess")
        .await
        .err()
        .expect("unlisted key refused");
    assert!(err.to_string().contains("Unauthorized"), "{err}");
    let _ok = connect(&origin, "s3cret").await.unwrap();
    origin.stop().await;
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
