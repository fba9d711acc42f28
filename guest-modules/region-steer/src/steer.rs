//! The steering decision: which region serves a request, and what the hooks answer.

use std::collections::BTreeMap;

use crate::config::{Config, Mode};
use crate::glue::bindings::parallax::policy::types::{
    Header, HeaderChanges, Redirect, RequestAction, Rewrite,
};

/// What this module reads of a request: the glue copies these out of the host's `request`
/// (host, path and query only in redirect mode; of the headers only the viewer header, the
/// region header and `cookie`, see `glue::read_request`).
#[derive(Debug, Clone)]
pub struct Request {
    /// The `Host` header.
    pub host: String,
    /// The path, no query.
    pub path: String,
    /// The raw query without `?`.
    pub query: String,
    /// The upstream group the route chose.
    pub upstream_group: String,
    /// The headers this module reads, as present.
    pub headers: Vec<Header>,
}

/// What this module reads of a response.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
}

/// The kv key holding a region's state (`open` or `closed`; unset means open). The admin API's
/// `POST /regions/<name>/close|open` writes it.
pub fn state_key(region: &str) -> String {
    format!("region/{region}/state")
}

/// What the decision needs from the host, so tests can fake it.
pub trait Env {
    /// The value of a kv key; `Err` when the store cannot be reached.
    fn kv_get(&mut self, key: &str) -> Result<Option<String>, String>;
    /// Whether the upstream group has an origin to send requests to; `None` for an unknown group.
    fn group_healthy(&mut self, group: &str) -> Option<bool>;
    /// A log line at warn level.
    fn warn(&mut self, message: &str);
}

/// Region states this instance has seen, used while the store is unreachable.
#[derive(Debug, Default)]
pub struct Memory {
    open: BTreeMap<String, bool>,
}

/// One request's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the viewer's home region.
    pub home: usize,
    /// Index of the region chosen to serve the request.
    pub chosen: usize,
    /// Whether the store could not be read for some region (the last known state was used).
    pub kv_unavailable: bool,
    /// Whether no region was usable (the request goes to `chosen` anyway).
    pub none_usable: bool,
}

/// Picks the region for `req`: the sticky region while it is usable, else the home region
/// while it is usable, else the first usable region in config order, else (nothing usable)
/// the sticky or home region — steering never turns into an error.
pub fn decide(config: &Config, req: &Request, env: &mut dyn Env, memory: &mut Memory) -> Decision {
    let home = header(req, &config.viewer_header)
        .and_then(|value| config.countries.get(&value.trim().to_ascii_uppercase()))
        .copied()
        .unwrap_or(config.default_region);
    let sticky = config.sticky_cookie.as_deref().and_then(|name| {
        cookie_value(req, name)
            .and_then(|value| config.regions.iter().position(|r| r.name == value))
    });
    let mut kv_unavailable = false;
    let mut usable = |index: usize| {
        let region = &config.regions[index];
        let open = match env.kv_get(&state_key(&region.name)) {
            Ok(value) => {
                let open = match value.as_deref() {
                    None | Some("open") => true,
                    Some("closed") => false,
                    Some(other) => {
                        env.warn(&format!(
                            "{} is {other:?}, not open or closed; treating as open",
                            state_key(&region.name)
                        ));
                        true
                    }
                };
                memory.open.insert(region.name.clone(), open);
                open
            }
            Err(_) => {
                kv_unavailable = true;
                memory.open.get(&region.name).copied().unwrap_or(true)
            }
        };
        open && match env.group_healthy(&region.group) {
            Some(healthy) => healthy,
            None => {
                env.warn(&format!(
                    "upstream group {:?} of region {} does not exist",
                    region.group, region.name
                ));
                false
            }
        }
    };
    let preferred = sticky.into_iter().chain([home]);
    let mut none_usable = false;
    let chosen = match preferred.clone().find(|&i| usable(i)) {
        Some(i) => i,
        None => {
            match (0..config.regions.len()).find(|&i| Some(i) != sticky && i != home && usable(i)) {
                Some(i) => i,
                None => {
                    none_usable = true;
                    sticky.unwrap_or(home)
                }
            }
        }
    };
    Decision {
        home,
        chosen,
        kv_unavailable,
        none_usable,
    }
}

