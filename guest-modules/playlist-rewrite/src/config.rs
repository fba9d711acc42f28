//! The module's configuration: the `config` table of its entry in the proxy config.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base.<region>` | none | absolute base URL of a region, e.g. `https://eu.cdn.example` (a path prefix is allowed); with at least one, relative URIs become absolute |
//! | `region-header` | `x-parallax-region` | request header naming the viewer's region (region-steer sets it) |
//! | `default-region` | the only `base.*` if there is one | region when the header is missing or has no base |
//! | `merge` | none | `<a>,<b>`: merge master playlists of these two regions (both need a `base`) |
//! | `merge-source` | `mirror` | `mirror`: the other region's master is this one on its base; `kv`: read it from the kv key `playlist/<region><path>` |
//! | `token-name` | none | append the viewer's token as this query parameter to child playlist and segment URIs |
//! | `token-cookie` | `token-name` | cookie to take the token from when the query has none |

use std::collections::BTreeMap;

/// Where the second region's master playlist comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeSource {
    /// The fetched master itself, resolved on the other region's base.
    Mirror,
    /// The kv value `playlist/<region><path>`.
    Kv,
}

/// Parsed configuration. See the module docs for the keys.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Region → base URL (no trailing slash).
    pub bases: BTreeMap<String, String>,
    /// Request header naming the region, lower case.
    pub region_header: String,
    /// Region used without (or with an unknown) header.
    pub default_region: Option<String>,
    /// The two regions whose masters are merged.
    pub merge: Option<(String, String)>,
    /// Where the second master comes from.
    pub merge_source: Option<MergeSource>,
    /// Query parameter carrying the viewer's token.
    pub token_name: Option<String>,
    /// Cookie carrying the viewer's token.
    pub token_cookie: Option<String>,
}

impl Config {
    /// Parses `entries`; unknown keys are errors (reported by the self-test at load).
    pub fn from_entries(entries: &[(String, String)]) -> Result<Config, String> {
        let mut config = Config {
            region_header: "x-parallax-region".into(),
            ..Config::default()
        };
        let mut merge_source = MergeSource::Mirror;
        for (key, value) in entries {
            let value = value.trim();
            match key.as_str() {
                "region-header" => config.region_header = value.to_ascii_lowercase(),
                "default-region" => config.default_region = Some(value.to_owned()),
                "merge" => {
                    let (a, b) = value
                        .split_once(',')
                        .map(|(a, b)| (a.trim(), b.trim()))
                        .filter(|(a, b)| {
                            !a.is_empty() && !b.is_empty() && a != b && !b.contains(',')
                        })
                        .ok_or_else(|| {
                            format!("merge must name two different regions, `a,b`, not {value:?}")
                        })?;
                    config.merge = Some((a.to_owned(), b.to_owned()));
                }
                "merge-source" => {
                    merge_source = match value {
                        "mirror" => MergeSource::Mirror,
                        "kv" => MergeSource::Kv,
                        _ => {
                            return Err(format!("merge-source must be mirror or kv, not {value:?}"))
                        }
                    }
                }
                "token-name" => {
                    config.token_name = Some(value.to_owned()).filter(|v| !v.is_empty())
                }
                "token-cookie" => {
                    config.token_cookie = Some(value.to_owned()).filter(|v| !v.is_empty())
                }
                other => match other.strip_prefix("base.") {
                    Some(region) => {
                        let scheme_ok =
                            value.starts_with("https://") || value.starts_with("http://");
                        if !scheme_ok || value.contains(['?', '#']) {
                            return Err(format!(
                                "{other} must be an http(s) URL without query, not {value:?}"
                            ));
                        }
                        config
                            .bases
                            .insert(region.to_owned(), value.trim_end_matches('/').to_owned());
                    }
                    None => return Err(format!("unknown config key {other:?}")),
                },
            }
        }
        if config.default_region.is_none() && config.bases.len() == 1 {
            config.default_region = config.bases.keys().next().cloned();
        }
        if let Some(region) = &config.default_region {
            if !config.bases.contains_key(region) {
                return Err(format!("default-region {region:?} has no base.{region}"));
            }
        }
        if let Some((a, b)) = &config.merge {
            for region in [a, b] {
                if !config.bases.contains_key(region) {
                    return Err(format!("merge needs base.{region}"));
                }
            }
            config.merge_source = Some(merge_source);
        }
        if config.token_cookie.is_none() {
            config.token_cookie = config.token_name.clone();
        }
        Ok(config)
    }

    /// The region of a request whose region header says `header` (if any).
    pub fn region<'a>(&'a self, header: Option<&'a str>) -> Option<&'a str> {
        header
            .filter(|r| self.bases.contains_key(*r))
            .or(self.default_region.as_deref())
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

    #[test]
    fn bases_merge_and_token_settings_parse() {
        let c = Config::from_entries(&entries(&[
            ("base.eu", "https://eu.cdn.example/"),
            ("base.us", "https://us.cdn.example/edge"),
            ("default-region", "eu"),
            ("merge", "eu, us"),
            ("token-name", "__token__"),
        ]))
        .unwrap();
        assert_eq!(c.bases["eu"], "https://eu.cdn.example");
        assert_eq!(c.bases["us"], "https://us.cdn.example/edge");
        assert_eq!(c.merge, Some(("eu".into(), "us".into())));
        assert_eq!(c.merge_source, Some(MergeSource::Mirror));
        assert_eq!(c.token_cookie.as_deref(), Some("__token__"));
        assert_eq!(c.region(Some("us")), Some("us"));
        assert_eq!(c.region(Some("mars")), Some("eu"));
        assert_eq!(c.region(None), Some("eu"));
    }

    #[test]
    fn a_single_base_is_the_default_region() {
        let c = Config::from_entries(&entries(&[("base.eu", "http://127.0.0.1:8080")])).unwrap();
        assert_eq!(c.default_region.as_deref(), Some("eu"));
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        let bad = |pairs: &[(&str, &str)]| Config::from_entries(&entries(pairs)).unwrap_err();
        assert!(bad(&[("base.eu", "eu.cdn.example")]).contains("http(s) URL"));
        assert!(bad(&[("base.eu", "https://x/?a=1")]).contains("without query"));
        assert!(bad(&[("merge", "eu")]).contains("two different regions"));
        assert!(bad(&[("merge", "eu,eu")]).contains("two different regions"));
        assert!(
            bad(&[("base.eu", "https://e"), ("merge", "eu,us")]).contains("merge needs base.us")
        );
        assert!(bad(&[("merge-source", "ftp")]).contains("mirror or kv"));
        assert!(bad(&[("default-region", "us")]).contains("has no base.us"));
        assert!(bad(&[("tokn-name", "t")]).contains("unknown config key"));
    }
}
