//! HTTP rule matching, compiled once per pod.
//!
//! Every HTTP rule entry of every policy that applies to the pod is flattened into one list;
//! the method, path and host patterns of all entries go into three `RegexSet`s (one automaton
//! each, anchored so that a pattern must match the whole value). A request is checked by
//! running the three automata once, intersecting the entries they accept with the entries the
//! connection may use (its peer's rules, decided when it was accepted), then checking headers
//! of the remaining candidates in order. The cost per request depends on the request's length,
//! not on the number of rules.
//!
//! Semantics (Cilium's, as documented for `rules.http`):
//! - `method`, `path`, `host`: regular expressions (RE2 syntax, as Envoy's) that must match the
//!   whole value, case-sensitively; an absent field matches anything. The path is matched as
//!   normalised by [`crate::path`], with its query string.
//! - `headers`: `Name` must be present; `Name: value` must be present with exactly that value
//!   (names are case-insensitive, values are not).
//! - `headerMatches` with `mismatch`: a header that does not match does not deny the request;
//!   instead it is logged (`LOG`), added (`ADD`), removed (`DELETE`) or set (`REPLACE`).
//! - Fields of one entry are ANDed; entries, and the entries of every rule that applies, are ORed.

use std::cell::RefCell;

use fixedbitset::FixedBitSet;
use http::HeaderMap;
use podwall_policy::{HeaderMismatch, HttpRule, RuleRef};
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::{Input, MatchKind, PatternSet, meta::Regex};

/// What the rules see of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The normalised `path?query`.
    pub path: &'a str,
    /// The host (`Host` or `:authority`) without its port.
    pub host: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
}

/// A change to make to an allowed request, from a `headerMatches` mismatch action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    /// Only log that the header did not match.
    Log(String),
    /// Add the header with this value.
    Add(String, String),
    /// Remove the header.
    Delete(String),
    /// Set the header to this value.
    Replace(String, String),
}

/// An allowed request: which rule and entry allowed it, and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMatch {
    /// The rule (policy, direction, index).
    pub rule: RuleRef,
    /// The entry's index in the rule's `http` list.
    pub entry: usize,
    /// Header changes to make before forwarding.
    pub actions: Vec<HeaderAction>,
}

#[derive(Debug)]
struct Entry {
    rule: RuleRef,
    index: usize,
    headers: Vec<podwall_policy::HeaderMatch>,
}

/// One field's patterns as a single automaton (`regex`'s `RegexSet` engine, used directly so
/// that the matches go into reused space instead of a new allocation per request).
#[derive(Debug)]
struct Field {
    set: Regex,
    /// Pattern `i` belongs to entry `owners[i]`.
    owners: Vec<usize>,
    /// Entries without a pattern for this field: they match any value.
    always: FixedBitSet,
}

impl Field {
    fn build(
        entries: usize,
        patterns: impl Iterator<Item = (usize, Option<String>)>,
    ) -> Result<Self, regex::Error> {
        let mut always = FixedBitSet::with_capacity(entries);
        let mut owners = Vec::new();
        let mut anchored = Vec::new();
        for (entry, pattern) in patterns {
            match pattern {
                None => always.insert(entry),
                Some(p) => {
                    owners.push(entry);
                    anchored.push(format!("^(?:{p})$"));
                }
            }
        }
        // `regex`'s own check first, for its error messages; the two share one engine.
        regex::RegexSet::new(&anchored)?;
        // Configured as `regex` configures a set: every pattern that matches is reported.
        let set = Regex::builder()
            .configure(
                Regex::config()
                    .match_kind(MatchKind::All)
                    .utf8_empty(true)
                    .which_captures(WhichCaptures::None),
            )
            .syntax(regex_automata::util::syntax::Config::new().utf8(true))
            .build_many(&anchored)
            .map_err(|e| match e.size_limit() {
                Some(limit) => regex::Error::CompiledTooBig(limit),
                None => regex::Error::Syntax(e.to_string()),
            })?;
        Ok(Field {
            set,
            owners,
            always,
        })
    }

