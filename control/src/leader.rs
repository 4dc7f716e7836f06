//! One writer among replicas: a `coordination.k8s.io/v1` Lease, as kube-controller-manager and
//! client-go's leader election use it. The holder renews it every [`RENEW`]; another replica
//! takes it only once it has seen it unchanged for [`LEASE_DURATION`] by its own clock (as
//! client-go does: the holder's `renewTime` is written by another clock), with the Lease's
//! resourceVersion, so two replicas never both win (the API server refuses the second write).
//! A holder that cannot renew within its lease steps down before another may take over.
//!
//! What only the leader does (policy status, Events) is idempotent and written from the current
//! state, so a leader that loses the lease mid-write leaves nothing the next one does not fix.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// How long an unrenewed lease stays its holder's.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and others look).
pub const RENEW: Duration = Duration::from_secs(5);

/// Who the replicas are and where the Lease lives.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace (the control plane's own).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long an unrenewed lease stays its holder's ([`LEASE_DURATION`]).
    pub lease_duration: Duration,
    /// How often it is renewed and looked at ([`RENEW`]).
    pub renew: Duration,
}

impl Election {
    /// An election with the default timings.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Election {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            renew: RENEW,
        }
    }
}

/// What one look at the Lease decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Holding,
    HeldByOther,
}

/// Runs the election until the process ends; `leader` says whether this replica holds it.
pub async fn run(client: kube::Client, election: Election, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    let mut seen: Option<(String, tokio::time::Instant)> = None;
    loop {
        // A request that hangs must not keep this replica leading past its lease.
        let attempt = tokio::time::timeout(election.renew, try_hold(&api, &election, &mut seen))
            .await
            .unwrap_or_else(|_| Err(TryError::TimedOut));
        match attempt {
            Ok(Outcome::Holding) => {
                if !*leader.borrow() {
                    tracing::info!(lease = %election.name, identity = %election.identity, "leading: this replica writes policy status and events");
                }
                last_renewed = Some(tokio::time::Instant::now());
                leader.send_replace(true);
            }
            Ok(Outcome::HeldByOther) => {
                if *leader.borrow() {
                    tracing::info!(lease = %election.name, "another replica holds the lease now");
                }
                last_renewed = None;
                leader.send_replace(false);
            }
            Err(e) => {
                // Unreachable API server: keep leading only while the lease would still be
                // ours for others.
                let lapsed = last_renewed.is_none_or(|t| {
                    t.elapsed() >= election.lease_duration.saturating_sub(election.renew)
                });
                if lapsed && *leader.borrow() {
                    tracing::warn!(error = %e, "cannot renew the lease; stepping down");
                    leader.send_replace(false);
                } else {
                    tracing::debug!(error = %e, "lease check failed");
                }
            }
        }
        tokio::time::sleep(election.renew).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Why a look at the Lease decided nothing.
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within the renew period")]
    TimedOut,
}

async fn try_hold(
    api: &Api<Lease>,
    election: &Election,
    seen: &mut Option<(String, tokio::time::Instant)>,
) -> Result<Outcome, TryError> {
    let duration_secs = election.lease_duration.as_secs().max(1) as i32;
    let Some(current) = api.get_opt(&election.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                namespace: Some(election.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Holding),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::HeldByOther),
            Err(e) => Err(e.into()),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(election.identity.as_str());
    let held_for = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(1) as u64));
    // Expired once this replica has seen the same holder and renewal for a whole lease.
    let record = format!(
        "{:?} {:?}",
        spec.holder_identity,
        spec.renew_time.as_ref().map(|t| t.0.to_string())
    );
    let looked = tokio::time::Instant::now();
    let since = match seen {
        Some((r, at)) if *r == record => *at,
        _ => {
            *seen = Some((record, looked));
            looked
        }
    };
    let expired = spec.renew_time.is_none() || looked.duration_since(since) >= held_for;
    if !ours && !expired && spec.holder_identity.is_some() {
        return Ok(Outcome::HeldByOther);
    }
    let mut next = current.clone();
    let next_spec = next.spec.get_or_insert_with(LeaseSpec::default);
    if !ours {
        next_spec.holder_identity = Some(election.identity.clone());
        next_spec.acquire_time = Some(now());
        next_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        tracing::info!(previous = ?spec.holder_identity, "taking over the lapsed lease");
    }
    next_spec.lease_duration_seconds = Some(duration_secs);
    next_spec.renew_time = Some(now());
    // The resourceVersion read above: a replica that wrote in between wins, we lose.
    match api
        .replace(&election.name, &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(Outcome::Holding),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::HeldByOther),
        Err(e) => Err(e.into()),
    }
}
