//! Path patterns of a token's `acl` field: `*` matches any run of characters (including `/`, as
//! in EdgeAuth, so `/live/cam1/*` covers every rendition below it), `?` exactly one character,
//! anything else itself. Several patterns are joined with `!`.

/// The separator between patterns in one `acl` field.
pub const SEPARATOR: char = '!';

/// Whether `path` matches any of the `!`-separated patterns in `acl`.
pub fn allows(acl: &str, path: &str) -> bool {
    acl.split(SEPARATOR).any(|pattern| matches(pattern, path))
}

/// Whether `path` matches the single wildcard `pattern`.
///
/// Greedy matching with one backtrack point (the last `*`): linear in practice and at worst
/// `pattern.len() × path.len()`, never exponential, so a hostile pattern or path cannot stall a
/// request.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.as_bytes();
    let path = path.as_bytes();
    let (mut p, mut s) = (0, 0);
    // Position after the last `*` seen, and the path position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while s < path.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, s));
                p += 1;
            }
            Some(&c) if c == b'?' || c == path[s] => {
                p += 1;
                s += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry from there.
                Some((after_star, consumed)) => {
                    p = after_star;
                    s = consumed + 1;
                    star = Some((after_star, consumed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_star_covers_everything_below_a_directory() {
        assert!(matches("/live/cam1/*", "/live/cam1/index.m3u8"));
        assert!(matches("/live/cam1/*", "/live/cam1/720p/seg-12.ts"));
        assert!(!matches("/live/cam1/*", "/live/cam2/index.m3u8"));
        assert!(!matches("/live/cam1/*", "/live/cam1"));
    }

    #[test]
    fn an_exact_pattern_matches_only_itself() {
        assert!(matches("/live/a.m3u8", "/live/a.m3u8"));
        assert!(!matches("/live/a.m3u8", "/live/a.m3u8x"));
        assert!(!matches("/live/a.m3u8", "/live/a.m3u"));
    }

    #[test]
    fn a_star_in_the_middle_and_a_question_mark_match_as_globs() {
        assert!(matches("/live/*/index.m3u8", "/live/cam1/index.m3u8"));
        assert!(matches("/live/*/index.m3u8", "/live/a/b/index.m3u8"));
        assert!(!matches("/live/*/index.m3u8", "/live/cam1/seg.ts"));
        assert!(matches("/live/cam?/*", "/live/cam7/x.ts"));
        assert!(!matches("/live/cam?/*", "/live/cam77x.ts"));
        assert!(matches("*", ""));
        assert!(matches("**", "/x"));
    }

    #[test]
    fn several_patterns_separated_by_bang_allow_any_of_them() {
        let acl = "/live/a/*!/live/b/index.m3u8";
        assert!(allows(acl, "/live/a/1.ts"));
        assert!(allows(acl, "/live/b/index.m3u8"));
        assert!(!allows(acl, "/live/b/1.ts"));
    }

    #[test]
    fn a_pathological_pattern_finishes_quickly() {
        let pattern = "*a*a*a*a*a*a*a*a*a*b";
        let path = "a".repeat(4000);
        assert!(!matches(pattern, &path));
    }
}