    /// The entries that accept this value (or that have no pattern).
    fn accepts(&self, value: Option<&str>, into: &mut FixedBitSet, matched: &mut PatternSet) {
        into.clone_from(&self.always);
        if let Some(v) = value
            && !self.owners.is_empty()
        {
            let patterns = self.set.pattern_len();
            if matched.capacity() < patterns {
                *matched = PatternSet::new(patterns);
            }
            matched.clear();
            self.set.which_overlapping_matches(&Input::new(v), matched);
            for p in matched.iter() {
                into.insert(self.owners[p.as_usize()]);
            }
        }
    }
}

/// Working space of a check, kept per thread: requests are checked one at a time on a thread,
/// so a check allocates nothing once the sets have grown to the largest policy's size.
struct Scratch {
    candidates: FixedBitSet,
    field: FixedBitSet,
    matched: PatternSet,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            candidates: FixedBitSet::new(),
            field: FixedBitSet::new(),
            matched: PatternSet::new(0),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Every HTTP rule that can apply to one pod, compiled.
#[derive(Debug)]
pub struct HttpPolicy {
    entries: Vec<Entry>,
    methods: Field,
    paths: Field,
    hosts: Field,
}

impl HttpPolicy {
    /// Compiles the rules. Patterns were validated when the policy was loaded, so an error here
    /// means a pattern the validator accepted and the compiler did not.
    pub fn compile(rules: &[(RuleRef, &[HttpRule])]) -> Result<Self, regex::Error> {
        let mut entries = Vec::new();
        let mut flat: Vec<&HttpRule> = Vec::new();
        for (rule, http) in rules {
            for (index, h) in http.iter().enumerate() {
                entries.push(Entry {
                    rule: *rule,
                    index,
                    headers: h.headers.clone(),
                });
                flat.push(h);
            }
        }
        let n = entries.len();
        Ok(HttpPolicy {
            methods: Field::build(
                n,
                flat.iter().enumerate().map(|(i, h)| (i, h.method.clone())),
            )?,
            paths: Field::build(n, flat.iter().enumerate().map(|(i, h)| (i, h.path.clone())))?,
            hosts: Field::build(n, flat.iter().enumerate().map(|(i, h)| (i, h.host.clone())))?,
            entries,
        })
    }

    /// The entries a connection may use: those of the given rules.
    pub fn mask(&self, rules: &[RuleRef]) -> FixedBitSet {
        let mut mask = FixedBitSet::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            if rules.contains(&e.rule) {
                mask.insert(i);
            }
        }
        mask
    }

    /// The first entry (in policy order) among `mask` that allows the request.
    pub fn check(&self, req: &RequestView<'_>, mask: &FixedBitSet) -> Option<HttpMatch> {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut s) => self.check_in(req, mask, &mut s),
            // Not reached (a check never starts another), but never a panic either.
            Err(_) => self.check_in(req, mask, &mut Scratch::default()),
        })
    }

    fn check_in(
        &self,
        req: &RequestView<'_>,
        mask: &FixedBitSet,
        s: &mut Scratch,
    ) -> Option<HttpMatch> {
        let Scratch {
            candidates,
            field,
            matched,
        } = s;
        self.methods.accepts(Some(req.method), candidates, matched);
        candidates.intersect_with(mask);
        if candidates.is_clear() {
            return None;
        }
        self.paths.accepts(Some(req.path), field, matched);
        candidates.intersect_with(field);
        self.hosts.accepts(req.host, field, matched);
        candidates.intersect_with(field);
        candidates.ones().find_map(|i| {
            let e = &self.entries[i];
            headers(req.headers, &e.headers).map(|actions| HttpMatch {
                rule: e.rule,
                entry: e.index,
                actions,
            })
        })
    }
}

