//! Signing and verifying tokens. See the crate docs for the format.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::acl;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes: below 128 bits an HMAC key is guessable.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest token accepted, in bytes; anything longer is refused before any work is done.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Length of the `hmac` field in hex digits (SHA-256).
const HMAC_HEX_LEN: usize = 64;

/// Why a token was refused or could not be made. [`TokenError::as_str`] is the reason code the
/// token-auth module sends in `x-parallax-auth` and uses as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in the request.
    #[error("no token in the request")]
    Missing,
    /// The token is not in the `name=value~…~hmac=…` form, or a field is unknown, repeated or
    /// not a number where one is needed.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature matches none of the keys.
    #[error("signature does not match any key")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired at {expires_secs} (now {now_secs})")]
    Expired {
        /// The token's `exp`.
        expires_secs: u64,
        /// The time of the check.
        now_secs: u64,
    },
    /// `st` is in the future.
    #[error("token not valid before {start_secs} (now {now_secs})")]
    NotYetValid {
        /// The token's `st`.
        start_secs: u64,
        /// The time of the check.
        now_secs: u64,
    },
    /// The request path matches none of the token's ACL patterns.
    #[error("path {0:?} is not covered by the token's acl")]
    PathNotAllowed(String),
    /// A key is not hex or is shorter than [`MIN_KEY_BYTES`].
    #[error("bad key: {0}")]
    BadKey(&'static str),
    /// Parameters that cannot be signed (e.g. an ACL containing `~`).
    #[error("cannot sign: {0}")]
    BadParams(&'static str),
}

impl TokenError {
    /// The short reason code: `missing`, `malformed`, `bad-signature`, `expired`,
    /// `not-yet-valid`, `path-not-allowed`, `bad-key` or `bad-params`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed(_) => "malformed",
            TokenError::BadSignature => "bad-signature",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not-yet-valid",
            TokenError::PathNotAllowed(_) => "path-not-allowed",
            TokenError::BadKey(_) => "bad-key",
            TokenError::BadParams(_) => "bad-params",
        }
    }
}

/// A signing key: raw bytes, given by operators as hex (e.g. `openssl rand -hex 32`).
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in a debug log.
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// Parses a hex key (upper or lower case, surrounding whitespace ignored).
    pub fn from_hex(hex: &str) -> Result<Key, TokenError> {
        let bytes =
            decode_hex(hex.trim()).ok_or(TokenError::BadKey("not an even number of hex digits"))?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(TokenError::BadKey("shorter than 16 bytes (32 hex digits)"));
        }
        Ok(Key(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }
}

/// What [`sign`] puts in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignParams {
    /// `exp`: Unix seconds from which the token is refused.
    pub expires_secs: u64,
    /// `st`: Unix seconds before which the token is refused; `None` leaves it out.
    pub start_secs: Option<u64>,
    /// `acl`: path patterns, joined with `!`.
    pub acl: Vec<String>,
    /// `id`: an opaque session/viewer id, covered by the signature; `None` leaves it out.
    pub id: Option<String>,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `exp`, Unix seconds (exclusive).
    pub expires_secs: u64,
    /// `st`, Unix seconds, if present.
    pub start_secs: Option<u64>,
    /// The raw `acl` field (`!`-separated patterns).
    pub acl: String,
    /// `id`, if present.
    pub id: Option<String>,
    /// Which key matched: 0 for the first key given to [`verify`], 1 for the second, …
    pub key_index: usize,
}

/// Makes a token `exp=…[~st=…]~acl=…[~id=…]~hmac=…` signed with `key`.
pub fn sign(key: &Key, params: &SignParams) -> Result<String, TokenError> {
    if params.acl.is_empty() {
        return Err(TokenError::BadParams(
            "an acl needs at least one path pattern",
        ));
    }
    let forbidden = |s: &str| s.contains(['~', '&', ';', ' ', ',', '"']);
    if params
        .acl
        .iter()
        .any(|p| p.is_empty() || forbidden(p) || p.contains(acl::SEPARATOR))
    {
        return Err(TokenError::BadParams(
            "acl patterns must be non-empty and contain none of ~ ! & ; , \" or space",
        ));
    }
    if params.id.as_deref().is_some_and(forbidden) {
        return Err(TokenError::BadParams(
            "id must contain none of ~ & ; , \" or space",
        ));
    }
    let mut token = format!("exp={}", params.expires_secs);
    if let Some(start) = params.start_secs {
        token.push_str(&format!("~st={start}"));
    }
    token.push_str("~acl=");
    token.push_str(&params.acl.join("!"));
    if let Some(id) = &params.id {
        token.push_str("~id=");
        token.push_str(id);
    }
    let mut mac = key.mac();
    mac.update(token.as_bytes());
    token.push_str("~hmac=");
    token.push_str(&encode_hex(&mac.finalize().into_bytes()));
    Ok(token)
}

