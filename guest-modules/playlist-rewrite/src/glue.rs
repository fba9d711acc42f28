//! The component's exports: read the config, region, token and (for `merge-source = kv`) the
//! second master from the host, call [`crate::rewrite`], and turn errors into an unchanged body
//! plus a log line and a counter.

use std::cell::RefCell;
use std::sync::OnceLock;

use parallax_token::locate;

use crate::config::Config;
use crate::memo::Memo;
use crate::rewrite::{self, Context};

/// The bindings wit-bindgen generates for this module's world.
pub mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package parallax:playlist-rewrite;
            world playlist-rewrite {
                include parallax:policy/host@0.2.1;
                export parallax:policy/body-hook@0.2.1;
                export parallax:policy/self-test@0.2.1;
            }
        "#,
        path: "../../wit",
        // Interfaces of another package (ours, parallax:policy) are generated here too.
        generate_all,
    });
}

use bindings::exports::parallax::policy::{body_hook, self_test};
use bindings::parallax::policy::types::{BodyAction, Request};
use bindings::parallax::policy::{config, counters, kv, log};

/// The config is fixed for a loaded module version, so one parse per instance is enough.
fn config() -> &'static Result<Config, String> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_entries(&config::entries()))
}

thread_local! {
    /// This instance's remembered rewrites (instances are reused across requests, one call at
    /// a time; a new instance starts empty).
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

/// The viewer's token, query-safe: the raw query value as sent, else the cookie value encoded.
/// `cookies` (the request's `cookie` headers) is read only when the query has no token.
pub fn viewer_token(
    config: &Config,
    query: &str,
    cookies: impl FnOnce() -> Vec<String>,
) -> Option<String> {
    if let Some(value) = config
        .token_name
        .as_deref()
        .and_then(|n| locate::query_param(query, n))
    {
        return Some(value.to_owned()).filter(|v| !v.is_empty());
    }
    let name = config.token_cookie.as_deref()?;
    cookies()
        .iter()
        .find_map(|h| locate::cookie(h, name))
        .filter(|v| !v.is_empty())
        .map(locate::percent_encode_query_value)
}

// Natively (unit tests) nothing exports it; the impls still compile so type errors show up.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct PlaylistRewrite;

impl body_hook::Guest for PlaylistRewrite {
    fn rewrite_body(req: &Request, _content_type: String, body: Vec<u8>) -> BodyAction {
        let config = match config() {
            Ok(config) => config,
            Err(e) => {
                counters::add("misconfigured", 1);
                log::log(log::Level::Error, &format!("playlist-rewrite config: {e}"));
                return BodyAction::Unchanged;
            }
        };
        // Each read is a host call: only the path, the region header, and the token's places.
        let path = req.path();
        let region_header = req.header(&config.region_header);
        let query = if config.token_name.is_some() {
            req.query()
        } else {
            String::new()
        };
        let ctx = Context {
            path: &path,
            region: config.region(region_header.as_deref()),
            token: viewer_token(config, &query, || req.header_values("cookie")),
        };
        let mut from_kv = |region: &str| {
            kv::get(&rewrite::kv_key(region, &path)).map_err(|e| match e {
                kv::KvError::Unavailable(why) => why,
                kv::KvError::TooLarge => "key too large".into(),
            })
        };
        match MEMO.with_borrow_mut(|memo| memo.rewrite(config, &ctx, &body, &mut from_kv)) {
            Ok(Some(new_body)) => {
                counters::add("rewritten", 1);
                BodyAction::Replace(new_body)
            }
            Ok(None) => BodyAction::Unchanged,
            Err(e) => {
                counters::add(e.as_str(), 1);
                log::log(log::Level::Warn, &format!("{path} left unchanged: {e}"));
                BodyAction::Unchanged
            }
        }
    }
}

impl self_test::Guest for PlaylistRewrite {
    fn run() -> Result<(), String> {
        config().as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

// Only in the component: export names are not valid symbols for a native shared library.
#[cfg(target_arch = "wasm32")]
bindings::export!(PlaylistRewrite with_types_in bindings);

#[cfg(test)]
mod tests {
    use super::*;

    fn token(c: &Config, query: &str, cookie: Option<&str>) -> Option<String> {
        viewer_token(c, query, || cookie.map(str::to_owned).into_iter().collect())
    }

    #[test]
    fn the_token_comes_from_the_query_as_sent_or_from_the_cookie_encoded() {
        let entries = vec![("token-name".to_string(), "__token__".to_string())];
        let c = Config::from_entries(&entries).unwrap();
        assert_eq!(
            token(&c, "a=1&__token__=exp%3D1~x", None).as_deref(),
            Some("exp%3D1~x")
        );
        assert_eq!(
            token(&c, "", Some("__token__=exp=1~acl=/a b")).as_deref(),
            Some("exp=1~acl=/a%20b")
        );
        assert_eq!(token(&c, "__token__=", None), None);
        assert_eq!(token(&c, "", None), None);
    }
}