/// Checks the header requirements; `None` when one fails without a mismatch action.
fn headers(map: &HeaderMap, wanted: &[podwall_policy::HeaderMatch]) -> Option<Vec<HeaderAction>> {
    let mut actions = Vec::new();
    for h in wanted {
        let mut values = map.get_all(h.name.as_str()).iter();
        let ok = match &h.value {
            None => values.next().is_some(),
            Some(v) => values.any(|x| x.as_bytes() == v.as_bytes()),
        };
        if ok {
            continue;
        }
        let value = h.value.clone().unwrap_or_default();
        match h.mismatch {
            None => return None,
            Some(HeaderMismatch::Log) => actions.push(HeaderAction::Log(h.name.clone())),
            Some(HeaderMismatch::Add) => actions.push(HeaderAction::Add(h.name.clone(), value)),
            Some(HeaderMismatch::Delete) => actions.push(HeaderAction::Delete(h.name.clone())),
            Some(HeaderMismatch::Replace) => {
                actions.push(HeaderAction::Replace(h.name.clone(), value))
            }
        }
    }
    Some(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwall_policy::{Direction, HeaderMatch, PolicyId};

    fn rule(i: u32) -> RuleRef {
        RuleRef {
            policy: PolicyId(0),
            direction: Direction::Ingress,
            index: i,
        }
    }

    fn h(method: Option<&str>, path: Option<&str>, host: Option<&str>) -> HttpRule {
        HttpRule {
            method: method.map(Into::into),
            path: path.map(Into::into),
            host: host.map(Into::into),
            headers: Vec::new(),
        }
    }

    fn check(
        p: &HttpPolicy,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<HttpMatch> {
        let all: Vec<RuleRef> = p.entries.iter().map(|e| e.rule).collect();
        p.check(
            &RequestView {
                method,
                path,
                host,
                headers,
            },
            &p.mask(&all),
        )
    }

    /// The guides' api-l7-policy: GET /api/v1/.* and POST /api/v1/orders.
    fn api_l7() -> HttpPolicy {
        let rules = [
            h(Some("GET"), Some("/api/v1/.*"), None),
            h(Some("POST"), Some("/api/v1/orders"), None),
        ];
        HttpPolicy::compile(&[(rule(0), &rules[..])]).expect("compile")
    }

    #[test]
    fn the_guides_l7_policy_allows_exactly_what_it_says() {
        let p = api_l7();
        let none = HeaderMap::new();
        assert_eq!(
            check(&p, "GET", "/api/v1/users", None, &none).map(|m| m.entry),
            Some(0)
        );
        assert_eq!(
            check(&p, "GET", "/api/v1/", None, &none).map(|m| m.entry),
            Some(0)
        );
        assert_eq!(
            check(&p, "POST", "/api/v1/orders", None, &none).map(|m| m.entry),
            Some(1)
        );
        assert!(
            check(&p, "POST", "/api/v1/orders/1", None, &none).is_none(),
            "the whole path must match"
        );
        assert!(check(&p, "DELETE", "/api/v1/users", None, &none).is_none());
        assert!(check(&p, "GET", "/api/v2/users", None, &none).is_none());
        assert!(check(&p, "GET", "/admin", None, &none).is_none());
    }

    #[test]
    fn a_check_allocates_nothing_once_its_thread_has_seen_such_requests() {
        let p = api_l7();
        let none = HeaderMap::new();
        let all: Vec<RuleRef> = p.entries.iter().map(|e| e.rule).collect();
        let mask = p.mask(&all);
        let view = |method, path| RequestView {
            method,
            path,
            host: Some("api.local"),
            headers: &none,
        };
        let requests = || {
            assert!(p.check(&view("GET", "/api/v1/users"), &mask).is_some());
            assert!(p.check(&view("POST", "/api/v1/orders"), &mask).is_some());
            assert!(p.check(&view("DELETE", "/api/v1/users"), &mask).is_none());
        };
        // The first checks grow the scratch sets and the automata's lazily built states.
        requests();
        let measured = allocation_counter::measure(|| {
            for _ in 0..100 {
                requests();
            }
        });
        assert_eq!(measured.count_total, 0);
    }

    #[test]
    fn patterns_match_the_whole_value_and_are_case_sensitive() {
        let p = api_l7();
        let none = HeaderMap::new();
        assert!(
            check(&p, "get", "/api/v1/users", None, &none).is_none(),
            "methods are case-sensitive"
        );
        assert!(
            check(&p, "GETX", "/api/v1/users", None, &none).is_none(),
            "no prefix match"
        );
        assert!(check(&p, "GET", "/API/v1/users", None, &none).is_none());
        assert!(
            check(&p, "GET", "/x/api/v1/users", None, &none).is_none(),
            "anchored at the start"
        );
    }

    #[test]
    fn absent_fields_match_anything_and_the_query_is_part_of_the_path() {
        let rules = [
            h(None, Some("/public/.*"), None),
            h(Some("HEAD"), None, None),
        ];
        let p = HttpPolicy::compile(&[(rule(0), &rules[..])]).expect("compile");
        let none = HeaderMap::new();
        assert!(check(&p, "PATCH", "/public/x", None, &none).is_some());
        assert!(check(&p, "HEAD", "/anything", None, &none).is_some());
        assert!(check(&p, "GET", "/public/x?y=1", None, &none).is_some());
        let strict = [h(Some("GET"), Some("/status"), None)];
        let p = HttpPolicy::compile(&[(rule(0), &strict[..])]).expect("compile");
        assert!(
            check(&p, "GET", "/status?verbose", None, &none).is_none(),
            "as in Cilium, the query is matched"
        );
    }

    #[test]
    fn host_patterns_need_a_host() {
        let rules = [h(None, None, Some("api\\.example\\.com"))];
        let p = HttpPolicy::compile(&[(rule(0), &rules[..])]).expect("compile");
        let none = HeaderMap::new();
        assert!(check(&p, "GET", "/", Some("api.example.com"), &none).is_some());
        assert!(check(&p, "GET", "/", Some("evil.com"), &none).is_none());
        assert!(check(&p, "GET", "/", None, &none).is_none());
    }

    #[test]
    fn headers_must_be_present_with_the_value_when_one_is_given() {
        let mut rule_h = h(Some("GET"), None, None);
        rule_h.headers = vec![
            HeaderMatch {
                name: "x-team".into(),
                value: Some("payments".into()),
                mismatch: None,
            },
            HeaderMatch {
                name: "authorization".into(),
                value: None,
                mismatch: None,
            },
        ];
        let rules = [rule_h];
        let p = HttpPolicy::compile(&[(rule(0), &rules[..])]).expect("compile");
        let mut hm = HeaderMap::new();
        hm.insert("X-Team", "payments".parse().expect("value"));
        assert!(
            check(&p, "GET", "/", None, &hm).is_none(),
            "authorization missing"
        );
        hm.insert("authorization", "Bearer x".parse().expect("value"));
        assert!(check(&p, "GET", "/", None, &hm).is_some());
        hm.insert("x-team", "Payments".parse().expect("value"));
        assert!(
            check(&p, "GET", "/", None, &hm).is_none(),
            "values are case-sensitive"
        );
    }

    #[test]
    fn header_mismatch_actions_allow_and_say_what_to_change() {
        let mut rule_h = h(None, None, None);
        rule_h.headers = vec![
            HeaderMatch {
                name: "x-env".into(),
                value: Some("prod".into()),
                mismatch: Some(HeaderMismatch::Replace),
            },
            HeaderMatch {
                name: "x-debug".into(),
                value: None,
                mismatch: Some(HeaderMismatch::Log),
            },
        ];
        let rules = [rule_h];
        let p = HttpPolicy::compile(&[(rule(0), &rules[..])]).expect("compile");
        let mut hm = HeaderMap::new();
        hm.insert("x-env", "dev".parse().expect("value"));
        let m = check(&p, "GET", "/", None, &hm).expect("allowed");
        assert_eq!(
            m.actions,
            [
                HeaderAction::Replace("x-env".into(), "prod".into()),
                HeaderAction::Log("x-debug".into())
            ]
        );
    }

    #[test]
    fn the_mask_limits_a_connection_to_its_peer_rules() {
        let a = [h(Some("GET"), None, None)];
        let b = [h(Some("POST"), None, None)];
        let p = HttpPolicy::compile(&[(rule(0), &a[..]), (rule(1), &b[..])]).expect("compile");
        let none = HeaderMap::new();
        let req = |m| RequestView {
            method: m,
            path: "/",
            host: None,
            headers: &none,
        };
        let only_a = p.mask(&[rule(0)]);
        assert!(p.check(&req("GET"), &only_a).is_some());
        assert!(p.check(&req("POST"), &only_a).is_none());
        let both = p.mask(&[rule(0), rule(1)]);
        assert_eq!(p.check(&req("POST"), &both).map(|m| m.rule), Some(rule(1)));
    }
}
