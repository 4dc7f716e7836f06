//! Label selectors: `matchLabels` and `matchExpressions`, matched as the API server does.

use std::collections::BTreeMap;
use std::fmt;

/// Labels or annotations: ordered so that output and identities are deterministic.
pub type Labels = BTreeMap<String, String>;

/// A set-based requirement operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// The label exists and its value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label exists (any value).
    Exists,
    /// The label does not exist.
    DoesNotExist,
}

/// One requirement; a selector is the AND of its requirements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key is tested.
    pub operator: Operator,
    /// For `In`/`NotIn`: the values, sorted and without duplicates. Empty otherwise.
    pub values: Vec<String>,
}

impl Requirement {
    /// `key=value`, as `matchLabels` means it.
    pub fn equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        Requirement {
            key: key.into(),
            operator: Operator::In,
            values: vec![value.into()],
        }
    }

    /// Whether a set of labels satisfies this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operator {
            Operator::In if self.values.len() == 1 => write!(f, "{}={}", self.key, self.values[0]),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    /// ANDed requirements: `matchLabels` entries first (as `key in (value)`), then
    /// `matchExpressions` in their order.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// A selector of `key=value` pairs, like `matchLabels`.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        LabelSelector {
            requirements: pairs
                .into_iter()
                .map(|(k, v)| Requirement::equals(k, v))
                .collect(),
        }
    }

    /// True for `{}`, which selects every object.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// A reason no set of labels can ever satisfy this selector, if there is one
    /// (`app=a` together with `app notin (a)`, `Exists` and `DoesNotExist` on one key, ...).
    pub fn contradiction(&self) -> Option<String> {
        for (i, a) in self.requirements.iter().enumerate() {
            for b in &self.requirements[i + 1..] {
                if a.key != b.key {
                    continue;
                }
                if requirements_conflict(a, b) {
                    return Some(format!("`{a}` and `{b}` can never both hold"));
                }
            }
        }
        None
    }
}

/// Two requirements on the same key that no value (or absence) satisfies together.
fn requirements_conflict(a: &Requirement, b: &Requirement) -> bool {
    use Operator::*;
    let allowed = |r: &Requirement, v: Option<&String>| match r.operator {
        In => v.is_some_and(|v| r.values.contains(v)),
        NotIn => v.is_none_or(|v| !r.values.contains(v)),
        Exists => v.is_some(),
        DoesNotExist => v.is_none(),
    };
    // Candidate values: absence, every value either names, and one value neither names.
    let fresh = "\u{0}podwall-fresh-value".to_string();
    let mut candidates: Vec<Option<&String>> = vec![None, Some(&fresh)];
    candidates.extend(a.values.iter().map(Some));
    candidates.extend(b.values.iter().map(Some));
    !candidates.iter().any(|v| allowed(a, *v) && allowed(b, *v))
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selector_matches_everything_including_unlabelled() {
        assert!(LabelSelector::everything().matches(&Labels::new()));
        assert!(LabelSelector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_require_every_pair() {
        let s = LabelSelector::from_pairs([("app", "api"), ("tier", "backend")]);
        assert!(s.matches(&labels(&[("app", "api"), ("tier", "backend"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "api")])));
        assert!(!s.matches(&labels(&[("app", "api"), ("tier", "frontend")])));
    }

    #[test]
    fn in_requires_the_key_and_one_of_the_values() {
        let r = req("env", Operator::In, &["prod", "staging"]);
        assert!(r.matches(&labels(&[("env", "prod")])));
        assert!(!r.matches(&labels(&[("env", "dev")])));
        assert!(!r.matches(&Labels::new()));
    }

    #[test]
    fn not_in_matches_when_the_key_is_absent() {
        let r = req("env", Operator::NotIn, &["prod"]);
        assert!(r.matches(&Labels::new()));
        assert!(r.matches(&labels(&[("env", "dev")])));
        assert!(!r.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist_test_only_the_key() {
        let exists = req("canary", Operator::Exists, &[]);
        let absent = req("canary", Operator::DoesNotExist, &[]);
        assert!(exists.matches(&labels(&[("canary", "")])));
        assert!(!exists.matches(&Labels::new()));
        assert!(absent.matches(&Labels::new()));
        assert!(!absent.matches(&labels(&[("canary", "true")])));
    }

    #[test]
    fn contradictions_are_found_and_compatible_requirements_are_not() {
        let s = LabelSelector {
            requirements: vec![
                Requirement::equals("app", "a"),
                req("app", Operator::NotIn, &["a"]),
            ],
        };
        assert!(s.contradiction().is_some());
        let s = LabelSelector {
            requirements: vec![
                req("app", Operator::Exists, &[]),
                req("app", Operator::DoesNotExist, &[]),
            ],
        };
        assert!(s.contradiction().is_some());
        let s = LabelSelector {
            requirements: vec![
                req("app", Operator::In, &["a", "b"]),
                req("app", Operator::NotIn, &["a"]),
            ],
        };
        assert!(s.contradiction().is_none());
        let s = LabelSelector {
            requirements: vec![
                req("app", Operator::NotIn, &["a"]),
                req("app", Operator::DoesNotExist, &[]),
            ],
        };
        assert!(s.contradiction().is_none());
    }

    #[test]
    fn display_reads_like_kubectl() {
        let s = LabelSelector {
            requirements: vec![
                Requirement::equals("app", "api"),
                req("env", Operator::In, &["a", "b"]),
                req("x", Operator::NotIn, &["c"]),
                req("y", Operator::Exists, &[]),
                req("z", Operator::DoesNotExist, &[]),
            ],
        };
        assert_eq!(s.to_string(), "app=api,env in (a,b),x notin (c),y,!z");
        assert_eq!(LabelSelector::everything().to_string(), "{}");
    }
}
