//! Recording to VOD: after a publish ends (and its grace expires) the recording is listed at
//! `/vod/<stream>/`, its VOD playlist decodes completely with ffmpeg, the post-record hook ran
//! with the recording's path and id, and a failing hook keeps the recording.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use parallax_origin::config::HookConfig;
use parallax_origin::publisher::{self, PublishOptions};
use support::*;

async fn publish_clip_once(origin: &TestOrigin, stream: &str) {
    let mut opts = PublishOptions::new(origin.rtmp_url(stream));
    opts.loops = Some(1);
    publisher::publish(opts).await.unwrap();
}

async fn recordings(origin: &TestOrigin, stream: &str, at_least: usize) -> Vec<serde_json::Value> {
    let url = origin.url(&format!("/vod/{stream}/"));
    wait_for("recordings listed", Duration::from_secs(15), || async {
        let r = get(&url).await;
        if r.status != 200 {
            return None;
        }
        assert_eq!(r.header("content-type"), "application/json");
        let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        (list.len() >= at_least).then_some(list)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_publish_is_served_as_vod_and_the_hook_runs() {
    require_ffmpeg();
    let marker_dir = temp_dir("hook");
    let marker = marker_dir.join("marker");
    let hooked = TestOrigin::start(|c| {
        c.hls.reconnect_grace_ms = 500;
        c.recording.post_record_hook = Some(HookConfig {
            command: "sh".into(),
            args: vec![
                "-c".into(),
                format!("printf '%s %s' \"$1\" \"$2\" > {}", marker.display()),
                "hook".into(),
            ],
            timeout_secs: 10,
        });
    })
    .await;
    // A failing hook, and a 4 s rollover so one publish makes several recordings.
    let failing = TestOrigin::start(|c| {
        c.hls.reconnect_grace_ms = 500;
        c.recording.max_duration_secs = 4;
        c.recording.post_record_hook = Some(HookConfig {
            command: "sh".into(),
            args: vec!["-c".into(), "exit 7".into()],
            timeout_secs: 10,
        });
    })
    .await;

    tokio::join!(
        publish_clip_once(&hooked, "show"),
        publish_clip_once(&failing, "show")
    );

    let list = recordings(&hooked, "show", 1).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let rec = &list[0];
    let id = rec["id"].as_str().unwrap();
    let url = rec["url"].as_str().unwrap();
    assert_eq!(url, format!("/vod/show/{id}/index.m3u8"));
    assert_eq!(rec["stream"], "show");
    assert!(rec["start_time"].as_str().unwrap().ends_with('Z'));
    let duration_ms = rec["duration_ms"].as_u64().unwrap();
    assert!((9_000..=11_000).contains(&duration_ms), "{rec}");
    assert_eq!(rec["segments"].as_u64().unwrap(), 5);
    assert!(rec["bytes"].as_u64().unwrap() > 100_000);

    let vod_url = hooked.url(url);
    let vod = get(&vod_url).await;
    assert_eq!(vod.header("content-type"), "application/vnd.apple.mpegurl");
    let playlist = parse_playlist(&vod.text());
    assert!(playlist.vod && playlist.ended, "{}", vod.text());
    assert_eq!(playlist.entries.len(), 5);
    ffmpeg_decodes(&vod_url).await;

    let marker_text = wait_for("hook marker", Duration::from_secs(10), || async {
        std::fs::read_to_string(&marker).ok()
    })
    .await;
    let (path, hook_id) = marker_text.split_once(' ').unwrap();
    assert_eq!(hook_id, id);
    assert!(
        std::path::Path::new(path).join("index.m3u8").exists(),
        "{path}"
    );

    // The failing hook ran after each recording; every recording is still there.
    let list = recordings(&failing, "show", 3).await;
    let total: u64 = list.iter().map(|r| r["segments"].as_u64().unwrap()).sum();
    assert_eq!(total, 5, "rollover keeps every segment: {list:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for rec in &list {
        let u = failing.url(rec["url"].as_str().unwrap());
        let p = parse_playlist(&get(&u).await.text());
        assert!(p.vod && p.ended);
        for e in &p.entries {
            let seg = u.replace("index.m3u8", &e.uri);
            assert_eq!(get(&seg).await.status, 200, "{seg}");
        }
    }

    hooked.stop().await;
    failing.stop().await;
    let _ = std::fs::remove_dir_all(&marker_dir);
}
