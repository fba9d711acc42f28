//! A policy module for the proxy's own tests: well-behaved by default, hostile on demand.
//!
//! Its config key `behave` picks what every hook does:
//!
//! | `behave`       | request hook                       | body hook                        |
//! |----------------|------------------------------------|----------------------------------|
//! | `ok` (default) | continue; counts `requests`        | appends `#TEST-GUEST` to the body |
//! | `loop`         | never returns                      | never returns                    |
//! | `alloc`        | allocates until memory runs out    | same                             |
//! | `trap`         | panics                             | panics                           |
//! | `bad-status`   | answers with HTTP status 42        | unchanged                        |
//! | `big-body`     | continue                           | returns a body of `big-bytes` (default 100 MB) |
//! | `body-trap`    | continue                           | panics                           |
//! | `kv-echo`      | answers 200 with kv value `key`    | unchanged                        |
//!
//! The response hook always sets `x-test-guest: <tag>` (config `tag`, default `test`), so a test
//! can tell which module (and which of two files) answered. `self-test` fails when `behave` is
//! `fail-self-test`.
//!
//! It is built against a frozen copy of interface 0.2.0 (`wit-0.2.0/`), not the current `wit/`:
//! every test that loads it also shows that the proxy still runs modules built against an
//! earlier patch version of its interface.

mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package parallax:test-guest;
            world test-guest {
                include parallax:policy/host@0.2.0;
                export parallax:policy/request-hook@0.2.0;
                export parallax:policy/response-hook@0.2.0;
                export parallax:policy/body-hook@0.2.0;
                export parallax:policy/self-test@0.2.0;
                export parallax:policy/hook-needs@0.2.0;
            }
        "#,
        path: "wit-0.2.0",
        generate_all,
    });
}

use bindings::exports::parallax::policy::{
    body_hook, hook_needs, request_hook, response_hook, self_test,
};
use bindings::parallax::policy::types::{
    BodyAction, Header, HeaderChanges, LocalResponse, Request, RequestAction, Response,
};
use bindings::parallax::policy::{config, counters, kv};

/// What the module was told to do.
fn behave() -> String {
    config::get("behave").unwrap_or_else(|| "ok".into())
}

/// Spins until the host's CPU deadline interrupts it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Grows a vector until the allocator fails (the host's memory cap).
fn hog() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        chunk[0] = 1;
        chunks.push(std::hint::black_box(chunk));
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct TestGuest;

impl request_hook::Guest for TestGuest {
    fn on_request(_req: &Request) -> RequestAction {
        match behave().as_str() {
            "loop" => spin(),
            "alloc" => hog(),
            "trap" => panic!("test-guest told to trap"),
            "bad-status" => RequestAction::Respond(LocalResponse {
                status: 42,
                headers: Vec::new(),
                body: Vec::new(),
            }),
            "kv-echo" => {
                let key = config::get("key").unwrap_or_default();
                let body = match kv::get(&key) {
                    Ok(Some(value)) => value,
                    Ok(None) => "unset".into(),
                    Err(e) => format!("error: {e:?}"),
                };
                RequestAction::Respond(LocalResponse {
                    status: 200,
                    headers: vec![Header {
                        name: "content-type".into(),
                        value: "text/plain".into(),
                    }],
                    body: body.into_bytes(),
                })
            }
            _ => {
                counters::add("requests", 1);
                RequestAction::Continue
            }
        }
    }
}

impl response_hook::Guest for TestGuest {
    fn on_response(_req: &Request, _resp: &Response) -> HeaderChanges {
        HeaderChanges {
            remove: Vec::new(),
            set: vec![Header {
                name: "x-test-guest".into(),
                value: config::get("tag").unwrap_or_else(|| "test".into()),
            }],
            append: Vec::new(),
        }
    }
}

impl body_hook::Guest for TestGuest {
    fn rewrite_body(_req: &Request, _content_type: String, body: Vec<u8>) -> BodyAction {
        match behave().as_str() {
            "loop" => spin(),
            "alloc" => hog(),
            "trap" | "body-trap" => panic!("test-guest told to trap"),
            "big-body" => {
                let size = config::get("big-bytes")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100_000_000);
                BodyAction::Replace(vec![b'#'; size])
            }
            "ok" => {
                let mut body = body;
                body.extend_from_slice(b"#TEST-GUEST\n");
                BodyAction::Replace(body)
            }
            _ => BodyAction::Unchanged,
        }
    }
}

impl hook_needs::Guest for TestGuest {
    /// Every hook, minus those named in config `skip-hooks` (comma-separated).
    fn needed() -> hook_needs::Hooks {
        let skip = config::get("skip-hooks").unwrap_or_default();
        let mut hooks = hook_needs::Hooks::empty();
        for (name, hook) in [
            ("request", hook_needs::Hooks::REQUEST),
            ("response", hook_needs::Hooks::RESPONSE),
            ("body", hook_needs::Hooks::BODY),
        ] {
            if !skip.split(',').any(|s| s.trim() == name) {
                hooks = hooks | hook;
            }
        }
        hooks
    }
}

impl self_test::Guest for TestGuest {
    fn run() -> Result<(), String> {
        match behave().as_str() {
            "fail-self-test" => Err("told to fail its self-test".into()),
            _ => Ok(()),
        }
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(TestGuest with_types_in bindings);
