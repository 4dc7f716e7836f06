//! Name and label syntax, checked the way the API server checks it (apimachinery's
//! `validation` package), with the same limits and messages an operator would get from kubectl.

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, the shape of a label value and a key's name part.
fn is_label_shaped(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    is_alnum(first)
        && is_alnum(last)
        && s.chars()
            .all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.')
}

/// An RFC 1123 label: lower-case alphanumerics and `-`, starting and ending alphanumeric, at most
/// 63 characters. Namespace names are these.
pub(crate) fn check_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            s.len()
        ));
    }
    if !is_label_part(s) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, of any length: a label's shape.
fn is_label_part(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.chars().all(ok_char) && ends_ok(s.chars().next()) && ends_ok(s.chars().last())
}

/// An RFC 1123 subdomain as Kubernetes checks it: dot-separated label-shaped parts, at most 253
/// characters in all (no part is limited to 63, unlike DNS labels: the upstream conformance
/// suite names a NetworkPolicy with 73 characters). Most object names are these.
pub(crate) fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (is {})",
            s.len()
        ));
    }
    if !s.split('.').all(is_label_part) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A label key (a qualified name): an optional DNS subdomain prefix and `/`, then a name of at
/// most 63 characters.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        check_dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "name part must be no more than 63 characters (is {})",
            name.len()
        ));
    }
    if !is_label_shaped(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters shaped like a label key's name.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            value.len()
        ));
    }
    if !is_label_shaped(value) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A port name (IANA_SVC_NAME): 1 to 15 lower-case alphanumerics or `-`, with at least one
/// letter, no `-` at either end and no `--`.
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if name.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    Ok(())
}

/// A port number: 1 to 65535.
pub(crate) fn check_port_number(port: i64) -> Result<u16, String> {
    if (1..=65535).contains(&port) {
        Ok(port as u16)
    } else {
        Err("must be between 1 and 65535, inclusive".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_accept_prefixes_and_reject_bad_shapes() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("-app").is_err());
        assert!(check_label_key("/app").is_err());
        assert!(check_label_key("Example.COM/app").is_err());
        assert!(check_label_key("a/b/c").is_err());
        assert!(check_label_key(&"a".repeat(64)).is_err());
    }

    #[test]
    fn label_values_may_be_empty_but_not_malformed() {
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x-y").is_ok());
        assert!(check_label_value("has space").is_err());
        assert!(check_label_value("trailing-").is_err());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn port_names_follow_iana_svc_name() {
        assert!(check_port_name("http").is_ok());
        assert!(check_port_name("http-metrics").is_ok());
        assert!(check_port_name("8080").is_err(), "needs a letter");
        assert!(check_port_name("HTTP").is_err());
        assert!(check_port_name("a--b").is_err());
        assert!(check_port_name("-ab").is_err());
        assert!(check_port_name("sixteen-chars-xx").is_err());
    }

    #[test]
    fn port_numbers_are_1_to_65535() {
        assert_eq!(check_port_number(1), Ok(1));
        assert_eq!(check_port_number(65535), Ok(65535));
        assert!(check_port_number(0).is_err());
        assert!(check_port_number(65536).is_err());
    }

    #[test]
    fn dns_names_are_lower_case() {
        assert!(check_dns1123_label("production").is_ok());
        assert!(check_dns1123_label("Production").is_err());
        assert!(check_dns1123_subdomain("a.b-c.d").is_ok());
        assert!(check_dns1123_subdomain("a..b").is_err());
        // Kubernetes limits a subdomain's length, not its parts'.
        let long = "allow-egress-to-the-metadata-service-except-from-the-monitoring-namespace";
        assert!(long.len() > 63);
        assert!(check_dns1123_subdomain(long).is_ok());
        assert!(check_dns1123_label(long).is_err());
        assert!(check_dns1123_subdomain(&"a".repeat(254)).is_err());
    }
}
