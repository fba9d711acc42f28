//! Policy modules on the request path, end to end: the real `proxy` binary running the shipped
//! modules (token-auth, region-steer, playlist-rewrite) built for wasm32-wasip2, and the test
//! guest misbehaving on purpose.
//!
//! Run: `cargo test -p parallax-proxy --test modules`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "test-admin-token-0123456789";
const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A proxy with `[wasm]` on: `modules` are `(guest crate, file stem)` pairs installed into a
/// fresh modules directory, `wasm` is the rest of the config (`[[wasm.modules]]`,
/// `[[wasm.chains]]`, `[[upstreams]]`, ...). Admin and metrics listen on their own ports.
struct Edge {
    proxy: Proxy,
    admin: SocketAddr,
    metrics: SocketAddr,
    modules_dir: PathBuf,
}

impl Edge {
    async fn start(modules: &[(&str, &str)], config: &str) -> Edge {
        let modules_dir = temp_dir("modules");
        for (name, file) in modules {
            install_module(name, &modules_dir, file);
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let toml = format!(
            "[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
             [metrics]\naddr = \"{metrics}\"\n\
             [wasm]\nenabled = true\nmodules_dir = {modules_dir:?}\n{config}\n"
        );
        let proxy = Proxy::start(&toml).await;
        Edge {
            proxy,
            admin,
            metrics,
            modules_dir,
        }
    }

    async fn admin(&self, method: &str, path: &str) -> Response {
        let auth = format!("Bearer {TOKEN}");
        request(self.admin, method, path, &[("authorization", &auth)])
            .await
            .unwrap()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.modules_dir);
    }
}