/// The request hook's answer for `decision`: in redirect mode, a viewer steered away from its
/// home region is sent to the chosen region's domain, unless it is already there (so a
/// redirected request never redirects again); otherwise the request goes on to the chosen
/// region's upstream group, with the region named in the region header.
pub fn action(config: &Config, req: &Request, decision: &Decision) -> RequestAction {
    let region = &config.regions[decision.chosen];
    if config.mode == Mode::Redirect && decision.chosen != decision.home {
        if let Some(domain) = &region.domain {
            let host = req
                .host
                .rsplit_once(':')
                .map_or(req.host.as_str(), |(h, _)| h);
            if !host.eq_ignore_ascii_case(domain) {
                let query = if req.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", req.query)
                };
                return RequestAction::Redirect(Redirect {
                    status: 302,
                    location: format!("{}://{domain}{}{query}", config.redirect_scheme, req.path),
                });
            }
        }
    }
    RequestAction::Rewrite(Rewrite {
        path: None,
        query: None,
        // Always set, so a client cannot choose its region by sending the header itself.
        set_headers: vec![Header {
            name: config.region_header.clone(),
            value: region.name.clone(),
        }],
        remove_headers: Vec::new(),
        upstream_group: (region.group != req.upstream_group).then(|| region.group.clone()),
    })
}

/// The response hook: a successful response carries the sticky cookie naming the region that
/// served it, when the viewer's cookie does not already say so.
pub fn on_response(config: &Config, req: &Request, resp: &Response) -> HeaderChanges {
    let mut changes = HeaderChanges {
        remove: Vec::new(),
        set: Vec::new(),
        append: Vec::new(),
    };
    let Some(name) = &config.sticky_cookie else {
        return changes;
    };
    if !(200..300).contains(&resp.status) && resp.status != 304 {
        return changes;
    }
    let Some(region) =
        header(req, &config.region_header).filter(|r| config.regions.iter().any(|x| x.name == *r))
    else {
        return changes;
    };
    let current = cookie_value(req, name);
    if current != Some(region) {
        changes.append.push(Header {
            name: "set-cookie".into(),
            value: format!(
                "{name}={region}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                config.sticky_max_age_secs
            ),
        });
    }
    changes
}

/// Whether [`on_response`] can have anything to do after the request hook answered `action`
/// for `decision`: only when a sticky cookie is configured, the request goes on (a redirect
/// gets no cookie), and the viewer's cookie does not already name the chosen region. A
/// returning viewer of an unchanged region, the usual request, needs no response hook.
pub fn response_needed(
    config: &Config,
    req: &Request,
    decision: &Decision,
    action: &RequestAction,
) -> bool {
    let Some(name) = &config.sticky_cookie else {
        return false;
    };
    if matches!(action, RequestAction::Redirect(_)) {
        return false;
    }
    let current = cookie_value(req, name);
    current != Some(config.regions[decision.chosen].name.as_str())
}

fn header<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

/// The value of cookie `name` in the request's first `cookie` header that has it.
fn cookie_value<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers
        .iter()
        .filter(|h| h.name == "cookie")
        .find_map(|h| cookie(&h.value, name))
}

