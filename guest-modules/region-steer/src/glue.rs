//! The component's exports and the host-backed [`Env`]: thin wrappers around [`crate::steer`].

use std::cell::RefCell;
use std::sync::OnceLock;

use crate::config::{Config, Mode};
use crate::steer::{self, Env, Memory};

/// The bindings wit-bindgen generates for this module's world.
pub mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package parallax:region-steer;
            world region-steer {
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
        // Tests compare decisions whole.
        additional_derives: [PartialEq],
    });
}

use bindings::exports::parallax::policy::{hook_needs, request_hook, response_hook, self_test};
use bindings::parallax::policy::types::{Header, HeaderChanges, Request, RequestAction, Response};
use bindings::parallax::policy::{config, counters, kv, log, request_scope, upstreams};

/// The config is fixed for a loaded module version, so one parse per instance is enough.
fn config() -> &'static Result<Config, String> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_entries(&config::entries()))
}

thread_local! {
    /// Region states seen by this instance, for when the store is unreachable. Lost with the
    /// instance; a new one starts from "open" until it reads the store.
    static MEMORY: RefCell<Memory> = RefCell::new(Memory::default());
}

struct HostEnv;

impl Env for HostEnv {
    fn kv_get(&mut self, key: &str) -> Result<Option<String>, String> {
        kv::get(key).map_err(|e| match e {
            kv::KvError::Unavailable(why) => why,
            kv::KvError::TooLarge => "key too large".into(),
        })
    }
    fn group_healthy(&mut self, group: &str) -> Option<bool> {
        upstreams::usable(group)
    }
    fn warn(&mut self, message: &str) {
        log::log(log::Level::Warn, message);
    }
}

/// Whether the proxy calls the response hook at all under `config` (`hook-needs`): only to set
/// the sticky cookie. Asking to skip it per request is worth a host call only then.
fn response_hook_called(config: &Config) -> bool {
    config.sticky_cookie.is_some()
}

/// Copies out of the host's request what [`steer`] reads: each method is a host call, so only
/// what the config makes relevant.
fn read_request(config: &Config, req: &Request) -> steer::Request {
    let headers = read_headers(config, req, &[&config.viewer_header, &config.region_header]);
    // Host, path and query only go into a redirect's location.
    let redirects = config.mode == Mode::Redirect;
    let read = |get: fn(&Request) -> String| if redirects { get(req) } else { String::new() };
    steer::Request {
        host: read(Request::host),
        path: read(Request::path),
        query: read(Request::query),
        upstream_group: req.upstream_group(),
        headers,
    }
}

/// What [`steer::on_response`] reads: the region header (which the request hook set) and the
/// cookies.
fn read_for_cookie(config: &Config, req: &Request) -> steer::Request {
    steer::Request {
        host: String::new(),
        path: String::new(),
        query: String::new(),
        upstream_group: String::new(),
        headers: read_headers(config, req, &[&config.region_header]),
    }
}

/// The headers called `names` that are present, and the cookies when a sticky cookie is on.
fn read_headers(config: &Config, req: &Request, names: &[&String]) -> Vec<Header> {
    let mut headers = Vec::new();
    for name in names {
        if let Some(value) = req.header(name) {
            headers.push(Header {
                name: (*name).clone(),
                value,
            });
        }
    }
    if config.sticky_cookie.is_some() {
        headers.extend(req.header_values("cookie").into_iter().map(|value| Header {
            name: "cookie".into(),
            value,
        }));
    }
    headers
}

// Natively (unit tests) nothing exports it; the impls still compile so type errors show up.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct RegionSteer;

impl request_hook::Guest for RegionSteer {
    fn on_request(req: &Request) -> RequestAction {
        let Ok(config) = config() else {
            // Steering is an optimisation: with a broken config the request goes on unchanged.
            counters::add("misconfigured", 1);
            return RequestAction::Continue;
        };
        let req = read_request(config, req);
        let decision =
            MEMORY.with(|m| steer::decide(config, &req, &mut HostEnv, &mut m.borrow_mut()));
        if decision.kv_unavailable {
            counters::add("kv-unavailable", 1);
        }
        if decision.none_usable {
            counters::add("no-usable-region", 1);
        }
        let action = steer::action(config, &req, &decision);
        if response_hook_called(config) && !steer::response_needed(config, &req, &decision, &action)
        {
            request_scope::skip_response_hook();
        }
        match &action {
            RequestAction::Redirect(_) => counters::add("redirected", 1),
            _ if decision.chosen != decision.home => counters::add("steered", 1),
            _ => {}
        }
        action
    }
}

impl response_hook::Guest for RegionSteer {
    fn on_response(req: &Request, resp: &Response) -> HeaderChanges {
        match config() {
            // Only the sticky cookie needs anything from the request or the response.
            Ok(config) if response_hook_called(config) => {
                let resp = steer::Response {
                    status: resp.status(),
                };
                steer::on_response(config, &read_for_cookie(config, req), &resp)
            }
            _ => HeaderChanges {
                remove: Vec::new(),
                set: Vec::new(),
                append: Vec::new(),
            },
        }
    }
}

impl hook_needs::Guest for RegionSteer {
    /// The response hook only sets the sticky cookie: with `sticky-cookie` empty it is not
    /// called at all.
    fn needed() -> hook_needs::Hooks {
        match config() {
            Ok(config) if !response_hook_called(config) => hook_needs::Hooks::REQUEST,
            _ => hook_needs::Hooks::REQUEST | hook_needs::Hooks::RESPONSE,
        }
    }
}

impl self_test::Guest for RegionSteer {
    fn run() -> Result<(), String> {
        let config = config().as_ref().map_err(Clone::clone)?;
        for region in &config.regions {
            if upstreams::usable(&region.group).is_none() {
                return Err(format!(
                    "region {}: upstream group {:?} is not in the proxy config",
                    region.name, region.group
                ));
            }
        }
        Ok(())
    }
}

// Only in the component: export names are not valid symbols for a native shared library.
#[cfg(target_arch = "wasm32")]
bindings::export!(RegionSteer with_types_in bindings);
