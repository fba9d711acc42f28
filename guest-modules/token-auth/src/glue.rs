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
                include parallax:policy/host@0.1.0;
                export parallax:policy/request-hook@0.1.0;
                export parallax:policy/response-hook@0.1.0;
                export parallax:policy/self-test@0.1.0;
            }
        "#,
        path: "../../wit",
        // Interfaces of another package (ours, parallax:policy) are generated here too.
        generate_all,
    });
}

use bindings::exports::parallax::policy::{request_hook, response_hook, self_test};
use bindings::parallax::policy::types::{HeaderChanges, Request, RequestAction, Response};
use bindings::parallax::policy::{clock, config, counters, log};

/// The config is fixed for a loaded module version (a change loads a new version, and with it
/// new instances), so one parse per instance is enough.
fn config() -> &'static Result<Config, String> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_entries(&config::entries()))
}

// Natively (unit tests) nothing exports it; the impls still compile so type errors show up.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct TokenAuth;

impl request_hook::Guest for TokenAuth {
    fn on_request(req: Request) -> RequestAction {
        let now_secs = clock::now_ms() / 1000;
        let (action, verdict) = match config() {
            Ok(config) => auth::on_request(config, &req, now_secs),
            Err(e) => (auth::misconfigured(), Err(("misconfigured", e.clone()))),
        };
        match verdict {
            Ok(()) => counters::add("allowed", 1),
            // Counter names stay the fixed set of reason codes (the host caps a module at 64).
            Err((code, why)) => {
                counters::add(&format!("denied-{code}"), 1);
                log::log(log::Level::Info, &format!("403 for {}: {why}", req.path));
            }
        }
        action
    }
}

impl response_hook::Guest for TokenAuth {
    fn on_response(req: Request, resp: Response) -> HeaderChanges {
        match config() {
            Ok(config) => auth::on_response(config, &req, &resp, clock::now_ms() / 1000),
            Err(_) => HeaderChanges {
                remove: Vec::new(),
                set: Vec::new(),
                append: Vec::new(),
            },
        }
    }
}

impl self_test::Guest for TokenAuth {
    fn run() -> Result<(), String> {
        let config = config().as_ref().map_err(Clone::clone)?;
        auth::self_test(config, clock::now_ms() / 1000)
    }
}

// Only in the component: export names such as `parallax:policy/request-hook@0.1.0#on-request`
// are not valid symbols for a native shared library.
#[cfg(target_arch = "wasm32")]
bindings::export!(TokenAuth with_types_in bindings);
