//! What one policy-module hook call costs in the host, away from the proxy: loads a module with
//! the checks `proxy module check` runs (compile, first instance, self-test) and times `on-request` and
//! `on-response` on a request with a browser's headers, 20,000 calls per round.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p module-template
//! cargo run --release --example hook_call_cost -- target/wasm32-wasip2/release/module_template.wasm
//! ```

use std::sync::Arc;
use std::time::Instant;

use parallax_proxy::wasm::host::HostServices;
use parallax_proxy::wasm::runtime;
use parallax_proxy::wasm::view::{RequestView, ResponseView};
use parallax_proxy::wasm::ModuleConfig;
use pingora::http::{RequestHeader, ResponseHeader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: hook_call_cost <module.wasm>")?;
    let bytes = std::fs::read(&path)?;
    let entry = ModuleConfig {
        name: "bench".into(),
        ..ModuleConfig::default()
    };
    let bound = runtime::check(bytes, &entry, HostServices::standalone()?)?;
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
    let req = Arc::new(RequestView::new(
        &head,
        "192.0.2.1".into(),
        "default".into(),
    ));
    let mut resp = ResponseHeader::build(200, None)?;
    resp.append_header("content-type", "application/vnd.apple.mpegurl")?;
    resp.append_header("cache-control", "max-age=1")?;
    resp.append_header("content-length", "420")?;
    let calls = 20_000u32;
    for round in 1..=3 {
        let started = Instant::now();
        for _ in 0..calls {
            bound.on_request(&req).map_err(|e| e.to_string())?;
        }
        let request = started.elapsed() / calls;
        let started = Instant::now();
        for _ in 0..calls {
            let mut view = Some(ResponseView::new(&resp, "HIT"));
            bound
                .on_response(&req, &mut view)
                .map_err(|e| e.to_string())?;
        }
        let response = started.elapsed() / calls;
        println!(
            "round {round}: on-request {request:?} per call, on-response {response:?} per call"
        );
    }
    Ok(())
}
