//! What one policy-module hook call costs in the host, away from the proxy: loads a module with
//! the checks `proxy module check` runs (compile, first instance, self-test) and times `on-request` and
//! `on-response` with a one-header request, 20,000 calls per round.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p module-template
//! cargo run --release --example hook_call_cost -- target/wasm32-wasip2/release/module_template.wasm
//! ```

use std::time::Instant;

use parallax_proxy::wasm::host::{wit, HostServices};
use parallax_proxy::wasm::runtime;
use parallax_proxy::wasm::ModuleConfig;

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
    let header = |name: &str, value: &str| wit::Header {
        name: name.into(),
        value: value.into(),
    };
    let req = wit::Request {
        method: "GET".into(),
        host: "cdn.example".into(),
        path: "/live/a/index.m3u8".into(),
        query: String::new(),
        headers: vec![header("host", "cdn.example")],
        client_ip: "192.0.2.1".into(),
        upstream_group: "default".into(),
    };
    let resp = wit::Response {
        status: 200,
        headers: vec![header("content-type", "application/vnd.apple.mpegurl")],
        cache_status: "HIT".into(),
    };
    let calls = 20_000u32;
    for round in 1..=3 {
        let started = Instant::now();
        for _ in 0..calls {
            bound.on_request(&req).map_err(|e| e.to_string())?;
        }
        let request = started.elapsed() / calls;
        let started = Instant::now();
        for _ in 0..calls {
            bound.on_response(&req, &resp).map_err(|e| e.to_string())?;
        }
        let response = started.elapsed() / calls;
        println!(
            "round {round}: on-request {request:?} per call, on-response {response:?} per call"
        );
    }
    Ok(())
}
