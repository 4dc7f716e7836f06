//! Sidecars prove their pod with the pod's projected service-account token (audience
//! `podwall`): the API server's TokenReview says whose it is, the bound pod name in the review's
//! `extra` must be the pod asked for, and the service account must be that pod's.
//! Answers are cached for a minute per token so reconnect storms do not hit the API server.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use podwall_policy::feed::ObjectKey;

use super::{AuthError, AuthFuture, Authenticator, PodRef};
use crate::store::Store;

/// The audience sidecar tokens are minted for.
pub const AUDIENCE: &str = "podwall";
/// The review field naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const CACHE_FOR: Duration = Duration::from_secs(60);

/// Who a reviewed token is.
#[derive(Clone, Debug)]
struct Reviewed {
    namespace: String,
    service_account: String,
    pod: Option<String>,
    at: Instant,
}

/// Checks tokens with TokenReview.
pub struct TokenReviewer {
    client: kube::Client,
    store: Arc<Store>,
    audience: String,
    cache: Mutex<HashMap<u64, Reviewed>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenReviewer {
    /// Reviews with `client`; pods' service accounts come from `store`.
    pub fn new(client: kube::Client, store: Arc<Store>, audience: &str) -> Self {
        TokenReviewer {
            client,
            store,
            audience: audience.to_string(),
            cache: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, token: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(token.as_bytes());
        h.finish()
    }

    async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
        let key = self.key(token);
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|_, r| r.at.elapsed() < CACHE_FOR);
            if let Some(r) = cache.get(&key) {
                return Ok(r.clone());
            }
        }
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid(
                status
                    .error
                    .unwrap_or_else(|| "the API server does not accept it".into()),
            ));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(AuthError::Invalid(format!(
                "not minted for audience {:?}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|s| s.split_once(':'))
        else {
            return Err(AuthError::Invalid(format!(
                "{username:?} is not a service account"
            )));
        };
        let pod = user
            .extra
            .as_ref()
            .and_then(|e| e.get(POD_NAME_EXTRA))
            .and_then(|v| v.first())
            .cloned();
        let reviewed = Reviewed {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod,
            at: Instant::now(),
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, reviewed.clone());
        Ok(reviewed)
    }
}

impl Authenticator for TokenReviewer {
    fn check<'a>(&'a self, token: Option<&'a str>, pod: &'a PodRef) -> AuthFuture<'a> {
        Box::pin(async move {
            let token = token.ok_or(AuthError::Missing)?;
            let who = self.review(token).await?;
            let Some(bound_pod) = &who.pod else {
                // Only tokens bound to a pod say which pod: a plain service-account token
                // could be any pod's.
                return Err(AuthError::Invalid(format!(
                    "service account {}/{}'s token is not bound to a pod (use a projected token)",
                    who.namespace, who.service_account
                )));
            };
            if who.namespace != pod.namespace || *bound_pod != pod.name {
                return Err(AuthError::OtherPod {
                    holder: format!("{}/{}", who.namespace, bound_pod),
                    asked: pod.to_string(),
                });
            }
            let key = ObjectKey {
                kind: "Pod".into(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            };
            let (_, objects) = self.store.current();
            let Some(object) = objects.get(&key) else {
                return Err(AuthError::Unavailable(format!("no pod {pod} is known yet")));
            };
            let pod_sa = object["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            if pod_sa != who.service_account {
                return Err(AuthError::Invalid(format!(
                    "the token is service account {}'s, pod {pod} runs as {pod_sa}",
                    who.service_account
                )));
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!(
            "TokenReview of projected service-account tokens (audience {})",
            self.audience
        )
    }
}
