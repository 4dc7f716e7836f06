//! Who may read which pod's feed.
//!
//! A sidecar presents a bearer token and names its pod. In a cluster the token is the pod's
//! projected service-account token (audience `podwall`), checked with a TokenReview and against
//! the pod's service account. Locally (the sandbox, tests) a static token file maps tokens to
//! pods; `--insecure-trust-claimed-pod` skips the check entirely (logged).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

pub mod token_review;

/// A pod, as a sidecar names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a sidecar may not read a feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token.
    #[error("no bearer token")]
    Missing,
    /// The token is not valid.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// The check could not be made (the API server is unreachable); the sidecar retries.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
    /// The token is another pod's.
    #[error("the token is {holder}'s, not {asked}'s")]
    OtherPod {
        /// Whose it is.
        holder: String,
        /// Whose feed was asked for.
        asked: String,
    },
}

/// The future an authenticator returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AuthError>> + Send + 'a>>;

/// Decides whether a token may read a pod's feed.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks `token` for `pod`.
    fn check<'a>(&'a self, token: Option<&'a str>, pod: &'a PodRef) -> AuthFuture<'a>;
    /// For logs.
    fn describe(&self) -> String;
}

/// Trusts the pod a sidecar names (local use only).
#[derive(Debug, Default)]
pub struct TrustClaimed;

impl Authenticator for TrustClaimed {
    fn check<'a>(&'a self, _token: Option<&'a str>, _pod: &'a PodRef) -> AuthFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn describe(&self) -> String {
        "none: every sidecar gets the pod it names (insecure; local use only)".into()
    }
}

/// A line of a tokens file that is not `TOKEN NAMESPACE/POD`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct TokensError {
    /// Its 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub what: String,
}

/// Tokens from a file: one `TOKEN NAMESPACE/POD` per line (`#` comments).
#[derive(Debug, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, PodRef>,
}

impl StaticTokens {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(token), Some(pod), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokensError {
                    line: i + 1,
                    what: "expected `TOKEN NAMESPACE/POD`".into(),
                });
            };
            let Some((namespace, name)) = pod.split_once('/') else {
                return Err(TokensError {
                    line: i + 1,
                    what: format!("{pod:?} is not NAMESPACE/POD"),
                });
            };
            tokens.insert(
                token.to_string(),
                PodRef {
                    namespace: namespace.into(),
                    name: name.into(),
                },
            );
        }
        Ok(StaticTokens { tokens })
    }
}

impl Authenticator for StaticTokens {
    fn check<'a>(&'a self, token: Option<&'a str>, pod: &'a PodRef) -> AuthFuture<'a> {
        Box::pin(async move {
            let token = token.ok_or(AuthError::Missing)?;
            let holder = self
                .tokens
                .get(token)
                .ok_or_else(|| AuthError::Invalid("unknown token".into()))?;
            if holder != pod {
                return Err(AuthError::OtherPod {
                    holder: holder.to_string(),
                    asked: pod.to_string(),
                });
            }
            Ok(())
        })
    }
    fn describe(&self) -> String {
        format!("static tokens ({} pods)", self.tokens.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_opens_its_own_pods_feed_only() {
        let auth = StaticTokens::parse("# tokens\nabc t/client\nxyz t/server\n").expect("parses");
        let client = PodRef {
            namespace: "t".into(),
            name: "client".into(),
        };
        assert_eq!(auth.check(Some("abc"), &client).await, Ok(()));
        assert!(matches!(
            auth.check(Some("xyz"), &client).await,
            Err(AuthError::OtherPod { .. })
        ));
        assert_eq!(auth.check(None, &client).await, Err(AuthError::Missing));
        assert!(matches!(
            auth.check(Some("nope"), &client).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(StaticTokens::parse("abc").is_err());
    }
}
