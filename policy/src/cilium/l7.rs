//! Layer-7 parts of a port entry, and toFQDNs: `rules.dns` and `toFQDNs` selectors, and
//! `rules.http` into [`HttpRule`]s.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{FqdnSelector, HeaderMatch, HeaderMismatch, HttpRule};
use crate::validate::FieldErrors;

use super::wire::*;

/// Why Cilium would refuse DNS rules on this port entry, if it would.
pub(super) fn dns_rule_problem(
    ingress: bool,
    has_http: bool,
    ports: &[PortProtocol],
) -> Option<String> {
    if ingress {
        return Some("DNS rules are only allowed on egress".into());
    }
    if has_http {
        return Some("HTTP and DNS rules cannot be combined in one port entry".into());
    }
    if ports.is_empty() {
        return Some("DNS rules need their port (53) listed".into());
    }
    for p in ports {
        let zero = match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => *n == 0,
            Some(IntOrString::String(s)) => s.parse::<i64>().is_ok_and(|n| n == 0),
        };
        if zero {
            return Some("DNS rules need their port (53) listed, not every port".into());
        }
        if p.end_port.is_some() {
            return Some("DNS rules do not support port ranges".into());
        }
    }
    None
}

/// Longest name or pattern (RFC 1035's limit on a name).
pub(super) const MAX_FQDN: usize = 255;

/// One `matchName`/`matchPattern` entry into selectors. A toFQDNs entry holds exactly one of
/// the two; a DNS rule may hold both (either then allows the query).
pub(super) fn fqdn_selectors(
    spec: &FqdnSpec,
    field: &str,
    both_allowed: bool,
    errs: &mut FieldErrors,
) -> Vec<FqdnSelector> {
    let name = spec
        .match_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let pattern = spec
        .match_pattern
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if name.is_none() && pattern.is_none() {
        errs.required(field, "matchName or matchPattern is required");
        return Vec::new();
    }
    if name.is_some() && pattern.is_some() && !both_allowed {
        errs.invalid(
            field,
            "",
            "only one of matchName or matchPattern is allowed in a toFQDNs entry",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(n) = name {
        let f = format!("{field}.matchName");
        if n.len() > MAX_FQDN {
            errs.invalid(&f, n, "must be no more than 255 characters");
        } else if !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            errs.invalid(
                &f,
                n,
                "only letters, digits, '-', '_' and '.' are allowed in a name",
            );
        } else {
            let canon = n.to_ascii_lowercase();
            let canon = canon.strip_suffix('.').unwrap_or(&canon).to_string();
            if canon.is_empty() || canon.split('.').any(str::is_empty) {
                errs.invalid(&f, n, "a name may not have empty labels");
            } else {
                out.push(FqdnSelector::MatchName(canon));
            }
        }
    }
    if let Some(p) = pattern {
        let f = format!("{field}.matchPattern");
        if p.len() > MAX_FQDN {
            errs.invalid(&f, p, "must be no more than 255 characters");
        } else if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*'))
        {
            errs.invalid(
                &f,
                p,
                "only letters, digits, '-', '_', '.' and '*' are allowed in a pattern",
            );
        } else {
            let canon = p.to_ascii_lowercase();
            let trimmed = canon.strip_suffix('.').unwrap_or(&canon);
            if trimmed.bytes().all(|b| b == b'*') && !trimmed.is_empty() {
                out.push(FqdnSelector::MatchPattern("*".into()));
            } else if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
                errs.invalid(&f, p, "a pattern may not have empty labels");
            } else {
                out.push(FqdnSelector::MatchPattern(trimmed.to_string()));
            }
        }
    }
    out
}

/// Checks that a pattern compiles as the whole-value regular expression it will be used as.
pub(super) fn regex_field(
    value: &Option<String>,
    field: String,
    errs: &mut FieldErrors,
) -> Option<String> {
    let v = value.as_ref()?;
    if let Err(e) = regex::Regex::new(&format!("^(?:{v})$")) {
        errs.invalid(
            field,
            v,
            &format!(
                "not a valid regular expression: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
        );
        return None;
    }
    Some(v.clone())
}

pub(super) fn http_rule(spec: &HttpSpec, field: &str, errs: &mut FieldErrors) -> Option<HttpRule> {
    let before = errs.0.len();
    let mut rule = HttpRule {
        method: regex_field(&spec.method, format!("{field}.method"), errs),
        path: regex_field(&spec.path, format!("{field}.path"), errs),
        host: regex_field(&spec.host, format!("{field}.host"), errs),
        headers: Vec::new(),
    };
    for (i, h) in spec.headers.iter().flatten().enumerate() {
        let (name, value) = match h.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (h.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            errs.invalid(
                format!("{field}.headers[{i}]"),
                h,
                "expected \"Name\" or \"Name: value\"",
            );
            continue;
        }
        rule.headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value,
            mismatch: None,
        });
    }
    for (i, m) in spec.header_matches.iter().flatten().enumerate() {
        let f = format!("{field}.headerMatches[{i}]");
        if m.secret.is_some() {
            errs.invalid(
                format!("{f}.secret"),
                "",
                "secret-backed header values are not supported by podwall",
            );
            continue;
        }
        let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) else {
            errs.required(format!("{f}.name"), "");
            continue;
        };
        let mismatch = match m.mismatch.as_deref() {
            None | Some("") => None,
            Some("LOG") => Some(HeaderMismatch::Log),
            Some("ADD") => Some(HeaderMismatch::Add),
            Some("DELETE") => Some(HeaderMismatch::Delete),
            Some("REPLACE") => Some(HeaderMismatch::Replace),
            Some(other) => {
                errs.unsupported(
                    format!("{f}.mismatch"),
                    other,
                    &["LOG", "ADD", "DELETE", "REPLACE"],
                );
                continue;
            }
        };
        rule.headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: m.value.clone(),
            mismatch,
        });
    }
    (errs.0.len() == before).then_some(rule)
}