/// Checks `token` for a request to `path` at `now_secs` against `keys` (any may match: during a
/// rotation the new and the old key are both given). The signature is checked first, so an
/// expired *and* forged token is reported as a bad signature and nothing unsigned is trusted.
/// The same as [`authenticate`] then [`Claims::admit`].
pub fn verify(token: &str, path: &str, now_secs: u64, keys: &[Key]) -> Result<Claims, TokenError> {
    let claims = authenticate(token, keys)?;
    claims.admit(path, now_secs)?;
    Ok(claims)
}

/// The request-independent half of [`verify`]: the token's form and signature. What it
/// returns holds for as long as `keys` do, whatever the request, so a caller that sees the
/// same token again (a viewer's every segment) may keep it and only [`Claims::admit`] each
/// request.
pub fn authenticate(token: &str, keys: &[Key]) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("longer than 4096 bytes"));
    }
    let (signed, hmac_hex) = token
        .rsplit_once("~hmac=")
        .ok_or(TokenError::Malformed("no ~hmac= field at the end"))?;
    if hmac_hex.len() != HMAC_HEX_LEN {
        return Err(TokenError::Malformed("hmac is not 64 hex digits"));
    }
    let signature = decode_hex(hmac_hex).ok_or(TokenError::Malformed("hmac is not hex"))?;
    let fields = parse_fields(signed)?;
    // `verify_slice` compares in constant time (subtle), so timing says nothing about how much
    // of a forged signature was right.
    let key_index = keys
        .iter()
        .position(|key| {
            let mut mac = key.mac();
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
        .ok_or(TokenError::BadSignature)?;
    Ok(Claims {
        expires_secs: fields.expires_secs,
        start_secs: fields.start_secs,
        acl: fields.acl.to_owned(),
        id: fields.id.map(str::to_owned),
        key_index,
    })
}

impl Claims {
    /// The request-dependent half of [`verify`]: whether these claims admit a request for
    /// `path` at `now_secs` (start time, expiry, path ACL, in that order).
    pub fn admit(&self, path: &str, now_secs: u64) -> Result<(), TokenError> {
        if let Some(start_secs) = self.start_secs {
            if now_secs < start_secs {
                return Err(TokenError::NotYetValid {
                    start_secs,
                    now_secs,
                });
            }
        }
        if now_secs >= self.expires_secs {
            return Err(TokenError::Expired {
                expires_secs: self.expires_secs,
                now_secs,
            });
        }
        if !acl::allows(&self.acl, path) {
            return Err(TokenError::PathNotAllowed(path.to_owned()));
        }
        Ok(())
    }
}

struct Fields<'a> {
    expires_secs: u64,
    start_secs: Option<u64>,
    acl: &'a str,
    id: Option<&'a str>,
}

