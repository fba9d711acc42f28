//! The authorization decisions, as plain functions of the request, the config and the time.

use std::cell::RefCell;
use std::collections::HashMap;

use parallax_token::{authenticate, locate, sign, verify, Claims, Key, SignParams, TokenError};

use crate::config::Config;
use crate::glue::bindings::parallax::policy::types::{
    Header, HeaderChanges, LocalResponse, RequestAction,
};

/// What this module reads of a request: the glue copies these out of the host's `request`
/// (of the headers only the token header and `cookie`, see `glue::read_request`).
#[derive(Debug, Clone)]
pub struct Request {
    /// The path, no query.
    pub path: String,
    /// The raw query without `?`.
    pub query: String,
    /// The token header and `cookie` headers, as present.
    pub headers: Vec<Header>,
}

/// What this module reads of a response.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
}

/// The response header naming why a request was refused.
pub const REASON_HEADER: &str = "x-parallax-auth";

/// Every reason code this module sends in [`REASON_HEADER`] (also its counter labels).
pub const REASON_CODES: &[&str] = &[
    "missing",
    "malformed",
    "bad-signature",
    "expired",
    "not-yet-valid",
    "path-not-allowed",
    "misconfigured",
];

/// Where a request's token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configured query parameter.
    Query,
    /// The configured request header.
    Header,
    /// The configured cookie.
    Cookie,
}

/// Whether `query` carries the token parameter: [`find_token`] then takes it and looks at no
/// header or cookie, so a caller need not read them.
pub fn query_has_token(config: &Config, query: &str) -> bool {
    query_token(config, query).is_some()
}

/// The raw (still percent-encoded) token parameter of `query`, if the config names one.
fn query_token<'q>(config: &Config, query: &'q str) -> Option<&'q str> {
    locate::query_param(query, config.query_name.as_deref()?)
}

/// Finds the token of `req`: query parameter, then header, then cookie; the first one present
/// is the one checked.
pub fn find_token(config: &Config, req: &Request) -> Result<(Source, String), TokenError> {
    if let Some(raw) = query_token(config, &req.query) {
        let token = locate::percent_decode(raw).ok_or(TokenError::Malformed(
            "query token is not valid percent-encoding",
        ))?;
        return Ok((Source::Query, token));
    }
    if let Some(name) = &config.header_name {
        if let Some(h) = req.headers.iter().find(|h| h.name == *name) {
            return Ok((Source::Header, h.value.trim().to_owned()));
        }
    }
    if let Some(name) = &config.cookie_name {
        // HTTP/2 clients may split cookies over several `cookie` headers.
        let found = req
            .headers
            .iter()
            .filter(|h| h.name == "cookie")
            .find_map(|h| locate::cookie(&h.value, name));
        if let Some(token) = found {
            return Ok((Source::Cookie, token.to_owned()));
        }
    }
    Err(TokenError::Missing)
}

/// Checks `req` at `now_secs`: where its token came from and what it says, or why it is refused.
/// A token this instance has authenticated before with the same keys skips the signature check
/// ([`Authenticated`]); the time and path checks run on every request.
pub fn check(
    config: &Config,
    req: &Request,
    now_secs: u64,
) -> Result<(Source, Claims), TokenError> {
    let (source, token) = find_token(config, req)?;
    let claims = AUTHENTICATED.with_borrow_mut(|seen| seen.authenticate(&token, &config.keys))?;
    claims.admit(&req.path, now_secs)?;
    Ok((source, claims))
}

thread_local! {
    /// This instance's authenticated tokens (instances are reused across requests, one call at
    /// a time; a new one starts empty).
    static AUTHENTICATED: RefCell<Authenticated> = RefCell::new(Authenticated::default());
}

/// Most entries [`Authenticated`] keeps before it starts over.
const MAX_AUTHENTICATED: usize = 4096;
/// Most bytes of token text [`Authenticated`] keeps before it starts over (tokens may be up
/// to 4 KiB; the instance's memory cap is 16 MiB by default).
const MAX_AUTHENTICATED_BYTES: usize = 1 << 20;

