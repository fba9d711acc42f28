//! The redundant pair: two origins fed the same encoder output, the second joining seconds
//! later — or restarted mid-stream, after earlier publishes moved the stream's numbering on —
//! must list the same segments under the same URIs, sequence and discontinuity numbers, EXTINF,
//! with the same PTS.
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

/// The live playlist once it has ENDLIST and lists a segment numbered past `after`.
async fn ended_after(origin: &TestOrigin, stream: &str, after: Option<u64>) -> Playlist {
    let url = origin.url(&format!("/live/{stream}/index.m3u8"));
    wait_for("ENDLIST", Duration::from_secs(10), || async {
        let p = parse_playlist(&get(&url).await.text());
        let new = after.is_none_or(|last| p.entries.iter().any(|e| e.sequence > last));
        (p.ended && new).then_some(p)
    })
    .await
}

fn numbering(p: &Playlist) -> Vec<(String, u64, u64, String)> {
    p.entries
        .iter()
        .map(|e| {
            let (uri, extinf) = (e.uri.clone(), e.extinf.clone());
            (uri, e.sequence, e.discontinuity_sequence, extinf)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_restarted_mid_stream_keeps_the_numbering_of_its_partner_across_publishes() {
    let grace = |c: &mut parallax_origin::Config| c.hls.reconnect_grace_ms = 500;
    let (a, b) = tokio::join!(TestOrigin::start(grace), TestOrigin::start(grace));

    // An earlier publish on both moves the stream's numbering on.
    let (url_a, url_b) = (a.rtmp_url("pair"), b.rtmp_url("pair"));
    tokio::join!(
        async {
            publish_clip_range(&url_a, 0, 4_000)
                .await
                .finish()
                .await
                .unwrap()
        },
        async {
            publish_clip_range(&url_b, 0, 4_000)
                .await
                .finish()
                .await
                .unwrap()
        },
    );
    let (pa1, pb1) = tokio::join!(ended_after(&a, "pair", None), ended_after(&b, "pair", None));
    assert_eq!(numbering(&pa1), numbering(&pb1));
    let last1 = pa1.entries.last().unwrap().sequence;

    // The encoder publishes again from timestamp 0. A gets all of it; B is shut down 2.5 s in
    // (its publisher still connected) and restarted, and gets the encoder's output from 3 s on.
    let start = tokio::time::Instant::now();
    let pub_a = tokio::spawn(async move {
        publish_clip_range(&url_a, 0, 10_000)
            .await
            .finish()
            .await
            .unwrap()
    });
    let before_restart = publish_clip_range(&url_b, 0, 2_500).await;
    let data_dir = b.shutdown().await;
    drop(before_restart);
    let b = TestOrigin::start(|c| {
        grace(c);
        c.data_dir = data_dir;
    })
    .await;
    tokio::time::sleep_until(start + Duration::from_millis(3_000)).await;
    publish_clip_range(&b.rtmp_url("pair"), 3_000, 10_000)
        .await
        .finish()
        .await
        .unwrap();
    pub_a.await.unwrap();

    let (pa, pb) = tokio::join!(
        ended_after(&a, "pair", Some(last1)),
        ended_after(&b, "pair", Some(last1))
    );
    // The second publish continued the numbering instead of reusing the first one's names.
    assert!(pa.media_sequence > last1, "{pa:?} after {pa1:?}");
    assert!(pa.entries[0].discontinuity);
    for e in &pa.entries {
        assert!(
            pa1.entries.iter().all(|old| old.uri != e.uri),
            "{} reused",
            e.uri
        );
    }
    // The restarted origin cannot publish the segment its first keyframe (4 s) is in, but from
    // 6 s on it lists what A lists, under the same names, with the same bytes.
    let common = numbering(&pb);
    assert!(common.len() >= 2, "B after its restart: {pb:?}");
    assert!(numbering(&pa).ends_with(&common), "A {pa:?} B {pb:?}");
    for e in &pb.entries {
        let sa = get(&a.url(&format!("/live/pair/{}", e.uri))).await;
        let sb = get(&b.url(&format!("/live/pair/{}", e.uri))).await;
        assert_eq!((sa.status, sb.status), (200, 200), "{}", e.uri);
        assert!(sa.body == sb.body, "{} differs between the origins", e.uri);
    }
    a.stop().await;
    b.stop().await;
}