fn parse_fields(signed: &str) -> Result<Fields<'_>, TokenError> {
    let (mut exp, mut st, mut acl, mut id, mut data) = (None, None, None, None, None);
    for field in signed.split('~') {
        let (name, value) = field
            .split_once('=')
            .ok_or(TokenError::Malformed("a field is not name=value"))?;
        let slot = match name {
            "exp" => &mut exp,
            "st" => &mut st,
            "acl" => &mut acl,
            "id" => &mut id,
            "data" => &mut data,
            // `url=` (single-URL tokens) and `ip=` need information this check does not have;
            // refusing them beats accepting a token whose restriction is silently ignored.
            _ => {
                return Err(TokenError::Malformed(
                    "unknown field (exp, st, acl, id, data allowed)",
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(TokenError::Malformed("a field appears twice"));
        }
    }
    let number = |value: &str, what| {
        value
            .parse::<u64>()
            .map_err(|_| TokenError::Malformed(what))
    };
    let expires_secs = number(
        exp.ok_or(TokenError::Malformed("no exp field"))?,
        "exp is not a number",
    )?;
    let start_secs = st.map(|st| number(st, "st is not a number")).transpose()?;
    let acl = acl.ok_or(TokenError::Malformed("no acl field"))?;
    if acl.is_empty() {
        return Err(TokenError::Malformed("empty acl"));
    }
    Ok(Fields {
        expires_secs,
        start_secs,
        acl,
        id,
    })
}

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The bytes of an even-length hex string, or `None`.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000;

    fn key(byte: u8) -> Key {
        Key::from_hex(&encode_hex(&[byte; 32])).unwrap()
    }

    fn params(acl: &str) -> SignParams {
        SignParams {
            expires_secs: NOW + 60,
            start_secs: None,
            acl: vec![acl.to_owned()],
            id: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_for_a_path_its_acl_covers() {
        let token = sign(&key(1), &params("/live/cam1/*")).unwrap();
        assert!(token.starts_with(&format!("exp={}~acl=/live/cam1/*~hmac=", NOW + 60)));
        let claims = verify(&token, "/live/cam1/720p/3.ts", NOW, &[key(1)]).unwrap();
        assert_eq!(claims.expires_secs, NOW + 60);
        assert_eq!(claims.acl, "/live/cam1/*");
        assert_eq!(claims.key_index, 0);
    }

    #[test]
    fn the_signature_matches_an_independent_hmac_sha256() {
        // RFC 4231 test case 2 pins the primitive; the second half pins the message layout:
        // HMAC over the token text before `~hmac=`.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            encode_hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let token = sign(&key_from(b"0123456789abcdef"), &params("/a")).unwrap();
        let (signed, hex) = token.rsplit_once("~hmac=").unwrap();
        let mut mac = HmacSha256::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(signed.as_bytes());
        assert_eq!(hex, encode_hex(&mac.finalize().into_bytes()));
    }

    fn key_from(bytes: &[u8]) -> Key {
        Key::from_hex(&encode_hex(bytes)).unwrap()
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let token = sign(&key(1), &params("/*")).unwrap();
        let err = verify(&token, "/x", NOW + 60, &[key(1)]).unwrap_err();
        assert_eq!(
            err,
            TokenError::Expired {
                expires_secs: NOW + 60,
                now_secs: NOW + 60
            }
        );
        assert_eq!(err.as_str(), "expired");
        assert!(verify(&token, "/x", NOW + 59, &[key(1)]).is_ok());
    }

    #[test]
    fn a_token_before_its_start_time_is_refused_as_not_yet_valid() {
        let mut p = params("/*");
        p.start_secs = Some(NOW + 10);
        let token = sign(&key(1), &p).unwrap();
        assert!(token.contains(&format!("~st={}~", NOW + 10)));
        let err = verify(&token, "/x", NOW, &[key(1)]).unwrap_err();
        assert_eq!(err.as_str(), "not-yet-valid");
        assert!(verify(&token, "/x", NOW + 10, &[key(1)]).is_ok());
    }

    #[test]
    fn a_token_signed_with_another_key_is_a_bad_signature() {
        let token = sign(&key(2), &params("/*")).unwrap();
        let err = verify(&token, "/x", NOW, &[key(1)]).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        assert_eq!(err.as_str(), "bad-signature");
    }

    #[test]
    fn a_token_whose_fields_were_edited_is_a_bad_signature() {
        let token = sign(&key(1), &params("/live/a/*")).unwrap();
        let forged = token.replace("/live/a/*", "/*");
        assert_eq!(
            verify(&forged, "/x", NOW, &[key(1)]),
            Err(TokenError::BadSignature)
        );
        let later = token.replace(&format!("exp={}", NOW + 60), &format!("exp={}", NOW + 6000));
        assert_eq!(
            verify(&later, "/live/a/1.ts", NOW + 100, &[key(1)]),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn during_a_rotation_tokens_of_the_old_and_the_new_key_both_verify() {
        let (new, old) = (key(1), key(2));
        let by_old = sign(&old, &params("/*")).unwrap();
        let by_new = sign(&new, &params("/*")).unwrap();
        let keys = [new.clone(), old];
        assert_eq!(verify(&by_new, "/x", NOW, &keys).unwrap().key_index, 0);
        assert_eq!(verify(&by_old, "/x", NOW, &keys).unwrap().key_index, 1);
        // After the rotation ends only the new key is configured.
        assert_eq!(
            verify(&by_old, "/x", NOW, &[new]),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_path_outside_the_acl_is_refused_and_named() {
        let token = sign(&key(1), &params("/live/a/*")).unwrap();
        let err = verify(&token, "/live/b/index.m3u8", NOW, &[key(1)]).unwrap_err();
        assert_eq!(err, TokenError::PathNotAllowed("/live/b/index.m3u8".into()));
        assert_eq!(err.as_str(), "path-not-allowed");
    }

    #[test]
    fn malformed_tokens_get_a_clear_reason_never_a_panic() {
        let k = [key(1)];
        let good_hmac = "0".repeat(64);
        let cases: Vec<(String, &str)> = vec![
            ("garbage".into(), "no ~hmac= field at the end"),
            ("exp=1~acl=/*~hmac=abc".into(), "hmac is not 64 hex digits"),
            (
                format!("exp=1~acl=/*~hmac={}", "zz".repeat(32)),
                "hmac is not hex",
            ),
            (
                format!("exp=x~acl=/*~hmac={good_hmac}"),
                "exp is not a number",
            ),
            (format!("acl=/*~hmac={good_hmac}"), "no exp field"),
            (format!("exp=1~hmac={good_hmac}"), "no acl field"),
            (
                format!("exp=1~exp=2~acl=/*~hmac={good_hmac}"),
                "a field appears twice",
            ),
            (
                format!("exp=1~ip=1.2.3.4~acl=/*~hmac={good_hmac}"),
                "unknown field (exp, st, acl, id, data allowed)",
            ),
            (
                format!("exp=1~acl~hmac={good_hmac}"),
                "a field is not name=value",
            ),
            (
                format!("exp=1~st=-5~acl=/*~hmac={good_hmac}"),
                "st is not a number",
            ),
            ("x".repeat(5000), "longer than 4096 bytes"),
        ];
        for (token, reason) in cases {
            assert_eq!(
                verify(&token, "/x", NOW, &k),
                Err(TokenError::Malformed(reason)),
                "{token}"
            );
        }
        assert_eq!(verify("", "/x", NOW, &k), Err(TokenError::Missing));
        // Multi-byte UTF-8 where hex is expected must not panic on a char boundary.
        let emoji = format!("exp=1~acl=/*~hmac={}", "é".repeat(32));
        assert_eq!(
            verify(&emoji, "/x", NOW, &k),
            Err(TokenError::Malformed("hmac is not hex"))
        );
    }

    #[test]
    fn signing_refuses_acls_that_would_break_the_format() {
        for acl in ["", "/a~b", "/a!b", "/a b"] {
            assert!(
                matches!(sign(&key(1), &params(acl)), Err(TokenError::BadParams(_))),
                "{acl}"
            );
        }
        let mut p = params("/*");
        p.id = Some("viewer~1".into());
        assert!(sign(&key(1), &p).is_err());
    }

    #[test]
    fn keys_must_be_hex_and_long_enough() {
        assert!(Key::from_hex("not hex at all, not hex at all!!").is_err());
        assert!(Key::from_hex("abc").is_err());
        assert!(Key::from_hex(&"ab".repeat(15)).is_err());
        assert!(Key::from_hex(&format!(" {} ", "AB".repeat(16))).is_ok());
        assert_eq!(format!("{:?}", key(7)), "Key(32 bytes)");
    }

    #[test]
    fn id_and_data_fields_are_covered_by_the_signature() {
        let mut p = params("/*");
        p.id = Some("viewer-42".into());
        let token = sign(&key(1), &p).unwrap();
        assert_eq!(
            verify(&token, "/x", NOW, &[key(1)]).unwrap().id.as_deref(),
            Some("viewer-42")
        );
        let swapped = token.replace("viewer-42", "viewer-43");
        assert_eq!(
            verify(&swapped, "/x", NOW, &[key(1)]),
            Err(TokenError::BadSignature)
        );
    }
}
