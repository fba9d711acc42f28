//! The module's configuration: the `config` table of its entry in the proxy config.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `key` | required | signing key, hex (≥ 32 digits); verifies tokens and signs session cookies |
//! | `previous-key` | none | a second key still accepted (key rotation: add the new `key`, keep the old one here until its tokens expire) |
//! | `query-name` | `__token__` | query parameter holding the token; empty disables |
//! | `cookie-name` | `__token__` | cookie holding the token; empty disables |
//! | `header-name` | `x-parallax-token` | request header holding the token; empty disables |
//! | `session-cookie` | `false` | `true`: a 2xx playlist (`.m3u8`) response to a request authorized by a query or header token sets the cookie `cookie-name` to a token for the playlist's directory (`<dir>/*`), expiring with the original token |
//! | `cookie-secure` | `true` | add `Secure` to the session cookie (set `false` only for plain-HTTP testing) |

use parallax_token::Key;

/// Parsed configuration. See the module docs for the keys.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keys accepted, signing key first.
    pub keys: Vec<Key>,
    /// Query parameter name; `None` when disabled.
    pub query_name: Option<String>,
    /// Cookie name; `None` when disabled.
    pub cookie_name: Option<String>,
    /// Header name, lower case; `None` when disabled.
    pub header_name: Option<String>,
    /// Whether playlists get a session cookie.
    pub session_cookie: bool,
    /// Whether the session cookie is `Secure`.
    pub cookie_secure: bool,
}

impl Config {
    /// Parses `entries` (key, value pairs). Unknown keys are errors, so a typo is caught when
    /// the module is loaded (its self-test) instead of silently changing behaviour.
    pub fn from_entries(entries: &[(String, String)]) -> Result<Config, String> {
        let mut key = None;
        let mut previous = None;
        let mut config = Config {
            keys: Vec::new(),
            query_name: Some("__token__".into()),
            cookie_name: Some("__token__".into()),
            header_name: Some("x-parallax-token".into()),
            session_cookie: false,
            cookie_secure: true,
        };
        let name = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_owned());
        for (k, v) in entries {
            match k.as_str() {
                "key" => key = Some(Key::from_hex(v).map_err(|e| format!("key: {e}"))?),
                "previous-key" => {
                    previous = Some(Key::from_hex(v).map_err(|e| format!("previous-key: {e}"))?)
                }
                "query-name" => config.query_name = name(v),
                "cookie-name" => config.cookie_name = name(v),
                "header-name" => config.header_name = name(v).map(|h| h.to_ascii_lowercase()),
                "session-cookie" => config.session_cookie = boolean(k, v)?,
                "cookie-secure" => config.cookie_secure = boolean(k, v)?,
                other => return Err(format!("unknown config key {other:?}")),
            }
        }
        config
            .keys
            .push(key.ok_or("config key `key` (hex signing key) is required")?);
        config.keys.extend(previous);
        if config.session_cookie && config.cookie_name.is_none() {
            return Err("session-cookie = true needs a cookie-name".into());
        }
        Ok(config)
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{key} must be true or false, not {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const KEY: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn defaults_look_for_the_akamai_token_name_in_query_and_cookie() {
        let c = Config::from_entries(&entries(&[("key", KEY)])).unwrap();
        assert_eq!(c.keys.len(), 1);
        assert_eq!(c.query_name.as_deref(), Some("__token__"));
        assert_eq!(c.cookie_name.as_deref(), Some("__token__"));
        assert_eq!(c.header_name.as_deref(), Some("x-parallax-token"));
        assert!(!c.session_cookie);
        assert!(c.cookie_secure);
    }

    #[test]
    fn a_previous_key_is_accepted_after_the_signing_key() {
        let other = "ffeeddccbbaa99887766554433221100";
        let c = Config::from_entries(&entries(&[("previous-key", other), ("key", KEY)])).unwrap();
        assert_eq!(
            c.keys,
            vec![Key::from_hex(KEY).unwrap(), Key::from_hex(other).unwrap()]
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_key_named() {
        let cases = [
            (vec![], "required"),
            (vec![("key", "xyz")], "key: bad key"),
            (vec![("key", KEY), ("previous-key", "ab")], "previous-key"),
            (
                vec![("key", KEY), ("session-cookie", "yes")],
                "session-cookie must be",
            ),
            (
                vec![("key", KEY), ("querry-name", "t")],
                "unknown config key \"querry-name\"",
            ),
            (
                vec![
                    ("key", KEY),
                    ("session-cookie", "true"),
                    ("cookie-name", ""),
                ],
                "needs a cookie-name",
            ),
        ];
        for (pairs, expected) in cases {
            let err = Config::from_entries(&entries(&pairs)).unwrap_err();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn an_empty_name_disables_that_token_source() {
        let c = Config::from_entries(&entries(&[
            ("key", KEY),
            ("header-name", ""),
            ("query-name", " "),
        ]))
        .unwrap();
        assert_eq!(c.header_name, None);
        assert_eq!(c.query_name, None);
    }
}
