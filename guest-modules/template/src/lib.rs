//! A minimal Parallax policy module, to copy and change (docs/modules.md walks through it).
//!
//! It does two things, one per hook:
//! - request hook: a request whose path starts with the config value `deny-prefix` is answered
//!   `403` locally (the cache and the origin never see it); everything else goes on;
//! - response hook: every response gets `x-module-template: <greeting>` (config `greeting`,
//!   default `hello`).
//!
//! The rule lives in plain functions ([`decide`], [`tag`]) with native unit tests; the
//! `wit_bindgen` part below them only moves values between the proxy and those functions.

mod bindings {
    wit_bindgen::generate!({
        // Your module's world: everything the host offers, plus the hooks you implement.
        // Export only the hooks you need; the proxy calls nothing else.
        inline: r#"
            package my:module;
            world module-template {
                include parallax:policy/host@0.2.1;
                export parallax:policy/request-hook@0.2.1;
                export parallax:policy/response-hook@0.2.1;
            }
        "#,
        // The repository's wit/ directory (parallax:policy@0.2.1).
        path: "../../wit",
        generate_all,
    });
}

use bindings::exports::parallax::policy::{request_hook, response_hook};
use bindings::parallax::policy::types::{
    Header, HeaderChanges, LocalResponse, Request, RequestAction, Response,
};
use bindings::parallax::policy::{config, counters};

/// The request rule: 403 for paths under `deny_prefix`, else continue.
pub fn decide(path: &str, deny_prefix: Option<&str>) -> RequestAction {
    match deny_prefix {
        Some(prefix) if !prefix.is_empty() && path.starts_with(prefix) => {
            RequestAction::Respond(LocalResponse {
                status: 403,
                headers: vec![Header {
                    name: "content-type".into(),
                    value: "text/plain".into(),
                }],
                body: b"forbidden by module-template\n".to_vec(),
            })
        }
        _ => RequestAction::Continue,
    }
}

/// The response rule: one header naming the module.
pub fn tag(greeting: Option<String>) -> HeaderChanges {
    HeaderChanges {
        remove: Vec::new(),
        set: vec![Header {
            name: "x-module-template".into(),
            value: greeting.unwrap_or_else(|| "hello".into()),
        }],
        append: Vec::new(),
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Module;

impl request_hook::Guest for Module {
    fn on_request(req: &Request) -> RequestAction {
        // The request is the host's: each method call copies one value in. Read what you need.
        let action = decide(&req.path(), config::get("deny-prefix").as_deref());
        if matches!(action, RequestAction::Respond(_)) {
            // Shows up as parallax_module_counter_total{module="...",name="denied"}.
            counters::add("denied", 1);
        }
        action
    }
}

impl response_hook::Guest for Module {
    fn on_response(_req: &Request, _resp: &Response) -> HeaderChanges {
        tag(config::get("greeting"))
    }
}

// Export names such as `parallax:policy/request-hook@0.2.1#on-request` exist only in the
// component; a native build (unit tests) leaves them out.
#[cfg(target_arch = "wasm32")]
bindings::export!(Module with_types_in bindings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_prefix_are_refused_locally() {
        match decide("/private/a.ts", Some("/private/")) {
            RequestAction::Respond(r) => assert_eq!(r.status, 403),
            other => panic!("expected a 403, got {other:?}"),
        }
    }

    #[test]
    fn other_paths_and_an_unset_prefix_go_on() {
        assert!(matches!(
            decide("/live/a.ts", Some("/private/")),
            RequestAction::Continue
        ));
        assert!(matches!(
            decide("/private/a.ts", None),
            RequestAction::Continue
        ));
        assert!(matches!(
            decide("/private/a.ts", Some("")),
            RequestAction::Continue
        ));
    }

    #[test]
    fn responses_are_tagged_with_the_configured_greeting() {
        assert_eq!(tag(None).set[0].value, "hello");
        assert_eq!(tag(Some("hi".into())).set[0].value, "hi");
    }
}