fn sign(acl: &str) -> String {
    let key = parallax_token::Key::from_hex(KEY_HEX).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    parallax_token::sign(
        &key,
        &parallax_token::SignParams {
            expires_secs: now + 600,
            start_secs: None,
            acl: vec![acl.to_owned()],
            id: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn token_auth_refuses_requests_without_a_valid_token_before_the_cache_and_admits_signed_ones()
{
    let origin = Origin::start().await;
    origin.set("/live/a/1.ts", Reply::ok(pattern(2000, 7)));
    let edge = Edge::start(
        &[("token-auth", "token-auth")],
        &format!(
            "[[wasm.modules]]\nname = \"auth\"\nfile = \"token-auth\"\n\
             config = {{ key = \"{KEY_HEX}\" }}\n\
             [[wasm.chains]]\npath_prefix = \"/live/\"\nmodules = [\"auth\"]\n{}",
            upstream_config(&origin, None)
        ),
    )
    .await;

    let missing = get(edge.proxy.addr, "/live/a/1.ts").await.unwrap();
    assert_eq!(missing.status, 403);
    assert_eq!(missing.header("x-parallax-auth"), Some("missing"));
    let forged = get(
        edge.proxy.addr,
        "/live/a/1.ts?__token__=exp=9999999999~acl=/live/*~hmac=0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await
    .unwrap();
    assert_eq!(forged.status, 403);
    assert_eq!(forged.header("x-parallax-auth"), Some("bad-signature"));
    let other_stream = sign("/live/b/*");
    let wrong_path = get(
        edge.proxy.addr,
        &format!("/live/a/1.ts?__token__={other_stream}"),
    )
    .await
    .unwrap();
    assert_eq!(
        wrong_path.header("x-parallax-auth"),
        Some("path-not-allowed")
    );
    assert_eq!(origin.total(), 0, "refused requests never reach the origin");

    let token = sign("/live/a/*");
    for _ in 0..2 {
        let ok = get(edge.proxy.addr, &format!("/live/a/1.ts?__token__={token}"))
            .await
            .unwrap();
        assert_eq!(ok.status, 200, "{}", edge.proxy.log());
        assert_eq!(ok.body, pattern(2000, 7));
    }
    assert_eq!(
        origin.hits("/live/a/1.ts"),
        1,
        "the token is not part of the cache key"
    );

    let metrics = metrics_text(edge.metrics).await;
    assert_eq!(
        sample(
            &metrics,
            "parallax_module_counter_total",
            &["module=\"auth\"", "name=\"denied-missing\""]
        ),
        1.0
    );
    assert!(
        sample(
            &metrics,
            "parallax_module_calls_total",
            &["module=\"auth\"", "outcome=\"ok\""]
        ) >= 5.0
    );
}

#[tokio::test]
async fn region_steer_sends_viewers_of_a_closed_region_to_the_other_regions_group() {
    let eu = Origin::start().await;
    let us = Origin::start().await;
    for (origin, body) in [(&eu, "from eu"), (&us, "from us")] {
        // no-store: each request must reach the group it was steered to, not the cache.
        origin.set(
            "/live/a/1.ts",
            Reply::ok(body).header("cache-control", "no-store"),
        );
    }
    let edge = Edge::start(
        &[("region-steer", "region-steer")],
        &format!(
            "[[wasm.modules]]\nname = \"steer\"\nfile = \"region-steer\"\n\
             config = {{ regions = \"eu,us\", region.eu.group = \"eu\", region.us.group = \"us\", \
             country.DE = \"eu\", country.US = \"us\" }}\n\
             [[wasm.chains]]\nmodules = [\"steer\"]\n\
             [[upstreams]]\nname = \"eu\"\nprimary.address = \"{}\"\nhealth_check.enabled = false\n\
             [[upstreams]]\nname = \"us\"\nprimary.address = \"{}\"\nhealth_check.enabled = false\n",
            eu.host_port(),
            us.host_port()
        ),
    )
    .await;
    let viewer = |country: &'static str| {
        let addr = edge.proxy.addr;
        async move {
            get_with(
                addr,
                "/live/a/1.ts",
                &[("cloudfront-viewer-country", country)],
            )
            .await
            .unwrap()
        }
    };

    assert_eq!(viewer("DE").await.body, b"from eu");
    assert_eq!(viewer("US").await.body, b"from us");

    let closed = edge.admin("POST", "/regions/eu/close").await;
    assert_eq!(closed.status, 200);
    let steered = viewer("DE").await;
    assert_eq!(steered.body, b"from us", "{}", edge.proxy.log());
    assert!(
        steered
            .headers
            .iter()
            .any(|(n, v)| n == "set-cookie" && v.starts_with("parallax-region=us")),
        "the viewer is made sticky to where it was sent: {:?}",
        steered.headers
    );

    assert_eq!(edge.admin("POST", "/regions/eu/open").await.status, 200);
    assert_eq!(viewer("DE").await.body, b"from eu");

    // A returning viewer whose cookie already names its region: the request hook says so (WIT
    // `request-scope`) and the response hook is not called for that request.
    let response_calls = || async {
        let metrics = metrics_text(edge.metrics).await;
        let labels = ["module=\"steer\"", "hook=\"response\"", "outcome=\"ok\""];
        sample(&metrics, "parallax_module_calls_total", &labels)
    };
    let before = response_calls().await;
    let returning = get_with(
        edge.proxy.addr,
        "/live/a/1.ts",
        &[
            ("cloudfront-viewer-country", "DE"),
            ("cookie", "parallax-region=eu"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(returning.body, b"from eu");
    assert!(returning.header("set-cookie").is_none());
    assert_eq!(
        response_calls().await,
        before,
        "skipped for the returning viewer"
    );
    let first_visit = viewer("DE").await;
    assert!(first_visit
        .header("set-cookie")
        .is_some_and(|v| v.starts_with("parallax-region=eu")));
    assert_eq!(
        response_calls().await,
        before + 1.0,
        "called for a first visit"
    );
}

#[tokio::test]
async fn playlist_rewrite_makes_uris_absolute_before_the_cache_and_adds_each_viewers_token_after_it(
) {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n\
                    #EXTINF:2.000,\n7.ts\n#EXTINF:2.000,\n8.ts\n";
    origin.set(
        "/live/a/index.m3u8",
        Reply::ok(playlist)
            .header("content-type", "application/vnd.apple.mpegurl")
            .header("cache-control", "max-age=1"),
    );
    let edge = Edge::start(
        &[("playlist-rewrite", "playlist-rewrite")],
        &format!(
            "[[wasm.modules]]\nname = \"absolute\"\nfile = \"playlist-rewrite\"\n\
             body_stage = \"before-cache\"\nconfig = {{ base.eu = \"https://eu.cdn.example\" }}\n\
             [[wasm.modules]]\nname = \"tokens\"\nfile = \"playlist-rewrite\"\n\
             body_stage = \"after-cache\"\nconfig = {{ token-name = \"__token__\" }}\n\
             [[wasm.chains]]\npath_prefix = \"/live/\"\nmodules = [\"absolute\", \"tokens\"]\n{}",
            upstream_config(&origin, None)
        ),
    )
    .await;

    for token in ["viewer-one", "viewer-two"] {
        let resp = get(
            edge.proxy.addr,
            &format!("/live/a/index.m3u8?__token__={token}"),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200, "{}", edge.proxy.log());
        assert!(resp.complete, "the rewritten body's framing is right");
        assert!(
            resp.header("content-length").is_none()
                || resp.header("content-length") == Some(&resp.body.len().to_string())
        );
        if token == "viewer-two" {
            // A stored playlist is rewritten before its header goes out: exact framing, one
            // write, like any other hit (the miss before it was re-framed as chunks).
            assert_eq!(resp.header("x-cache"), Some("HIT"));
            assert_eq!(
                resp.header("content-length"),
                Some(resp.body.len().to_string().as_str()),
                "{:?}",
                resp.headers
            );
            assert!(resp.header("transfer-encoding").is_none());
        }
        let body = String::from_utf8(resp.body).unwrap();
        assert!(
            body.contains(&format!(
                "https://eu.cdn.example/live/a/7.ts?__token__={token}"
            )),
            "{body}"
        );
        assert!(body.contains("#EXT-X-MEDIA-SEQUENCE:7"), "{body}");
        assert!(
            !body.contains("viewer-one") || token == "viewer-one",
            "tokens never leak between viewers: {body}"
        );
    }
    assert_eq!(
        origin.hits("/live/a/index.m3u8"),
        1,
        "the absolute-URI rewrite is cached and shared; only the token step runs per viewer"
    );
}

#[tokio::test]
async fn a_module_reads_what_the_admin_api_writes_to_the_key_value_store() {
    let origin = Origin::start().await;
    let edge = Edge::start(
        &[("test-guest", "guest")],
        &format!(
            "[[wasm.modules]]\nname = \"echo\"\nfile = \"guest\"\n\
             config = {{ behave = \"kv-echo\", key = \"flags/greeting\" }}\n\
             [[wasm.chains]]\nmodules = [\"echo\"]\n{}",
            upstream_config(&origin, None)
        ),
    )
    .await;
    assert_eq!(get(edge.proxy.addr, "/x").await.unwrap().body, b"unset");
    let auth = format!("Bearer {TOKEN}");
    let put = send_body(
        edge.admin,
        "PUT",
        "/kv/flags/greeting",
        &[("authorization", &auth)],
        b"hello from admin",
    )
    .await
    .unwrap();
    assert_eq!(put.status, 200);
    let resp = get(edge.proxy.addr, "/x").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello from admin");
    assert_eq!(
        resp.header("x-test-guest"),
        Some("test"),
        "local responses run response hooks"
    );
    assert_eq!(origin.total(), 0);
}

/// The test guest in every hostile mode behind its own path prefix, plus a path with no module.
async fn hostile_edge(origin: &Origin) -> Edge {
    // 128 MiB for `big` and `over`, so their answers are not cut short inside the guest by the
    // memory cap; every other module keeps the default 16 MiB.
    let mut config = String::from("memory_bytes = 134217728\n");
    let before_cache = "body_stage = \"before-cache\"\n";
    let modes = [
        ("loop", "loop", "fail-closed", 503, "", ""),
        ("alloc", "alloc", "fail-open", 503, "", ""),
        ("trap", "trap", "fail-closed", 500, "", ""),
        ("bad", "bad-status", "fail-closed", 502, "", ""),
        // 100 MB: the guest cannot even fill it within its 5 ms.
        ("big", "big-body", "fail-open", 503, before_cache, ""),
        // Just over the 1 MiB body cap, with time to build it: the host refuses the answer.
        (
            "over",
            "big-body",
            "fail-open",
            503,
            "body_stage = \"before-cache\"\ncpu_ms_per_call = 200\n",
            ", big-bytes = \"1100000\"",
        ),
        // Fails on a stored playlist after the cache, while the header can still change.
        (
            "bodytrap",
            "body-trap",
            "fail-closed",
            503,
            "body_stage = \"after-cache\"\n",
            "",
        ),
    ];
    for (name, behave, failure, status, extra, more) in modes {
        let memory = if matches!(name, "big" | "over") {
            134217728
        } else {
            16 << 20
        };
        config.push_str(&format!(
            "[[wasm.modules]]\nname = \"{name}\"\nfile = \"guest\"\nfailure = \"{failure}\"\n\
             failure_status = {status}\nmemory_bytes = {memory}\n{extra}\
             config = {{ behave = \"{behave}\"{more} }}\n"
        ));
    }
    for (name, ..) in modes {
        config.push_str(&format!(
            "[[wasm.chains]]\npath_prefix = \"/{name}/\"\nmodules = [\"{name}\"]\n"
        ));
    }
    config.push_str(&upstream_config(origin, None));
    Edge::start(&[("test-guest", "guest")], &config).await
}

#[tokio::test]
async fn a_looping_allocating_trapping_or_lying_module_is_contained_and_everyone_else_is_served() {
    let origin = Origin::start().await;
    for prefix in [
        "loop", "alloc", "trap", "bad", "big", "over", "bodytrap", "plain",
    ] {
        origin.set(&format!("/{prefix}/1.ts"), Reply::ok(pattern(1000, 3)));
        origin.set(
            &format!("/{prefix}/index.m3u8"),
            Reply::ok("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n1.ts\n")
                .header("content-type", "application/vnd.apple.mpegurl"),
        );
    }
    let edge = hostile_edge(&origin).await;
    let fetch = |path: &'static str| {
        let addr = edge.proxy.addr;
        async move { get(addr, path).await.unwrap() }
    };

    // Each hostile call in turn, with a well-behaved request after each one.
    let started = Instant::now();
    let looped = fetch("/loop/1.ts").await;
    let loop_time = started.elapsed();
    assert_eq!(looped.status, 503, "fail-closed answers its failure_status");
    assert!(
        loop_time < Duration::from_secs(2),
        "the CPU deadline (5 ms) stops the loop, took {loop_time:?}"
    );
    let alloc = fetch("/alloc/1.ts").await;
    assert_eq!(alloc.status, 200, "fail-open skips the module");
    assert_eq!(alloc.body, pattern(1000, 3));
    assert_eq!(
        fetch("/trap/1.ts").await.status,
        500,
        "{}",
        edge.proxy.log()
    );
    assert_eq!(fetch("/bad/1.ts").await.status, 502);
    for path in ["/big/index.m3u8", "/over/index.m3u8"] {
        let resp = fetch(path).await;
        assert_eq!(
            resp.status, 200,
            "fail-open: the playlist goes out unchanged"
        );
        assert!(resp.complete, "{path}");
        assert!(resp.body.starts_with(b"#EXTM3U"), "{path}");
        assert!(resp.body.len() < 1000, "{path}");
    }
    assert_eq!(fetch("/plain/1.ts").await.body, pattern(1000, 3));
    // The miss streams the playlist out as it arrives: its header is gone before the hook
    // fails, so that client only sees the body cut short. From the cache the playlist is
    // whole before the header goes out, and fail-closed answers its status.
    let streamed = fetch("/bodytrap/index.m3u8").await;
    assert!(!streamed.complete || streamed.status == 503, "{streamed:?}");
    let stored = fetch("/bodytrap/index.m3u8").await;
    assert_eq!(stored.status, 503, "{}", edge.proxy.log());
    assert!(stored.complete && stored.body.is_empty(), "{stored:?}");

    // Again, concurrently with clean traffic: nobody else notices.
    let mut mixed = Vec::new();
    for _ in 0..20 {
        mixed.push(tokio::spawn(fetch("/plain/1.ts")));
        mixed.push(tokio::spawn(fetch("/loop/1.ts")));
        mixed.push(tokio::spawn(fetch("/trap/1.ts")));
    }
    for (i, task) in mixed.into_iter().enumerate() {
        let resp = task.await.unwrap();
        let expected = [200, 503, 500][i % 3];
        assert_eq!(resp.status, expected, "request {i}");
        if expected == 200 {
            assert_eq!(resp.body, pattern(1000, 3));
        }
    }

    let metrics = metrics_text(edge.metrics).await;
    let failures = |module: &str, outcome: &str| {
        sample(
            &metrics,
            "parallax_module_calls_total",
            &[
                &format!("module=\"{module}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    assert!(
        failures("alloc", "trap") + failures("alloc", "timeout") >= 1.0,
        "alloc ends in a trap (memory cap) or at its deadline:\n{metrics}"
    );
    for (module, outcome) in [
        ("loop", "timeout"),
        ("trap", "trap"),
        ("bad", "bad_return"),
        ("big", "timeout"),
        ("over", "bad_return"),
        ("bodytrap", "trap"),
    ] {
        assert!(
            failures(module, outcome) >= 1.0,
            "{module} {outcome}:\n{metrics}"
        );
    }
    let log = edge.proxy.log();
    assert!(log.contains("module call failed"), "{log}");
    assert!(log.contains("ran past its CPU deadline"), "{log}");
    assert!(log.contains("over wasm.max_body_bytes"), "{log}");
}

/// `hook-needs`: an entry whose config leaves a hook out never has it called; another entry of
/// the same file with its own config still does.
#[tokio::test]
async fn hooks_a_module_says_its_config_does_not_need_are_not_called() {
    let origin = Origin::start().await;
    origin.set("/a/1.ts", Reply::ok(pattern(100, 1)));
    origin.set("/b/1.ts", Reply::ok(pattern(100, 2)));
    let edge = Edge::start(
        &[("test-guest", "guest")],
        &format!(
            "[[wasm.modules]]\nname = \"lean\"\nfile = \"guest\"\n\
             config = {{ tag = \"lean\", skip-hooks = \"response, body\" }}\n\
             [[wasm.modules]]\nname = \"full\"\nfile = \"guest\"\nconfig = {{ tag = \"full\" }}\n\
             [[wasm.chains]]\npath_prefix = \"/a/\"\nmodules = [\"lean\"]\n\
             [[wasm.chains]]\npath_prefix = \"/b/\"\nmodules = [\"full\"]\n{}",
            upstream_config(&origin, None)
        ),
    )
    .await;
    for _ in 0..2 {
        let lean = get(edge.proxy.addr, "/a/1.ts").await.unwrap();
        assert_eq!(lean.status, 200);
        assert_eq!(lean.header("x-test-guest"), None, "response hook skipped");
        let full = get(edge.proxy.addr, "/b/1.ts").await.unwrap();
        assert_eq!(full.header("x-test-guest"), Some("full"));
    }
    let body = String::from_utf8(get(edge.metrics, "/metrics").await.unwrap().body).unwrap();
    let calls = |module: &str, hook: &str| {
        body.lines()
            .find(|l| {
                l.starts_with("parallax_module_calls_total")
                    && l.contains(&format!("module=\"{module}\""))
                    && l.contains(&format!("hook=\"{hook}\""))
                    && l.contains("outcome=\"ok\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(calls("lean", "request").as_deref(), Some("2"), "{body}");
    assert_eq!(calls("lean", "response").as_deref(), Some("0"), "{body}");
    assert_eq!(calls("full", "response").as_deref(), Some("2"), "{body}");
    let modules = String::from_utf8(edge.admin("GET", "/modules").await.body).unwrap();
    assert!(modules.contains("hook-needs"), "{modules}");
}
