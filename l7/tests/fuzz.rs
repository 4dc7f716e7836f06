//! Fuzzing the request-target normaliser: what the rules check is what is forwarded (see
//! `podwall-fuzz` for the harness and the long-running mode).

use podwall_l7::path::normalize;

/// Targets of the kinds the HTTP end-to-end tests send, the tricky ones included.
const SEEDS: &[&str] = &[
    "/api/v1/users",
    "/api/v1/users/7?verbose=1&x=%41",
    "/api/v1/../admin",
    "/api/v1/%2e%2e/admin",
    "/api/v1/%2E%2e/%2e/admin/",
    "/api/v1/x%2Fadmin",
    "/api/v1/..;/admin",
    "//api///v1/./users/.",
    "/a/b/../../../../etc/passwd",
    "/%7Euser/%41%42%43",
    "http://api.example.com:8080/api/v1/users?q=1",
    "*",
    "/?",
    "/a#frag",
];

#[test]
fn a_normalised_target_normalises_to_itself_with_no_dot_segment_left() {
    let seeds: Vec<&[u8]> = SEEDS.iter().map(|s| s.as_bytes()).collect();
    let mut normal = 0u64;
    podwall_fuzz::run("path", &seeds, 512, |input| {
        let Ok(target) = std::str::from_utf8(input) else {
            return;
        };
        let Ok(n) = normalize(target) else {
            return;
        };
        normal += 1;
        let n = n.into_owned();
        // What the rules saw is what the backend gets, and what it would make of it again.
        assert_eq!(
            normalize(&n).map(|c| c.into_owned()).as_deref(),
            Ok(n.as_str()),
            "{target:?}"
        );
        if n == "*" {
            return;
        }
        let path = n.split('?').next().unwrap_or_default();
        assert!(path.starts_with('/'), "{target:?} -> {n:?}");
        assert!(!path.contains("//"), "{target:?} -> {n:?}");
        for segment in path.split('/') {
            assert!(segment != "." && segment != "..", "{target:?} -> {n:?}");
            assert!(
                !segment.to_ascii_lowercase().contains("%2e"),
                "{target:?} -> {n:?}"
            );
        }
        assert!(!path.contains('\\'), "{target:?} -> {n:?}");
        assert!(n.len() <= target.len() * 3 + 1, "{target:?} -> {n:?}");
    });
    eprintln!("{normal} inputs normalised");
    assert!(normal > 0);
}