fn cookie<'c>(header: &'c str, name: &str) -> Option<&'c str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeEnv {
        kv: BTreeMap<String, String>,
        kv_down: bool,
        unhealthy: Vec<&'static str>,
        warnings: Vec<String>,
    }

    impl Env for FakeEnv {
        fn kv_get(&mut self, key: &str) -> Result<Option<String>, String> {
            if self.kv_down {
                return Err("redis down".into());
            }
            Ok(self.kv.get(key).cloned())
        }
        fn group_healthy(&mut self, group: &str) -> Option<bool> {
            group
                .starts_with("origin-")
                .then(|| !self.unhealthy.contains(&group))
        }
        fn warn(&mut self, message: &str) {
            self.warnings.push(message.into());
        }
    }

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut pairs = vec![
            ("regions", "eu,us"),
            ("region.eu.group", "origin-eu"),
            ("region.us.group", "origin-us"),
            ("region.eu.domain", "eu.cdn.example"),
            ("region.us.domain", "us.cdn.example"),
            ("country.DE", "eu"),
            ("country.US", "us"),
        ];
        pairs.extend_from_slice(extra);
        let entries: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_entries(&entries).unwrap()
    }

    fn request(host: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            host: host.into(),
            path: "/live/a/index.m3u8".into(),
            query: "x=1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            upstream_group: "origin-eu".into(),
        }
    }

    fn close(env: &mut FakeEnv, region: &str) {
        env.kv.insert(state_key(region), "closed".into());
    }

    fn chosen(c: &Config, req: &Request, env: &mut FakeEnv) -> String {
        c.regions[decide(c, req, env, &mut Memory::default()).chosen]
            .name
            .clone()
    }

    #[test]
    fn a_viewer_goes_to_its_home_region_while_it_is_open_and_healthy() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        assert_eq!(
            chosen(
                &c,
                &request("cdn", &[("cloudfront-viewer-country", "us")]),
                &mut env
            ),
            "us"
        );
        assert_eq!(
            chosen(
                &c,
                &request("cdn", &[("cloudfront-viewer-country", "DE")]),
                &mut env
            ),
            "eu"
        );
        // Unmapped or missing header: the default region.
        assert_eq!(
            chosen(
                &c,
                &request("cdn", &[("cloudfront-viewer-country", "JP")]),
                &mut env
            ),
            "eu"
        );
        assert_eq!(chosen(&c, &request("cdn", &[]), &mut env), "eu");
    }

    #[test]
    fn a_closed_home_region_sends_the_viewer_to_the_other_region_group() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        close(&mut env, "eu");
        let req = request("cdn", &[("cloudfront-viewer-country", "DE")]);
        let d = decide(&c, &req, &mut env, &mut Memory::default());
        assert_eq!((d.home, d.chosen), (0, 1));
        match action(&c, &req, &d) {
            RequestAction::Rewrite(r) => {
                assert_eq!(r.upstream_group.as_deref(), Some("origin-us"));
                assert_eq!(
                    r.set_headers,
                    vec![Header {
                        name: "x-parallax-region".into(),
                        value: "us".into()
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unhealthy_home_group_also_steers_away() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        env.unhealthy.push("origin-us");
        assert_eq!(
            chosen(
                &c,
                &request("cdn", &[("cloudfront-viewer-country", "US")]),
                &mut env
            ),
            "eu"
        );
    }

    #[test]
    fn the_home_region_keeps_its_group_and_only_gets_the_region_header() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        let req = request(
            "cdn",
            &[
                ("cloudfront-viewer-country", "DE"),
                ("x-parallax-region", "us"),
            ],
        );
        let d = decide(&c, &req, &mut env, &mut Memory::default());
        match action(&c, &req, &d) {
            RequestAction::Rewrite(r) => {
                assert_eq!(r.upstream_group, None);
                assert_eq!(
                    r.set_headers[0].value, "eu",
                    "a client-sent region header is overwritten"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sticky_viewer_stays_in_its_region_after_home_reopens_but_not_once_it_is_unhealthy() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        let req = request(
            "cdn",
            &[
                ("cloudfront-viewer-country", "DE"),
                ("cookie", "a=1; parallax-region=us"),
            ],
        );
        assert_eq!(chosen(&c, &req, &mut env), "us");
        env.unhealthy.push("origin-us");
        assert_eq!(chosen(&c, &req, &mut env), "eu");
        // An unknown region in the cookie is ignored.
        let forged = request(
            "cdn",
            &[
                ("cloudfront-viewer-country", "DE"),
                ("cookie", "parallax-region=mars"),
            ],
        );
        assert_eq!(chosen(&c, &forged, &mut FakeEnv::default()), "eu");
    }

    #[test]
    fn stickiness_can_be_turned_off() {
        let (c, mut env) = (config(&[("sticky-cookie", "")]), FakeEnv::default());
        let req = request(
            "cdn",
            &[
                ("cloudfront-viewer-country", "DE"),
                ("cookie", "parallax-region=us"),
            ],
        );
        assert_eq!(chosen(&c, &req, &mut env), "eu");
    }

    #[test]
    fn with_the_store_down_the_last_known_state_is_used_and_the_request_goes_on() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        let mut memory = Memory::default();
        let req = request("cdn", &[("cloudfront-viewer-country", "DE")]);
        close(&mut env, "eu");
        assert_eq!(decide(&c, &req, &mut env, &mut memory).chosen, 1);
        env.kv_down = true;
        let d = decide(&c, &req, &mut env, &mut memory);
        assert_eq!(d.chosen, 1, "eu is still remembered as closed");
        assert!(d.kv_unavailable);
        // A fresh instance that never saw a state treats regions as open.
        assert_eq!(decide(&c, &req, &mut env, &mut Memory::default()).chosen, 0);
    }

    #[test]
    fn when_no_region_is_usable_the_viewer_stays_home() {
        let (c, mut env) = (config(&[]), FakeEnv::default());
        close(&mut env, "eu");
        close(&mut env, "us");
        let d = decide(
            &c,
            &request("cdn", &[("cloudfront-viewer-country", "US")]),
            &mut env,
            &mut Memory::default(),
        );
        assert_eq!(d.chosen, 1);
        assert!(d.none_usable);
    }

    #[test]
    fn odd_state_values_and_unknown_groups_are_logged_not_fatal() {
        let mut c = config(&[]);
        c.regions[1].group = "missing".into();
        let mut env = FakeEnv::default();
        env.kv.insert(state_key("eu"), "maybe".into());
        assert_eq!(
            chosen(
                &c,
                &request("cdn", &[("cloudfront-viewer-country", "US")]),
                &mut env
            ),
            "eu"
        );
        assert_eq!(env.warnings.len(), 2, "{:?}", env.warnings);
    }

    #[test]
    fn redirect_mode_sends_a_steered_viewer_to_the_other_domain_once() {
        let (c, mut env) = (config(&[("mode", "redirect")]), FakeEnv::default());
        close(&mut env, "eu");
        let req = request("eu.cdn.example", &[("cloudfront-viewer-country", "DE")]);
        let d = decide(&c, &req, &mut env, &mut Memory::default());
        assert_eq!(
            action(&c, &req, &d),
            RequestAction::Redirect(Redirect {
                status: 302,
                location: "https://us.cdn.example/live/a/index.m3u8?x=1".into()
            })
        );
        // Arriving at the other region's domain, it is served there, not redirected again.
        let there = request("US.cdn.example:443", &[("cloudfront-viewer-country", "DE")]);
        let d = decide(&c, &there, &mut env, &mut Memory::default());
        assert!(matches!(action(&c, &there, &d), RequestAction::Rewrite(_)));
        // A viewer at home is never redirected.
        let home = request("us.cdn.example", &[("cloudfront-viewer-country", "US")]);
        let d = decide(&c, &home, &mut env, &mut Memory::default());
        assert!(matches!(action(&c, &home, &d), RequestAction::Rewrite(_)));
    }

    #[test]
    fn a_successful_response_sets_the_sticky_cookie_when_it_changes() {
        let c = config(&[]);
        let resp = |status| Response { status };
        let req = request("cdn", &[("x-parallax-region", "us")]);
        let changes = on_response(&c, &req, &resp(200));
        assert_eq!(
            changes.append[0].value,
            "parallax-region=us; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
        );
        let already = request(
            "cdn",
            &[
                ("x-parallax-region", "us"),
                ("cookie", "parallax-region=us"),
            ],
        );
        assert!(on_response(&c, &already, &resp(200)).append.is_empty());
        assert!(on_response(&c, &req, &resp(502)).append.is_empty());
        assert!(on_response(
            &c,
            &request("cdn", &[("x-parallax-region", "mars")]),
            &resp(200)
        )
        .append
        .is_empty());
    }

    #[test]
    fn the_response_hook_is_needed_only_when_the_cookie_would_change() {
        let mut env = FakeEnv::default();
        let needed = |c: &Config, req: &Request, env: &mut FakeEnv| {
            let decision = decide(c, req, env, &mut Memory::default());
            let action = action(c, req, &decision);
            let needed = response_needed(c, req, &decision, &action);
            // Whenever it is skipped, the hook would indeed have changed nothing.
            if !needed {
                let mut served = req.clone();
                if let RequestAction::Rewrite(rewrite) = &action {
                    served.headers.extend(rewrite.set_headers.iter().cloned());
                }
                let status = if matches!(action, RequestAction::Redirect(_)) {
                    302
                } else {
                    200
                };
                assert!(on_response(c, &served, &Response { status })
                    .append
                    .is_empty());
            }
            needed
        };
        let c = config(&[]);
        let new_viewer = request("cdn", &[("cloudfront-viewer-country", "DE")]);
        assert!(
            needed(&c, &new_viewer, &mut env),
            "a first visit gets the cookie"
        );
        let returning = request(
            "cdn",
            &[
                ("cloudfront-viewer-country", "DE"),
                ("cookie", "a=1; parallax-region=eu"),
            ],
        );
        assert!(
            !needed(&c, &returning, &mut env),
            "a returning viewer already has it"
        );
        close(&mut env, "eu");
        assert!(
            needed(&c, &returning, &mut env),
            "steered to us: the cookie changes"
        );
        let redirecting = config(&[("mode", "redirect")]);
        assert!(
            !needed(&redirecting, &returning, &mut env),
            "a redirect gets no cookie"
        );
        let unsticky = config(&[("sticky-cookie", "")]);
        assert!(!needed(&unsticky, &new_viewer, &mut env));
    }
}
