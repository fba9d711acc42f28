//! The redundant pair: two origins fed the same encoder output, the second joining seconds
//! later, must list the same segments under the same URIs, sequence and discontinuity numbers,
//! EXTINF, with the same PTS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_started_apart_serve_interchangeable_hls() {
    require_ffmpeg();
    let (a, b) = tokio::join!(TestOrigin::start(|_| {}), TestOrigin::start(|_| {}));
    let work = temp_dir("alignment");

    // One encoder output: origin A gets it from the start, origin B only from 4 s on, the way
    // a second origin (re)started mid-stream would.
    let url_a = a.rtmp_url("pair");
    let url_b = b.rtmp_url("pair");
    let pub_a = tokio::spawn(async move {
        publish_clip_range(&url_a, 0, 10_000)
            .await
            .finish()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let pub_b = tokio::spawn(async move {
        publish_clip_range(&url_b, 4_000, 10_000)
            .await
            .finish()
            .await
            .unwrap()
    });
    pub_a.await.unwrap();
    pub_b.await.unwrap();

    let ended = |o: &TestOrigin| {
        let url = o.url("/live/pair/index.m3u8");
        async move {
            wait_for("ENDLIST", Duration::from_secs(10), || async {
                Some(parse_playlist(&get(&url).await.text())).filter(|p| p.ended)
            })
            .await
        }
    };
    let (pa, pb) = tokio::join!(ended(&a), ended(&b));
    assert_eq!(pa.target_duration, pb.target_duration);

    let mut common = 0;
    for eb in &pb.entries {
        // A saw the whole stream, so everything B lists must be on A too.
        let ea = pa
            .entries
            .iter()
            .find(|e| e.uri == eb.uri)
            .unwrap_or_else(|| panic!("{} is on B but not on A: A {pa:?} B {pb:?}", eb.uri));
        common += 1;
        assert_eq!(ea.sequence, eb.sequence, "sequence of {}", eb.uri);
        assert_eq!(
            ea.discontinuity_sequence, eb.discontinuity_sequence,
            "dseq of {}",
            eb.uri
        );
        assert_eq!(ea.extinf, eb.extinf, "EXTINF of {}", eb.uri);
        let da = work.join("a");
        let db = work.join("b");
        std::fs::create_dir_all(&da).unwrap();
        std::fs::create_dir_all(&db).unwrap();
        let probe_a = probe_url(&a.url(&format!("/live/pair/{}", ea.uri)), &da).await;
        let probe_b = probe_url(&b.url(&format!("/live/pair/{}", eb.uri)), &db).await;
        assert_eq!(
            probe_a.start_time, probe_b.start_time,
            "first PTS of {}",
            eb.uri
        );
        assert_eq!(probe_a.codecs, probe_b.codecs);
    }
    // B joined at 4 s of a 10 s stream. The packager may hold back the first segment after
    // joining (it cannot tell whether it saw that segment's start), so 6-8 and 8-10 s at least.
    assert!(common >= 2, "segments on both origins: A {pa:?} B {pb:?}");

    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_tee_into_two_origins_gives_byte_identical_segments() {
    require_ffmpeg();
    let (a, b) = tokio::join!(
        TestOrigin::start(|c| c.hls.reconnect_grace_ms = 500),
        TestOrigin::start(|c| c.hls.reconnect_grace_ms = 500)
    );
    // One encoder output pushed to both origins by ffmpeg's tee muxer, as operators run a 1+1
    // pair. The clip is copied, not re-encoded, to keep the test cheap on CPU.
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/testclip.flv");
    let tee = format!("[f=flv]{}|[f=flv]{}", a.rtmp_url("tee"), b.rtmp_url("tee"));
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re", "-i"])
        .arg(&clip)
        .args(["-map", "0", "-c", "copy", "-f", "tee", &tee])
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(40), status)
        .await
        .expect("ffmpeg finished within 40 s")
        .unwrap();
    assert!(status.success(), "ffmpeg tee: {status}");

    let ended = |o: &TestOrigin| {
        let url = o.url("/live/tee/index.m3u8");
        async move {
            wait_for("ENDLIST", Duration::from_secs(10), || async {
                Some(parse_playlist(&get(&url).await.text())).filter(|p| p.ended)
            })
            .await
        }
    };
    let (pa, pb) = tokio::join!(ended(&a), ended(&b));
    let strip = |p: &Playlist| {
        p.entries
            .iter()
            .map(|e| {
                (
                    e.uri.clone(),
                    e.sequence,
                    e.discontinuity_sequence,
                    e.extinf.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(pa.entries.len() >= 4, "{pa:?}");
    assert_eq!(
        strip(&pa),
        strip(&pb),
        "same segments, numbering and EXTINF"
    );
    assert_eq!(
        (pa.media_sequence, pa.discontinuity_sequence),
        (pb.media_sequence, pb.discontinuity_sequence)
    );
    for e in &pa.entries {
        let sa = get(&a.url(&format!("/live/tee/{}", e.uri))).await;
        let sb = get(&b.url(&format!("/live/tee/{}", e.uri))).await;
        assert_eq!(sa.status, 200);
        assert!(sa.body == sb.body, "{} differs between the origins", e.uri);
        assert_eq!(sa.header("etag"), sb.header("etag"), "ETag of {}", e.uri);
    }
    a.stop().await;
    b.stop().await;
}
