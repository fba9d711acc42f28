//! The component's exports: thin wrappers that read the config and clock from the host and call
//! [`crate::auth`]. Everything here is the wit-bindgen boundary; nothing here decides.

use std::sync::OnceLock;

use crate::auth;
use crate::config::Config;

/// The bindings wit-bindgen generates for this module's world.
pub mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package parallax:token-auth;
            world token-auth {
                include parallax:policy/host@0.2.1;
                export parallax:policy/request-hook@0.2.1;
                export parallax:policy/response-hook@0.2.1;
                export parallax:policy/self-test@0.2.1;
                export parallax:policy/hook-needs@0.2.1;
            }
        "#,
        path: "../../wit",
        // Interfaces of another package (ours, parallax:policy) are generated here too.
        generate_all,
    });
}

use bindings::exports::parallax::policy::{hook_needs, request_hook, response_hook, self_test};
use bindings::parallax::policy::types::{Header, HeaderChanges, Request, RequestAction, Response};
use bindings::parallax::policy::{clock, config, counters, log, request_scope};

/// The config is fixed for a loaded module version (a change loads a new version, and with it
/// new instances), so one parse per instance is enough.
fn config() -> &'static Result<Config, String> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_entries(&config::entries()))
}

/// Copies out of the host's request what [`auth`] reads: each method is a host call, so only
/// the path, the query, and — when the query has no token — the token header and the cookies.
fn read_request(config: &Config, req: &Request) -> auth::Request {
    let query = req.query();
    let headers = if auth::query_has_token(config, &query) {
        Vec::new()
    } else {
        token_headers(config, req)
    };
    auth::Request {
        path: req.path(),
        query,
        headers,
    }
}

/// The token header and the cookies, where the config names them.
fn token_headers(config: &Config, req: &Request) -> Vec<Header> {
    let mut headers = Vec::new();
    if let Some(name) = &config.header_name {
        if let Some(value) = req.header(name) {
            headers.push(Header {
                name: name.clone(),
                value,
            });
        }
    }
    if config.cookie_name.is_some() {
        headers.extend(req.header_values("cookie").into_iter().map(|value| Header {
            name: "cookie".into(),
            value,
        }));
    }
    headers
}

/// Whether the proxy calls the response hook at all under `config` (`hook-needs`): only to issue
/// the session cookie. Asking to skip it per request is worth a host call only then.
fn response_hook_called(config: &Config) -> bool {
    config.session_cookie
}

// Natively (unit tests) nothing exports it; the impls still compile so type errors show up.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct TokenAuth;

impl request_hook::Guest for TokenAuth {
    fn on_request(req: &Request) -> RequestAction {
        let now_secs = clock::now_ms() / 1000;
        let (action, verdict) = match config() {
            Ok(config) => {
                let req = read_request(config, req);
                let (action, verdict) = auth::on_request(config, &req, now_secs);
                if response_hook_called(config)
                    && !matches!(verdict, Ok(source) if auth::response_needed(config, &req, source))
                {
                    request_scope::skip_response_hook();
                }
                (action, verdict)
            }
            Err(e) => (auth::misconfigured(), Err(("misconfigured", e.clone()))),
        };
        match verdict {
            Ok(_) => counters::add("allowed", 1),
            // Counter names stay the fixed set of reason codes (the host caps a module at 64).
            Err((code, why)) => {
                counters::add(&format!("denied-{code}"), 1);
                log::log(log::Level::Info, &format!("403 for {}: {why}", req.path()));
            }
        }
        action
    }
}

impl response_hook::Guest for TokenAuth {
    fn on_response(req: &Request, resp: &Response) -> HeaderChanges {
        match config() {
            // Only a session cookie needs anything from the request or the response.
            Ok(config) if response_hook_called(config) => {
                let resp = auth::Response {
                    status: resp.status(),
                };
                let req = read_request(config, req);
                auth::on_response(config, &req, &resp, clock::now_ms() / 1000)
            }
            _ => HeaderChanges {
                remove: Vec::new(),
                set: Vec::new(),
                append: Vec::new(),
            },
        }
    }
}

impl hook_needs::Guest for TokenAuth {
    /// The response hook only issues the session cookie: without `session-cookie` it is not
    /// called at all.
    fn needed() -> hook_needs::Hooks {
        match config() {
            Ok(config) if response_hook_called(config) => {
                hook_needs::Hooks::REQUEST | hook_needs::Hooks::RESPONSE
            }
            _ => hook_needs::Hooks::REQUEST,
        }
    }
}

impl self_test::Guest for TokenAuth {
    fn run() -> Result<(), String> {
        let config = config().as_ref().map_err(Clone::clone)?;
        auth::self_test(config, clock::now_ms() / 1000)
    }
}

// Only in the component: export names such as `parallax:policy/request-hook@0.2.1#on-request`
// are not valid symbols for a native shared library.
#[cfg(target_arch = "wasm32")]
bindings::export!(TokenAuth with_types_in bindings);
