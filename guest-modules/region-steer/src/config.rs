//! The module's configuration: the `config` table of its entry in the proxy config.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `regions` | required | comma-separated region names; also the order in which a replacement region is picked |
//! | `region.<name>.group` | required for each region | the proxy upstream group serving that region |
//! | `region.<name>.domain` | none | the region's public host name (needed for `mode = redirect`) |
//! | `country.<CC>` | none | maps a viewer-header value (e.g. ISO country `DE`) to a region; case-insensitive |
//! | `default-region` | first of `regions` | home region of viewers whose header is missing or unmapped |
//! | `viewer-header` | `cloudfront-viewer-country` | request header giving the viewer's location |
//! | `mode` | `rewrite` | `rewrite`: change the request's upstream group; `redirect`: 302 to the region's domain |
//! | `redirect-scheme` | `https` | scheme of redirect locations |
//! | `sticky-cookie` | `parallax-region` | cookie remembering the region a viewer was sent to; empty disables stickiness |
//! | `sticky-max-age-secs` | `3600` | lifetime of that cookie |
//! | `region-header` | `x-parallax-region` | request header the module sets to the chosen region (read by its response hook and by later modules such as playlist-rewrite) |

use std::collections::BTreeMap;

/// How a viewer is sent to another region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Rewrite the request's upstream group (the viewer sees nothing).
    Rewrite,
    /// Answer 302 with the region's domain.
    Redirect,
}

/// One region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Its name, as in `region/<name>/state`.
    pub name: String,
    /// Its upstream group.
    pub group: String,
    /// Its public host name, lower case.
    pub domain: Option<String>,
}

/// Parsed configuration. See the module docs for the keys.
#[derive(Debug, Clone)]
pub struct Config {
    /// Regions in preference order.
    pub regions: Vec<Region>,
    /// Viewer-header value (upper case) → index in `regions`.
    pub countries: BTreeMap<String, usize>,
    /// Index of the default home region.
    pub default_region: usize,
    /// The viewer-location header, lower case.
    pub viewer_header: String,
    /// Rewrite or redirect.
    pub mode: Mode,
    /// Scheme for redirects.
    pub redirect_scheme: String,
    /// Sticky cookie name, `None` when stickiness is off.
    pub sticky_cookie: Option<String>,
    /// Sticky cookie lifetime in seconds.
    pub sticky_max_age_secs: u64,
    /// The request header carrying the decision, lower case.
    pub region_header: String,
}