/// Tokens whose form and signature were checked, with what they claim: a viewer sends the same
/// token with every playlist and segment, and HMAC-SHA256 is most of this module's work per
/// request. Only tokens that passed are kept (a forged one pays the full, constant-time check
/// every time, and cannot fill the memory); an entry holds only while the keys it was checked
/// with are the keys in use. Bounded by [`MAX_AUTHENTICATED`] entries and
/// [`MAX_AUTHENTICATED_BYTES`]: when either would be passed it starts over.
#[derive(Default)]
pub struct Authenticated {
    keys: Vec<Key>,
    tokens: HashMap<String, Claims>,
    bytes: usize,
}

impl Authenticated {
    /// What `token` claims once signed by one of `keys`, from memory when it was checked before.
    pub fn authenticate(&mut self, token: &str, keys: &[Key]) -> Result<Claims, TokenError> {
        if self.keys != keys {
            *self = Authenticated {
                keys: keys.to_vec(),
                ..Authenticated::default()
            };
        }
        if let Some(claims) = self.tokens.get(token) {
            return Ok(claims.clone());
        }
        let claims = authenticate(token, keys)?;
        if self.tokens.len() >= MAX_AUTHENTICATED
            || self.bytes + token.len() > MAX_AUTHENTICATED_BYTES
        {
            self.tokens.clear();
            self.bytes = 0;
        }
        self.bytes += token.len();
        self.tokens.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// How many tokens it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// The request hook: continue with a valid token, else 403 with the reason. The second value
/// is the refusal for counters and logs: its reason code and a readable explanation.
pub fn on_request(
    config: &Config,
    req: &Request,
    now_secs: u64,
) -> (RequestAction, Result<Source, (&'static str, String)>) {
    match check(config, req, now_secs) {
        Ok((source, _)) => (RequestAction::Continue, Ok(source)),
        Err(e) => (forbidden(e.as_str()), Err((e.as_str(), e.to_string()))),
    }
}

/// The answer when the module's own config is broken: refuse (this is an auth module; letting
/// everyone in is the wrong failure).
pub fn misconfigured() -> RequestAction {
    forbidden("misconfigured")
}

fn forbidden(reason: &str) -> RequestAction {
    RequestAction::Respond(LocalResponse {
        status: 403,
        headers: vec![
            header(REASON_HEADER, reason),
            header("content-type", "text/plain; charset=utf-8"),
            header("cache-control", "no-store"),
        ],
        body: format!("forbidden: {reason}\n").into_bytes(),
    })
}

/// The response hook: with `session-cookie` on, a 2xx playlist response to a request that
/// carried its token in the query or a header gets `Set-Cookie` with a token for the
/// playlist's directory, so the player's segment requests (same directory) need no token in
/// their URLs. The cookie token expires with the original one: a session never outlives it.
pub fn on_response(
    config: &Config,
    req: &Request,
    resp: &Response,
    now_secs: u64,
) -> HeaderChanges {
    let mut changes = HeaderChanges {
        remove: Vec::new(),
        set: Vec::new(),
        append: Vec::new(),
    };
    if let Some(cookie) = session_cookie(config, req, resp, now_secs) {
        changes.append.push(header("set-cookie", &cookie));
    }
    changes
}

/// Whether [`on_response`] can have anything to do for a request admitted with a token from
/// `source`: only with `session-cookie` on, for a playlist whose token did not come from the
/// cookie itself. Segments, and viewers who already hold the cookie (nearly every request),
/// need no response hook; nor does a refused request (its 403 gets no cookie).
pub fn response_needed(config: &Config, req: &Request, source: Source) -> bool {
    config.session_cookie
        && config.cookie_name.is_some()
        && source != Source::Cookie
        && req.path.ends_with(".m3u8")
}

/// The `Set-Cookie` value for the session cookie, if this response should carry one.
pub fn session_cookie(
    config: &Config,
    req: &Request,
    resp: &Response,
    now_secs: u64,
) -> Option<String> {
    let name = config
        .cookie_name
        .as_deref()
        .filter(|_| config.session_cookie)?;
    if !(200..300).contains(&resp.status) || !req.path.ends_with(".m3u8") {
        return None;
    }
    let (source, claims) = check(config, req, now_secs).ok()?;
    if source == Source::Cookie {
        return None;
    }
    let dir = &req.path[..=req.path.rfind('/')?];
    let token = sign(
        &config.keys[0],
        &SignParams {
            expires_secs: claims.expires_secs,
            start_secs: None,
            acl: vec![format!("{dir}*")],
            id: claims.id,
        },
    )
    .ok()?;
    let max_age = claims.expires_secs.saturating_sub(now_secs);
    let secure = if config.cookie_secure { "; Secure" } else { "" };
    // SameSite=None: players on another origin (a web page embedding the stream) send it.
    let same_site = if config.cookie_secure {
        "; SameSite=None"
    } else {
        ""
    };
    Some(format!(
        "{name}={token}; Path={dir}; Max-Age={max_age}; HttpOnly{secure}{same_site}"
    ))
}

/// The load-time check beyond parsing the config: a token signed with the configured key
/// verifies through the same code path requests take, so a module built with broken crypto or
/// clock arithmetic is rejected before it refuses real viewers.
pub fn self_test(config: &Config, now_secs: u64) -> Result<(), String> {
    let params = SignParams {
        expires_secs: now_secs.saturating_add(60),
        start_secs: Some(now_secs),
        acl: vec!["/self-test/*".into()],
        id: None,
    };
    let token = sign(&config.keys[0], &params).map_err(|e| e.to_string())?;
    let claims =
        verify(&token, "/self-test/x.ts", now_secs, &config.keys).map_err(|e| e.to_string())?;
    if claims.key_index != 0 {
        return Err("self-test token matched the wrong key".into());
    }
    match verify(&token, "/other/x.ts", now_secs, &config.keys) {
        Err(TokenError::PathNotAllowed(_)) => Ok(()),
        other => Err(format!("self-test: a path outside the acl gave {other:?}")),
    }
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parallax_token::Key;

    const NOW: u64 = 1_764_000_000;
    const KEY: &str = "00112233445566778899aabbccddeeff";
    const OLD_KEY: &str = "ffeeddccbbaa99887766554433221100";

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut entries = vec![("key".to_string(), KEY.to_string())];
        entries.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_entries(&entries).unwrap()
    }

    fn token(key: &str, acl: &str, exp: u64) -> String {
        let params = SignParams {
            expires_secs: exp,
            start_secs: None,
            acl: vec![acl.into()],
            id: None,
        };
        sign(&Key::from_hex(key).unwrap(), &params).unwrap()
    }

    fn request(path: &str, query: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            path: path.into(),
            query: query.into(),
            headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
        }
    }

    fn reason(action: &RequestAction) -> Option<String> {
        match action {
            RequestAction::Respond(r) => {
                assert_eq!(r.status, 403);
                r.headers
                    .iter()
                    .find(|h| h.name == REASON_HEADER)
                    .map(|h| h.value.clone())
            }
            RequestAction::Continue => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn response(status: u16) -> Response {
        Response { status }
    }

    #[test]
    fn a_valid_query_token_lets_the_request_continue() {
        let q = format!("a=1&__token__={}", token(KEY, "/live/cam1/*", NOW + 60));
        let (action, verdict) = on_request(
            &config(&[]),
            &request("/live/cam1/index.m3u8", &q, &[]),
            NOW,
        );
        assert_eq!(reason(&action), None);
        assert!(verdict.is_ok());
    }

    #[test]
    fn a_query_token_is_checked_without_looking_at_headers_or_cookies() {
        // The glue skips reading the header and cookies when `query_has_token`: that is only
        // right while the query's token decides alone, good or bad, whatever else is sent.
        let c = config(&[]);
        let good = format!("__token__={}", token(KEY, "/live/cam1/*", NOW + 60));
        let bad = format!("__token__={}", token(OLD_KEY, "/live/cam1/*", NOW + 60));
        let other = token(KEY, "/live/cam1/*", NOW + 60);
        let cookie = format!("__token__={other}");
        let extra = [
            ("x-parallax-token", other.as_str()),
            ("cookie", cookie.as_str()),
        ];
        for (query, expected) in [(&good, None), (&bad, Some("bad-signature"))] {
            assert!(query_has_token(&c, query));
            for headers in [&extra[..], &[]] {
                let req = request("/live/cam1/index.m3u8", query, headers);
                assert_eq!(reason(&on_request(&c, &req, NOW).0).as_deref(), expected);
            }
        }
        assert!(!query_has_token(&c, "a=1&token=x"));
        assert!(!query_has_token(&config(&[("query-name", "")]), &good));
    }

    #[test]
    fn a_percent_encoded_query_token_is_decoded_before_checking() {
        let t = token(KEY, "/live/cam1/*", NOW + 60)
            .replace('=', "%3D")
            .replace('/', "%2F");
        let req = request("/live/cam1/index.m3u8", &format!("__token__={t}"), &[]);
        assert_eq!(reason(&on_request(&config(&[]), &req, NOW).0), None);
    }

    #[test]
    fn tokens_in_the_configured_header_and_cookie_are_accepted() {
        let t = token(KEY, "/live/*", NOW + 60);
        let c = config(&[("header-name", "X-Edge-Token"), ("cookie-name", "tok")]);
        let by_header = request("/live/a.ts", "", &[("x-edge-token", &t)]);
        assert_eq!(check(&c, &by_header, NOW).unwrap().0, Source::Header);
        let cookie = format!("other=1; tok={t}");
        let by_cookie = request("/live/a.ts", "", &[("cookie", "a=b"), ("cookie", &cookie)]);
        assert_eq!(check(&c, &by_cookie, NOW).unwrap().0, Source::Cookie);
    }

    #[test]
    fn each_refusal_is_a_403_with_its_reason_code() {
        let c = config(&[]);
        let cases = [
            (request("/live/a.ts", "", &[]), "missing"),
            (
                request("/live/a.ts", "__token__=nonsense", &[]),
                "malformed",
            ),
            (request("/live/a.ts", "__token__=%zz", &[]), "malformed"),
            (
                request(
                    "/live/a.ts",
                    &format!("__token__={}", token(OLD_KEY, "/live/*", NOW + 60)),
                    &[],
                ),
                "bad-signature",
            ),
            (
                request(
                    "/live/a.ts",
                    &format!("__token__={}", token(KEY, "/live/*", NOW)),
                    &[],
                ),
                "expired",
            ),
            (
                request(
                    "/vod/a.ts",
                    &format!("__token__={}", token(KEY, "/live/*", NOW + 60)),
                    &[],
                ),
                "path-not-allowed",
            ),
        ];
        for (req, expected) in cases {
            let (action, verdict) = on_request(&c, &req, NOW);
            assert_eq!(
                reason(&action).as_deref(),
                Some(expected),
                "{}?{}",
                req.path,
                req.query
            );
            assert_eq!(verdict.unwrap_err().0, expected);
            assert!(REASON_CODES.contains(&expected));
        }
        assert_eq!(reason(&misconfigured()).as_deref(), Some("misconfigured"));
    }

    #[test]
    fn during_key_rotation_tokens_of_both_keys_are_accepted() {
        let c = config(&[("previous-key", OLD_KEY)]);
        for key in [KEY, OLD_KEY] {
            let req = request(
                "/live/a.ts",
                &format!("__token__={}", token(key, "/live/*", NOW + 60)),
                &[],
            );
            assert_eq!(reason(&on_request(&c, &req, NOW).0), None);
        }
    }

    #[test]
    fn a_disabled_source_is_not_consulted() {
        let c = config(&[("query-name", "")]);
        let req = request(
            "/live/a.ts",
            &format!("__token__={}", token(KEY, "/live/*", NOW + 60)),
            &[],
        );
        assert_eq!(
            reason(&on_request(&c, &req, NOW).0).as_deref(),
            Some("missing")
        );
    }

    #[test]
    fn a_playlist_fetched_with_a_query_token_sets_a_session_cookie_for_its_directory() {
        let c = config(&[("session-cookie", "true")]);
        let req = request(
            "/live/cam1/index.m3u8",
            &format!(
                "__token__={}",
                token(KEY, "/live/cam1/index.m3u8", NOW + 90)
            ),
            &[],
        );
        let changes = on_response(&c, &req, &response(200), NOW);
        assert_eq!(changes.append.len(), 1);
        let cookie = &changes.append[0];
        assert_eq!(cookie.name, "set-cookie");
        assert!(
            cookie
                .value
                .ends_with("; Path=/live/cam1/; Max-Age=90; HttpOnly; Secure; SameSite=None"),
            "{}",
            cookie.value
        );
        // The cookie's token admits the segments next to the playlist, and nothing else.
        let (name_value, _) = cookie.value.split_once(';').unwrap();
        let segment = request("/live/cam1/720p/7.ts", "", &[("cookie", name_value)]);
        assert_eq!(check(&c, &segment, NOW).unwrap().1.expires_secs, NOW + 90);
        let elsewhere = request("/live/cam2/7.ts", "", &[("cookie", name_value)]);
        assert_eq!(
            check(&c, &elsewhere, NOW).unwrap_err().as_str(),
            "path-not-allowed"
        );
    }

    #[test]
    fn no_session_cookie_for_segments_errors_cookie_requests_or_when_disabled() {
        let q = format!("__token__={}", token(KEY, "/live/*", NOW + 60));
        let on = config(&[("session-cookie", "true")]);
        let none = |c: &Config, req: &Request, status| {
            on_response(c, req, &response(status), NOW)
                .append
                .is_empty()
        };
        assert!(none(&on, &request("/live/a.ts", &q, &[]), 200));
        assert!(none(&on, &request("/live/a.m3u8", &q, &[]), 404));
        assert!(none(&on, &request("/live/a.m3u8", "", &[]), 200));
        let cookie = format!("__token__={}", token(KEY, "/live/*", NOW + 60));
        assert!(none(
            &on,
            &request("/live/a.m3u8", "", &[("cookie", &cookie)]),
            200
        ));
        assert!(none(&config(&[]), &request("/live/a.m3u8", &q, &[]), 200));
    }

    #[test]
    fn the_response_hook_is_skipped_exactly_when_it_would_issue_no_cookie() {
        let on = config(&[("session-cookie", "true")]);
        let q = format!("__token__={}", token(KEY, "/live/*", NOW + 60));
        let cookie = format!("__token__={}", token(KEY, "/live/*", NOW + 60));
        let cases = [
            (request("/live/a.m3u8", &q, &[]), true),
            (request("/live/a.ts", &q, &[]), false),
            (request("/live/a.m3u8", "", &[("cookie", &cookie)]), false),
        ];
        for (req, expected) in cases {
            let (_, verdict) = on_request(&on, &req, NOW);
            let needed = response_needed(&on, &req, verdict.unwrap());
            assert_eq!(needed, expected, "{}?{}", req.path, req.query);
            let issued = !on_response(&on, &req, &response(200), NOW)
                .append
                .is_empty();
            assert_eq!(issued, needed, "{}?{}", req.path, req.query);
        }
        let (_, verdict) = on_request(&config(&[]), &request("/live/a.m3u8", &q, &[]), NOW);
        assert!(!response_needed(
            &config(&[]),
            &request("/live/a.m3u8", &q, &[]),
            verdict.unwrap()
        ));
    }

    #[test]
    fn a_token_is_authenticated_once_per_keys_and_admitted_per_request() {
        let keys = [Key::from_hex(KEY).unwrap()];
        let rotated = [Key::from_hex(OLD_KEY).unwrap()];
        let mut seen = Authenticated::default();
        let good = token(KEY, "/live/cam1/*", NOW + 60);
        let claims = seen.authenticate(&good, &keys).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.authenticate(&good, &keys).unwrap(), claims);
        assert_eq!(seen.len(), 1, "the second time comes from memory");
        // What is remembered is the signature, never the decision for a request.
        assert!(claims.admit("/live/cam1/1.ts", NOW).is_ok());
        assert_eq!(
            claims.admit("/live/cam2/1.ts", NOW).unwrap_err().as_str(),
            "path-not-allowed"
        );
        assert_eq!(
            claims
                .admit("/live/cam1/1.ts", NOW + 60)
                .unwrap_err()
                .as_str(),
            "expired"
        );
        // Forged tokens are never remembered; other keys start over.
        let forged = token(OLD_KEY, "/live/cam1/*", NOW + 60);
        assert_eq!(
            seen.authenticate(&forged, &keys).unwrap_err().as_str(),
            "bad-signature"
        );
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen.authenticate(&good, &rotated).unwrap_err().as_str(),
            "bad-signature"
        );
        assert_eq!(
            seen.len(),
            0,
            "entries hold only for the keys they were checked with"
        );
    }

    #[test]
    fn the_memory_of_authenticated_tokens_is_bounded() {
        let keys = [Key::from_hex(KEY).unwrap()];
        let mut seen = Authenticated::default();
        for i in 0..MAX_AUTHENTICATED as u64 + 10 {
            seen.authenticate(&token(KEY, "/live/*", NOW + 60 + i), &keys)
                .unwrap();
            assert!(seen.len() <= MAX_AUTHENTICATED);
            assert!(seen.bytes <= MAX_AUTHENTICATED_BYTES);
        }
        assert_eq!(seen.len(), 10, "it started over once full");
    }

    #[test]
    fn the_self_test_passes_with_a_good_config() {
        self_test(&config(&[("previous-key", OLD_KEY)]), NOW).unwrap();
    }
}
