//! What one policy-module hook call costs in the host, away from the proxy: loads a module with
//! the checks `proxy module check` runs (compile, first instance, self-test) and times `on-request` and
//! `on-response` on a request with a browser's headers, 20,000 calls per round.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p module-template
//! cargo run --release --example hook_call_cost -- target/wasm32-wasip2/release/module_template.wasm [--cold]
//! ```
//!
//! After the file: `key=value` sets a key of the module's config (dotted keys as written in a
//! TOML table, e.g. `region.eu.group=default`), `header:name=value` adds a request header. As
//! in the proxy, the response hook is timed only when the module needs it under this config
//! (`hook-needs`) and its request hook did not skip it for the request (`request-scope`):
//! "skipped" counts those requests, whose response hook costs nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parallax_proxy::upstream::{GroupConfig, OriginConfig, Upstreams};
use parallax_proxy::wasm::host::HostServices;
use parallax_proxy::wasm::runtime;
use parallax_proxy::wasm::view::{RequestView, ResponseView};
use parallax_proxy::wasm::{ConfigValue, ModuleConfig};
use pingora::http::{RequestHeader, ResponseHeader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: hook_call_cost <module.wasm>")?;
    let bytes = std::fs::read(&path)?;
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut entry = ModuleConfig {
        name: "bench".into(),
        ..ModuleConfig::default()
    };
    let mut extra_headers = Vec::new();
    for arg in args.iter().filter(|a| !a.starts_with("--")) {
        let (key, value) = arg.split_once('=').ok_or("expected key=value")?;
        match key.strip_prefix("header:") {
            Some(name) => extra_headers.push((name.to_owned(), value.to_owned())),
            None => {
                entry
                    .config
                    .insert(key.to_owned(), ConfigValue::Text(value.to_owned()));
            }
        }
    }
    // One upstream group, "default" (healthy, never checked), for modules that read groups.
    let mut services = HostServices::standalone()?;
    let group = GroupConfig {
        primary: OriginConfig::at("127.0.0.1:9".to_owned()),
        ..GroupConfig::default()
    };
    services.upstreams = Some(Upstreams::new(&[group], services.metrics.clone())?);
    let bound = runtime::check(bytes, &entry, services)?;
    let mut head = RequestHeader::build("GET", b"/live/a/index.m3u8", None)?;
    for (name, value) in [
        ("host", "cdn.example"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0",
        ),
        ("accept", "*/*"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("origin", "https://player.example"),
        ("referer", "https://player.example/watch"),
        ("cloudfront-viewer-country", "DE"),
        ("x-forwarded-for", "198.51.100.7"),
    ] {
        head.append_header(name, value)?;
    }
    for (name, value) in extra_headers {
        head.append_header(name, value)?;
    }
    let req = Arc::new(RequestView::new(
        &head,
        "192.0.2.1".into(),
        "default".into(),
    ));
    let mut resp = ResponseHeader::build(200, None)?;
    resp.append_header("content-type", "application/vnd.apple.mpegurl")?;
    resp.append_header("cache-control", "max-age=1")?;
    resp.append_header("content-length", "420")?;
    // Between two requests a proxy worker runs pingora's request and response path, which
    // pushes wasmtime's data out of the CPU caches. `--cold` imitates that by walking a buffer
    // as large as the L2 cache before every call (outside the timed part).
    let cold = std::env::args().any(|a| a == "--cold");
    let mut evict = vec![0u8; if cold { 2 << 20 } else { 0 }];
    let mut walk = move || {
        for line in evict.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&evict);
    };
    let calls = 20_000u32;
    for round in 1..=3 {
        let (mut request, mut response, mut skipped) = (Duration::ZERO, Duration::ZERO, 0);
        for _ in 0..calls {
            walk();
            let started = Instant::now();
            let (_, skip) = bound.on_request(&req).map_err(|e| e.to_string())?;
            request += started.elapsed();
            if skip || !bound.has_response_hook() {
                skipped += 1;
                continue;
            }
            walk();
            let started = Instant::now();
            let mut view = Some(ResponseView::new(&resp, "HIT"));
            bound
                .on_response(&req, &mut view)
                .map_err(|e| e.to_string())?;
            response += started.elapsed();
        }
        println!(
            "round {round}{}: on-request {:?} per call, on-response {:?} per call made \
             ({skipped} of {calls} skipped), both {:?} per request",
            if cold { " (cold)" } else { "" },
            request / calls,
            response.checked_div(calls - skipped).unwrap_or_default(),
            (request + response) / calls,
        );
    }
    Ok(())
}
