//! Finding a token in a request: a query parameter, a cookie, and the percent-coding tokens
//! travel in. Pure string work shared by the token-auth and playlist-rewrite modules.

/// The raw (still percent-encoded) value of the first `name` parameter in `query`
/// (`a=1&b=2`, no leading `?`).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// `query` without any `name` parameter (the rest in order); used to keep a token out of
/// what is forwarded.
pub fn remove_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`), quotes removed.
pub fn cookie<'c>(header: &'c str, name: &str) -> Option<&'c str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// Decodes `%XX` escapes (and `+` as a space, as forms send it). `None` for a broken escape or
/// a result that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes `text` for use as a query parameter value. Token characters (`=`, `~`, `/`, `*`,
/// `!`) are legal in a query (RFC 3986 §3.4) and stay as they are, so tokens stay readable;
/// `&`, `#`, `+`, `%`, `;`, spaces, quotes and non-ASCII are escaped.
pub fn percent_encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-._~=/*!:@$'(),".contains(&b);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_parameter_is_found_by_exact_name() {
        let q = "a=1&__token__=exp=1~acl=/*~hmac=ab&b";
        assert_eq!(query_param(q, "__token__"), Some("exp=1~acl=/*~hmac=ab"));
        assert_eq!(query_param(q, "b"), Some(""));
        assert_eq!(query_param(q, "__token"), None);
        assert_eq!(query_param("", "a"), None);
    }

    #[test]
    fn removing_a_parameter_keeps_the_others_in_order() {
        assert_eq!(remove_query_param("a=1&t=x&b=2", "t"), "a=1&b=2");
        assert_eq!(remove_query_param("t=x", "t"), "");
        assert_eq!(remove_query_param("tt=1&t", "t"), "tt=1");
    }

    #[test]
    fn a_cookie_is_found_among_others_and_unquoted() {
        let h = "session=abc; __token__=\"exp=1~acl=/*~hmac=ab\";x=y";
        assert_eq!(cookie(h, "__token__"), Some("exp=1~acl=/*~hmac=ab"));
        assert_eq!(cookie(h, "x"), Some("y"));
        assert_eq!(cookie(h, "missing"), None);
        assert_eq!(cookie("broken", "broken"), None);
    }

    #[test]
    fn percent_decoding_handles_escapes_and_rejects_broken_ones() {
        assert_eq!(
            percent_decode("exp%3D1~acl%3D%2Flive%2F*").as_deref(),
            Some("exp=1~acl=/live/*")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn encoding_a_token_for_a_query_keeps_it_readable_and_round_trips() {
        let token = "exp=1~acl=/live/*!/vod/*~hmac=ab";
        assert_eq!(percent_encode_query_value(token), token);
        let odd = "a&b#c d+%é";
        let encoded = percent_encode_query_value(odd);
        assert_eq!(encoded, "a%26b%23c%20d%2B%25%C3%A9");
        assert_eq!(percent_decode(&encoded).as_deref(), Some(odd));
    }
}
