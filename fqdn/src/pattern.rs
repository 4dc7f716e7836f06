//! What `matchName` and `matchPattern` match, and one automaton for all of a policy's selectors.
//!
//! Names are compared in canonical form: lower case, without the trailing dot ([`canonical`]).
//! The selectors arrive canonical from the policy crate. The pattern language is Cilium's
//! (`pkg/fqdn/matchpattern`):
//!
//! - `matchName` matches that name only.
//! - In `matchPattern`, a `*` (or a run of them) matches zero or more of `a-z`, `0-9`, `-`, `_`:
//!   it never crosses a dot. `*.cilium.io` matches `sub.cilium.io` but neither `cilium.io` nor
//!   `a.sub.cilium.io`; `*cilium.io` matches `cilium.io` and `xcilium.io` (`podwall analyze lint`
//!   warns about that one).
//! - A leading `**.` (two or more stars, then a dot) matches one or more whole labels:
//!   `**.cilium.io` matches `sub.cilium.io` and `a.b.cilium.io`, not `cilium.io` (Cilium 1.19).
//!   Anywhere else `**` is the same as `*`.
//! - A pattern made only of stars matches every name made of those characters, and the root.
//! - Names with characters outside the DNS set (spaces, escapes) match only a `matchName` equal
//!   to them, which validation never allows: in effect, nothing.

use podwall_policy::{FqdnId, FqdnSelector};
use regex::RegexSet;

/// The characters a `*` stands for.
const LABEL_CHAR: &str = "[-a-z0-9_]";

/// A name as selectors see it: ASCII lower case, one trailing dot removed.
pub fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some(stripped) => stripped.to_string(),
        None => lower,
    }
}

/// The anchored regular expression (over canonical names) a selector stands for.
pub fn to_regex(selector: &FqdnSelector) -> String {
    match selector {
        FqdnSelector::MatchName(name) => format!("^{}$", regex::escape(name)),
        FqdnSelector::MatchPattern(p) if p.bytes().all(|b| b == b'*') => {
            format!("^(?:{LABEL_CHAR}+(?:\\.{LABEL_CHAR}+)*)?$")
        }
        FqdnSelector::MatchPattern(p) => {
            let mut out = String::from("^");
            let stars = p.bytes().take_while(|b| *b == b'*').count();
            let mut rest = p.as_str();
            if stars >= 2 && p.as_bytes().get(stars) == Some(&b'.') {
                out.push_str(&format!("{LABEL_CHAR}+(?:\\.{LABEL_CHAR}+)*\\."));
                rest = &p[stars + 1..];
            }
            let mut prev_star = false;
            for c in rest.chars() {
                match c {
                    '*' if prev_star => {}
                    '*' => out.push_str(&format!("{LABEL_CHAR}*")),
                    '.' => out.push_str("\\."),
                    c => out.push_str(&regex::escape(&c.to_string())),
                }
                prev_star = c == '*';
            }
            out.push('$');
            out
        }
    }
}

/// Every selector of a compiled policy in one automaton: a name is matched once, whatever the
/// number of selectors.
#[derive(Debug, Clone)]
pub struct Matcher {
    set: RegexSet,
}