impl Config {
    /// Parses `entries`; unknown keys and incomplete regions are errors (reported by the
    /// module's self-test when it is loaded).
    pub fn from_entries(entries: &[(String, String)]) -> Result<Config, String> {
        let map: BTreeMap<&str, &str> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.trim()))
            .collect();
        let names: Vec<&str> = map
            .get("regions")
            .ok_or("config key `regions` is required")?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err("`regions` lists no region".into());
        }
        let mut regions: Vec<Region> = Vec::with_capacity(names.len());
        for name in &names {
            if regions.iter().any(|r| r.name == *name) {
                return Err(format!("region {name:?} is listed twice"));
            }
            let group = map
                .get(format!("region.{name}.group").as_str())
                .ok_or_else(|| format!("region.{name}.group is required"))?;
            let domain = map
                .get(format!("region.{name}.domain").as_str())
                .map(|d| d.to_ascii_lowercase());
            regions.push(Region {
                name: (*name).to_owned(),
                group: (*group).to_owned(),
                domain,
            });
        }
        let index = |name: &str, key: &str| {
            regions
                .iter()
                .position(|r| r.name == name)
                .ok_or_else(|| format!("{key} names {name:?}, which is not in `regions`"))
        };
        let mut config = Config {
            countries: BTreeMap::new(),
            default_region: 0,
            viewer_header: "cloudfront-viewer-country".into(),
            mode: Mode::Rewrite,
            redirect_scheme: "https".into(),
            sticky_cookie: Some("parallax-region".into()),
            sticky_max_age_secs: 3600,
            region_header: "x-parallax-region".into(),
            regions: Vec::new(),
        };
        for (key, value) in &map {
            match *key {
                "regions" => {}
                "default-region" => config.default_region = index(value, key)?,
                "viewer-header" => config.viewer_header = value.to_ascii_lowercase(),
                "mode" => {
                    config.mode = match *value {
                        "rewrite" => Mode::Rewrite,
                        "redirect" => Mode::Redirect,
                        _ => {
                            return Err(format!("mode must be rewrite or redirect, not {value:?}"))
                        }
                    }
                }
                "redirect-scheme" => config.redirect_scheme = (*value).to_owned(),
                "sticky-cookie" => {
                    config.sticky_cookie = (!value.is_empty()).then(|| (*value).to_owned())
                }
                "sticky-max-age-secs" => {
                    config.sticky_max_age_secs = value.parse().map_err(|_| {
                        format!("sticky-max-age-secs must be a number, not {value:?}")
                    })?
                }
                "region-header" => config.region_header = value.to_ascii_lowercase(),
                _ => {
                    if let Some(code) = key.strip_prefix("country.") {
                        let region = index(value, key)?;
                        config.countries.insert(code.to_ascii_uppercase(), region);
                    } else if let Some(rest) = key.strip_prefix("region.") {
                        let known = rest.rsplit_once('.').is_some_and(|(name, field)| {
                            names.contains(&name) && ["group", "domain"].contains(&field)
                        });
                        if !known {
                            return Err(format!("unknown config key {key:?}"));
                        }
                    } else {
                        return Err(format!("unknown config key {key:?}"));
                    }
                }
            }
        }
        if config.mode == Mode::Redirect {
            if let Some(r) = regions.iter().find(|r| r.domain.is_none()) {
                return Err(format!("mode = redirect needs region.{}.domain", r.name));
            }
        }
        config.regions = regions;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_two_region_config_parses_with_defaults() {
        let c = Config::from_entries(&entries(&[
            ("regions", "eu, us"),
            ("region.eu.group", "origin-eu"),
            ("region.us.group", "origin-us"),
            ("country.de", "eu"),
            ("country.US", "us"),
        ]))
        .unwrap();
        assert_eq!(c.regions.len(), 2);
        assert_eq!(
            c.regions[1],
            Region {
                name: "us".into(),
                group: "origin-us".into(),
                domain: None
            }
        );
        assert_eq!(c.countries.get("DE"), Some(&0));
        assert_eq!(c.countries.get("US"), Some(&1));
        assert_eq!(c.default_region, 0);
        assert_eq!(c.mode, Mode::Rewrite);
        assert_eq!(c.sticky_cookie.as_deref(), Some("parallax-region"));
        assert_eq!(c.viewer_header, "cloudfront-viewer-country");
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        let base = [
            ("regions", "eu,us"),
            ("region.eu.group", "a"),
            ("region.us.group", "b"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            Config::from_entries(&entries(&all)).unwrap_err()
        };
        assert!(Config::from_entries(&[])
            .unwrap_err()
            .contains("`regions` is required"));
        assert!(Config::from_entries(&entries(&[("regions", "eu")]))
            .unwrap_err()
            .contains("region.eu.group"));
        assert!(with(&[("country.fr", "asia")]).contains("not in `regions`"));
        assert!(with(&[("default-region", "asia")]).contains("not in `regions`"));
        assert!(with(&[("mode", "teleport")]).contains("rewrite or redirect"));
        assert!(with(&[("mode", "redirect")]).contains("region.eu.domain"));
        assert!(with(&[("regoins", "x")]).contains("unknown config key"));
        assert!(with(&[("region.eu.grop", "x")]).contains("unknown config key"));
        assert!(with(&[("sticky-max-age-secs", "soon")]).contains("must be a number"));
    }
}
