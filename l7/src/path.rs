//! Request paths, normalised before rules see them, so that what is checked is what the
//! application gets (the normalised path is what is forwarded).
//!
//! The rules, in order:
//!
//! 1. The request target must be origin-form (`/...`); `*` (for `OPTIONS`) is kept as is.
//!    Absolute-form (`http://host/path`) is reduced to its path and query.
//! 2. The path may not contain a percent-encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`), nor a
//!    raw `\`, control or non-ASCII character: applications disagree on what those mean, so the request
//!    is refused (400) rather than guessed at.
//! 3. Percent-encoded unreserved characters (letters, digits, `-._~`) are decoded (`%2e` is
//!    `.`, `%41` is `A`); other escapes are kept, with upper-case hex.
//! 4. Dot-segments are removed as RFC 3986 §5.2.4 says (`/a/./b/../c` is `/a/c`), after step
//!    3, so `/api/v1/%2e%2e/admin` is `/api/admin`. A segment that is a dot-segment once its
//!    `;` parameters are stripped (`..;`, `.;x`) is refused (400): servlet containers (Tomcat,
//!    Jetty) strip them and read `/api/v1/..;/admin` as `/api/admin`, where RFC 3986 keeps
//!    `..;` as a name. Refusing is safer than guessing which reading the backend has; other
//!    parameters (`/cart;jsessionid=...`) pass as they are.
//! 5. Runs of `/` become one.
//!
//! The query string is kept unchanged after the path: like Cilium (which matches Envoy's
//! `:path`), a path rule sees `path?query`.

use std::borrow::Cow;

use thiserror::Error;

/// A request target that is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// Not `/...`, `*` or `scheme://authority/...`.
    #[error("request target must start with '/'")]
    NotOriginForm,
    /// `%2F`, `%5C` or `%00` in the path.
    #[error("percent-encoded '/', '\\' or NUL in the path")]
    EncodedSeparator,
    /// A raw backslash, control or non-ASCII character.
    #[error("backslash, control or non-ASCII character in the path")]
    BadCharacter,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// A segment that servlet containers read as `.` or `..` (`..;`, `.;x`).
    #[error("a path segment that is a dot-segment once its ;parameters are stripped")]
    ParameterDotSegment,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes, checks the rest (steps 2 and 3).
fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            if matches!(v, b'/' | b'\\' | 0) {
                return Err(PathError::EncodedSeparator);
            }
            if unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
            i += 3;
            continue;
        }
        // Non-ASCII bytes are not valid in a request target (RFC 3986), though parsers let
        // them through; a backend could decode them as anything.
        if b == b'\\' || b.is_ascii_control() || !b.is_ascii() {
            return Err(PathError::BadCharacter);
        }
        out.push(char::from(b));
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4, then merging runs of slashes (steps 4 and 5).
fn remove_dots(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// The normalised `path?query` of a request target, borrowed when the target is already
/// normal (the common case, checked by one scan, so that a request costs no copy here).
pub fn normalize(target: &str) -> Result<Cow<'_, str>, PathError> {
    if already_normal(target) {
        Ok(Cow::Borrowed(target))
    } else {
        rewrite(target).map(Cow::Owned)
    }
}

/// Whether [`rewrite`] would return `target` unchanged: origin-form, and a path with no escape,
/// backslash, control, space or non-ASCII character, no empty segment but a trailing one, and no dot-segment.
fn already_normal(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let last = rest.split('/').count() - 1;
    rest.split('/').enumerate().all(|(i, seg)| {
        (!seg.is_empty() || i == last)
            && seg != "."
            && seg != ".."
            && !seg
                .bytes()
                .any(|b| b == b'%' || b == b';' || b == b'\\' || !b.is_ascii_graphic())
    })
}