/// A selector that does not compile (validation should have refused it).
#[derive(Debug, thiserror::Error)]
#[error("DNS selectors do not compile: {0}")]
pub struct MatcherError(#[from] regex::Error);

impl Matcher {
    /// Compiles the selectors, in order: [`FqdnId`] `i` is `selectors[i]`.
    pub fn new(selectors: &[FqdnSelector]) -> Result<Self, MatcherError> {
        let set = RegexSet::new(selectors.iter().map(to_regex))?;
        Ok(Matcher { set })
    }

    /// A matcher with no selectors: matches nothing.
    pub fn empty() -> Self {
        Matcher {
            set: RegexSet::empty(),
        }
    }

    /// The selectors a name matches (sorted), the name in any case, with or without its dot.
    pub fn matching(&self, name: &str) -> Vec<FqdnId> {
        if self.set.is_empty() {
            return Vec::new();
        }
        self.set
            .matches(&canonical(name))
            .into_iter()
            .map(|i| FqdnId(i as u32))
            .collect()
    }

    /// Whether a name matches one of `among` (ids of this matcher's selectors).
    pub fn matches_any(&self, name: &str, among: &[FqdnId]) -> bool {
        if among.is_empty() {
            return false;
        }
        let m = self.set.matches(&canonical(name));
        among.iter().any(|id| m.matched(id.0 as usize))
    }

    /// How many selectors there are.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Matcher {
        Matcher::new(&[FqdnSelector::MatchPattern(p.into())]).expect("compiles")
    }

    fn name(n: &str) -> Matcher {
        Matcher::new(&[FqdnSelector::MatchName(n.into())]).expect("compiles")
    }

    fn hit(m: &Matcher, n: &str) -> bool {
        !m.matching(n).is_empty()
    }

    #[test]
    fn match_name_is_exact_and_ignores_case_and_the_trailing_dot() {
        let m = name("api.github.com");
        assert!(hit(&m, "api.github.com"));
        assert!(hit(&m, "API.GitHub.com."));
        assert!(!hit(&m, "github.com"));
        assert!(!hit(&m, "xapi.github.com"));
        assert!(!hit(&m, "api.github.com.evil.io"));
        assert!(!hit(&m, "apixgithub.com"), "the dot is literal");
    }

    // The examples of Cilium's documentation ("DNS Policy and IP Discovery").
    #[test]
    fn a_star_stays_within_one_label() {
        let m = pattern("*.cilium.io");
        assert!(hit(&m, "sub.cilium.io"));
        assert!(!hit(&m, "cilium.io"));
        assert!(!hit(&m, "a.sub.cilium.io"));
        let m = pattern("part*ial.com");
        assert!(hit(&m, "partial.com"));
        assert!(hit(&m, "part-extra-ial.com"));
        assert!(!hit(&m, "part.extra.ial.com"));
        let m = pattern("special*service.api.cilium.io");
        assert!(hit(&m, "special-region1-service.api.cilium.io"));
        assert!(!hit(&m, "region1-service.api.cilium.io"));
    }

    #[test]
    fn a_star_glued_to_a_domain_matches_that_label_not_subdomains() {
        let m = pattern("*cilium.io");
        assert!(hit(&m, "cilium.io"));
        assert!(hit(&m, "xcilium.io"));
        assert!(!hit(&m, "sub.cilium.io"));
    }

    #[test]
    fn a_leading_double_star_matches_one_or_more_labels() {
        let m = pattern("**.cilium.io");
        assert!(hit(&m, "sub.cilium.io"));
        assert!(hit(&m, "a.b.c.cilium.io"));
        assert!(!hit(&m, "cilium.io"));
        assert!(!hit(&m, "xcilium.io"));
        let m = pattern("***.cilium.io");
        assert!(hit(&m, "a.b.cilium.io"), "any run of two or more stars");
    }

    #[test]
    fn an_interior_double_star_is_a_single_star() {
        let m = pattern("api.**.example.com");
        assert!(hit(&m, "api.eu.example.com"));
        assert!(!hit(&m, "api.a.b.example.com"));
    }

    #[test]
    fn a_lone_star_matches_every_name_and_the_root() {
        let m = pattern("*");
        for n in ["example.com", "a.b.c.d", "localhost", "x_y.example", "."] {
            assert!(hit(&m, n), "{n}");
        }
        assert!(!hit(&m, "has space.com"));
    }

    #[test]
    fn several_selectors_are_matched_at_once_by_id() {
        let m = Matcher::new(&[
            FqdnSelector::MatchName("github.com".into()),
            FqdnSelector::MatchPattern("*.github.com".into()),
            FqdnSelector::MatchPattern("**.github.com".into()),
        ])
        .expect("compiles");
        assert_eq!(m.matching("api.github.com"), [FqdnId(1), FqdnId(2)]);
        assert_eq!(m.matching("github.com"), [FqdnId(0)]);
        assert_eq!(m.matching("a.b.github.com"), [FqdnId(2)]);
        assert!(m.matches_any("GITHUB.COM.", &[FqdnId(0)]));
        assert!(!m.matches_any("github.com", &[FqdnId(1), FqdnId(2)]));
        assert!(Matcher::new(&[]).expect("empty").matching("x").is_empty());
    }
}