/// Normalises a target that needs it (see the module docs).
fn rewrite(target: &str) -> Result<String, PathError> {
    if target == "*" {
        return Ok(target.to_string());
    }
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target.split_once("://").map(|(_, r)| r) {
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    } else {
        return Err(PathError::NotOriginForm);
    };
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    };
    let decoded = decode(path)?;
    if decoded
        .split('/')
        .any(|seg| seg.contains(';') && matches!(seg.split(';').next(), Some("." | "..")))
    {
        return Err(PathError::ParameterDotSegment);
    }
    let mut out = remove_dots(&decoded);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_cannot_climb_out_of_a_prefix() {
        assert_eq!(normalize("/api/v1/../admin").as_deref(), Ok("/api/admin"));
        assert_eq!(
            normalize("/api/v1/%2e%2e/admin").as_deref(),
            Ok("/api/admin")
        );
        assert_eq!(
            normalize("/api/v1/%2E%2E/%2e%2e/admin").as_deref(),
            Ok("/admin")
        );
        assert_eq!(normalize("/api/./v1/./x").as_deref(), Ok("/api/v1/x"));
        assert_eq!(normalize("/../../etc/passwd").as_deref(), Ok("/etc/passwd"));
        assert_eq!(normalize("/a/b/..").as_deref(), Ok("/a/"));
    }

    #[test]
    fn duplicate_slashes_collapse() {
        assert_eq!(normalize("//api///v1//x").as_deref(), Ok("/api/v1/x"));
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert_eq!(normalize("/x/").as_deref(), Ok("/x/"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_in_upper_case() {
        assert_eq!(normalize("/%61pi/v%31").as_deref(), Ok("/api/v1"));
        assert_eq!(normalize("/a%20b%3a").as_deref(), Ok("/a%20b%3A"));
    }

    #[test]
    fn encoded_separators_backslashes_and_bad_escapes_are_refused() {
        assert_eq!(normalize("/api%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/api%2fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/api%5cadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/api%00"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/api\\admin"), Err(PathError::BadCharacter));
        assert_eq!(normalize("/api%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/api%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("api"), Err(PathError::NotOriginForm));
        // Raw non-ASCII, whether the path needs rewriting or not: a backend may decode it as
        // anything, and a rewrite must never widen it.
        assert_eq!(normalize("/public/é"), Err(PathError::BadCharacter));
        assert_eq!(
            normalize("/admin/%2e%2e/public/é"),
            Err(PathError::BadCharacter)
        );
    }

    #[test]
    fn a_target_is_borrowed_only_when_rewriting_would_not_change_it() {
        // Every target of up to three segments drawn from these pieces, with and without a
        // trailing slash and a query.
        let pieces = [
            "", ".", "..", "a", "b.c", "%2e", "%41", "%20", "a\\b", "x..y", ".d",
        ];
        let mut targets = vec!["/".to_string(), "*".to_string(), "a".to_string()];
        for x in pieces {
            for y in pieces {
                for z in ["", "a", ".."] {
                    for end in ["", "/", "?q=/../%2F", "/?x"] {
                        targets.push(format!("/{x}/{y}/{z}{end}"));
                        targets.push(format!("/{x}/{y}{end}"));
                        targets.push(format!("/{x}{end}"));
                    }
                }
            }
        }
        let mut borrowed = 0;
        for t in &targets {
            let fast = normalize(t);
            assert_eq!(fast.as_deref(), rewrite(t).as_deref(), "{t}");
            if let Ok(Cow::Borrowed(_)) = fast {
                borrowed += 1;
            }
        }
        // The fast path is taken for the plain ones (and is not vacuous).
        assert!(matches!(
            normalize("/api/v1/items?id=3"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/x/"), Ok(Cow::Borrowed(_))));
        assert!(borrowed > 100, "{borrowed} of {}", targets.len());
    }

    #[test]
    fn the_query_is_kept_as_is_and_absolute_form_is_reduced() {
        assert_eq!(
            normalize("/a/../b?x=../y&z=%2F").as_deref(),
            Ok("/b?x=../y&z=%2F")
        );
        assert_eq!(
            normalize("http://api.local:8080/v1/x?q").as_deref(),
            Ok("/v1/x?q")
        );
        assert_eq!(normalize("http://api.local").as_deref(), Ok("/"));
        assert_eq!(normalize("*").as_deref(), Ok("*"));
    }

    #[test]
    fn segments_servlet_containers_read_as_dot_segments_are_refused() {
        for target in [
            "/api/v1/..;/..;/admin",
            "/api/v1/..;x=1/admin",
            "/api/.;/v1",
            "/api/v1/%2e%2e;/admin",
            "/api/v1/.%2E;jsessionid=1/admin",
        ] {
            assert_eq!(
                normalize(target),
                Err(PathError::ParameterDotSegment),
                "{target}"
            );
        }
        // Parameters elsewhere are the application's business, kept as sent.
        assert_eq!(
            normalize("/cart;jsessionid=AB12/items").as_deref(),
            Ok("/cart;jsessionid=AB12/items")
        );
        assert_eq!(normalize("/;jsessionid=1").as_deref(), Ok("/;jsessionid=1"));
    }
}
