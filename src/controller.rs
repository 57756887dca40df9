//! The BootstrapToken controller: policy check → sign (or re-use) → Secret by server-side apply →
//! status. Every token in the cluster is issued by this one reconcile path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

mod cached;
mod changes;
mod record;

pub use cached::CachedToken;
use cached::SoughtToken;
use changes::Changes;
use record::{Cached, CachedSecret, Lookup, OwnWrites, SecretCache};

use crate::backoff::Backoff;
use crate::duration;
use crate::events::EventPublisher;
use crate::resource::{
    BootstrapToken, BootstrapTokenSpec, BootstrapTokenStatus, FINALIZER, MANAGED_BY_LABEL, MANAGER,
    TOKEN_KEY, annotations,
};
use crate::revocation::{self, Previous, RevocationError, RevocationReason};
use crate::telemetry::{ControllerMetrics, ReasonLabels};
use crate::token::rotation::Pace;
use crate::token::store::StoreError;
use crate::token::{
    BootstrapRequest, Claims, IssueError, Issuer, KeySet, MAX_LIFETIME, TOKEN_VERSION,
};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "bootstraptoken";

/// kubectl's client-side apply copy of the whole object, not needed by the controller.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Reconciles in flight at once. Unbounded, a burst of thousands of objects meets the API
/// server's in-flight limit (429s and back-off) and inflates memory.
const MAX_CONCURRENT_RECONCILES: u16 = 16;
/// A foreign Secret is not watched, so look again now and then to see whether it went away.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(60);
/// How long a reconcile waits for the owned-Secret cache's first list before reading instead.
const CACHE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Revocation(#[from] RevocationError),
}

impl Error {
    /// The `Ready=False` reason a failure shows on the object.
    fn reason(&self) -> Reason {
        match self {
            Error::Kube(_) | Error::Revocation(_) => Reason::ApiError,
            Error::Issue(IssueError::KeyUnavailable(_)) => Reason::KeyUnavailable,
            Error::Issue(IssueError::Signing(_)) => Reason::SigningUnavailable,
            Error::Issue(IssueError::Forbidden { .. }) => Reason::Forbidden,
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        Error::Issue(IssueError::KeyUnavailable(error))
    }
}

/// The `reason` of the Ready condition (and of the Warning event when it turns false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Issued,
    WorkloadIdentityOnly,
    InvalidSpec,
    SecretConflict,
    Forbidden,
    KeyUnavailable,
    SigningUnavailable,
    /// The `revoke` annotation took the token back; its replacement waits for
    /// `minReissueInterval`.
    Revoked,
    ApiError,
}

impl Reason {
    const ALL: [Reason; 9] = [
        Reason::Issued,
        Reason::WorkloadIdentityOnly,
        Reason::InvalidSpec,
        Reason::SecretConflict,
        Reason::Forbidden,
        Reason::KeyUnavailable,
        Reason::SigningUnavailable,
        Reason::Revoked,
        Reason::ApiError,
    ];

    /// A reason this controller writes; a status with another is cached whole.
    fn parse(reason: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == reason)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Issued => "Issued",
            Reason::WorkloadIdentityOnly => "WorkloadIdentityOnly",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretConflict => "SecretConflict",
            Reason::Forbidden => "Forbidden",
            Reason::KeyUnavailable => "KeyUnavailable",
            Reason::SigningUnavailable => "SigningUnavailable",
            Reason::Revoked => "Revoked",
            Reason::ApiError => "ApiError",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub issuer: Arc<Issuer>,
    pub recorder: EventPublisher,
    pub metrics: Arc<ControllerMetrics>,
    failures: Backoff<ObjectRef<CachedToken>>,
    /// The caches of the running controllers (one per watched namespace, or one for all), to
    /// see which namespace holds a service id.
    tokens: std::sync::RwLock<Vec<Store<CachedToken>>>,
    /// The metadata of the Secrets the operator manages, from the same controllers' watches.
    owned_secrets: std::sync::RwLock<Vec<Arc<SecretCache>>>,
    own_writes: OwnWrites,
    cache_late: std::sync::atomic::AtomicBool,
    /// Spreads re-issues onto a rotated key over time.
    rotation_pace: std::sync::Mutex<Pace>,
    /// Milliseconds between two of them.
    rotation_interval_ms: i64,
}

impl Context {
    pub fn new(
        client: Client,
        issuer: Arc<Issuer>,
        recorder: EventPublisher,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        Context {
            client,
            issuer,
            recorder,
            metrics,
            failures: Backoff::default(),
            tokens: Default::default(),
            owned_secrets: Default::default(),
            own_writes: OwnWrites::default(),
            cache_late: Default::default(),
            rotation_pace: Default::default(),
            rotation_interval_ms: 1000,
        }
    }

    /// At most `per_minute` BootstrapTokens move to a rotated key per minute.
    pub fn with_rotation_pace(mut self, per_minute: u32) -> Self {
        self.rotation_interval_ms = 60_000 / i64::from(per_minute.max(1));
        self
    }

    fn pace_rotation(&self, object: &str) -> Result<(), Duration> {
        let now = Timestamp::now().as_millisecond();
        self.rotation_pace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(object, self.rotation_interval_ms, now)
    }

    /// How many BootstrapTokens' statuses name each kid, from the controllers' caches, once
    /// every cache has been filled (a partial count could retire a key still in use); `None`
    /// before the controllers run.
    pub async fn tokens_by_kid(&self) -> Option<HashMap<String, usize>> {
        let stores = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if stores.is_empty() {
            return None;
        }
        let mut counts = HashMap::new();
        for store in &stores {
            store.wait_until_ready().await.ok()?;
            for bt in store.state() {
                if let Some(kid) = bt.key_id() {
                    *counts.entry(kid.to_string()).or_default() += 1;
                }
            }
        }
        Some(counts)
    }

    fn cached_secret(&self, namespace: &str, name: &str) -> Option<Arc<CachedSecret>> {
        let caches = self.owned_secrets.read().unwrap_or_else(|e| e.into_inner());
        caches.iter().find_map(|cache| cache.get(namespace, name))
    }

    /// The Secret as the owned-Secret cache sees it, once the cache has listed them all (a
    /// reconcile right after start waits for that, up to [`CACHE_WAIT`]).
    async fn secret_in_cache(&self, namespace: &str, name: &str) -> Cached {
        let stores = self
            .owned_secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ready = futures::future::join_all(stores.iter().map(|cache| cache.wait_until_ready()));
        // A cache that once failed to list in time (no RBAC to, say) must not hold up every
        // reconcile: after that, it is used only once it is ready.
        let wait = if self.cache_late.load(std::sync::atomic::Ordering::Relaxed) {
            Duration::ZERO
        } else {
            CACHE_WAIT
        };
        match tokio::time::timeout(wait, ready).await {
            Ok(_) if !stores.is_empty() => match self.cached_secret(namespace, name) {
                Some(secret) => Cached::Found(secret),
                None => Cached::Absent,
            },
            Err(_) => {
                self.cache_late
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Cached::Unknown
            }
            _ => Cached::Unknown,
        }
    }

    /// The namespace that holds `bt`'s service id before it, if another does.
    fn held_elsewhere(&self, bt: &BootstrapToken) -> Option<String> {
        let stores = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        stores.iter().find_map(|store| {
            store
                .find(|other| holds_before(other.meta(), &other.spec, bt))
                .and_then(|holder| holder.namespace())
        })
    }
}

/// Whether `other`, in another namespace, holds `bt`'s service id before it: the earliest
/// BootstrapToken with that id (by creation time, then namespace) keeps it. The token endpoint
/// applies the same rule to workload identities.
pub fn holds_before(
    other: &ObjectMeta,
    other_spec: &BootstrapTokenSpec,
    bt: &BootstrapToken,
) -> bool {
    fn key(m: &ObjectMeta) -> (Option<&Time>, Option<&String>, Option<&String>) {
        (
            m.creation_timestamp.as_ref(),
            m.namespace.as_ref(),
            m.name.as_ref(),
        )
    }
    other_spec.service_id == bt.spec.service_id
        && other.namespace != bt.metadata.namespace
        && other.deletion_timestamp.is_none()
        && key(other) < key(&bt.metadata)
}

/// An input of the token that, when it no longer matches the token in the Secret, forces a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    ServiceId,
    Lifetime,
    Issuer,
    Audience,
    ClientId,
    Scope,
    VersionClaim,
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::ServiceId => "serviceId",
            Input::Lifetime => "lifetime",
            Input::Issuer => "issuer",
            Input::Audience => "audience",
            Input::ClientId => "bootstrap client id",
            Input::Scope => "bootstrap scope",
            Input::VersionClaim => "version claim",
        })
    }
}

/// Why a new token is signed instead of keeping the one in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueReason {
    SecretMissing,
    TokenInvalid(String),
    Changed(Input),
    RenewalDue,
    Requested,
    /// The `revoke` annotation has a new value: the current token is revoked at once.
    RevokeRequested,
    /// Another key signs now (rotation): re-issued at `signing.rotation.reissuePerMinute`.
    KeyRotated,
}

impl IssueReason {
    /// Every value of [`IssueReason::label`], the `reason` of the tokens-issued metric.
    pub const LABELS: [&'static str; 7] = [
        "secret_missing",
        "token_invalid",
        "inputs_changed",
        "renewal",
        "requested",
        "revoke_requested",
        "key_rotated",
    ];

    fn label(&self) -> &'static str {
        match self {
            IssueReason::SecretMissing => "secret_missing",
            IssueReason::TokenInvalid(_) => "token_invalid",
            IssueReason::Changed(_) => "inputs_changed",
            IssueReason::RenewalDue => "renewal",
            IssueReason::Requested => "requested",
            IssueReason::RevokeRequested => "revoke_requested",
            IssueReason::KeyRotated => "key_rotated",
        }
    }
}

impl std::fmt::Display for IssueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssueReason::SecretMissing => write!(f, "the Secret holds no token"),
            IssueReason::TokenInvalid(why) => {
                write!(f, "the token in the Secret does not verify: {why}")
            }
            IssueReason::Changed(what) => write!(f, "{what} changed"),
            IssueReason::RenewalDue => write!(f, "renewal time reached"),
            IssueReason::Requested => write!(
                f,
                "re-issue requested by the {} annotation",
                annotations::REISSUE
            ),
            IssueReason::RevokeRequested => write!(
                f,
                "revocation requested by the {} annotation",
                annotations::REVOKE
            ),
            IssueReason::KeyRotated => write!(f, "the signing key was rotated"),
        }
    }
}

/// Why the object cannot have a token now; nothing is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    InvalidSpec(String),
    /// The Secret of that name exists and belongs to someone else: it is left untouched.
    SecretConflict(String),
    Forbidden {
        namespace: String,
        sid: String,
    },
    /// Another namespace holds this service id, and no policy rule lets it be shared.
    HeldElsewhere {
        sid: String,
        holder: String,
    },
}

impl NotReady {
    fn reason(&self) -> Reason {
        match self {
            NotReady::InvalidSpec(_) => Reason::InvalidSpec,
            NotReady::SecretConflict(_) => Reason::SecretConflict,
            NotReady::Forbidden { .. } | NotReady::HeldElsewhere { .. } => Reason::Forbidden,
        }
    }

    fn message(&self) -> String {
        match self {
            NotReady::InvalidSpec(why) => why.clone(),
            NotReady::SecretConflict(secret) => format!(
                "Secret {secret} exists and is not owned by this BootstrapToken; it is left untouched"
            ),
            NotReady::Forbidden { namespace, sid } => format!(
                "the operator's policy does not allow service id {sid:?} in namespace {namespace}"
            ),
            NotReady::HeldElsewhere { sid, holder } => format!(
                "service id {sid:?} is held by a BootstrapToken in namespace {holder}; a policy rule with shareServiceIds: true lets namespaces share it"
            ),
        }
    }
}

/// Lifetime and renewal margin of this object's token: its spec, else the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub lifetime: Duration,
    pub renew_before: Duration,
}

/// The token in the Secret, verified and still right for the object.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// `None`: not read, the Secret's cached metadata and the status prove which token it holds.
    pub token: Option<String>,
    pub claims: Claims,
    pub kid: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    NotReady(NotReady),
    Keep(Terms, Box<Kept>),
    Issue(Terms, IssueReason),
    /// A new token is due, but the last one was issued less than `minReissueInterval` ago: look
    /// again after this long, changing nothing meanwhile.
    Wait(Duration, IssueReason),
    /// The `revoke` annotation has a new value within `minReissueInterval` of the last issuance:
    /// the current token is revoked now, its replacement is issued after this long.
    Revoke(Duration),
    /// `spec.storeToken: false`: no token is kept; a Secret kept before is deleted.
    NoSecret,
}

/// What [`decide`] reads besides the object and its Secret.
pub struct World<'a> {
    pub issuer: &'a Issuer,
    pub keys: &'a KeySet,
    /// The namespace that holds the object's service id before it, if another does.
    pub held_elsewhere: Option<&'a str>,
    pub now: i64,
}

/// What to do for `bt`, given the Secret it names (if any) and the [`World`]. Pure: every input
/// is passed in, so it is tested as a table; [`reconcile`] carries the decision out.
pub fn decide(bt: &BootstrapToken, existing: Option<&Secret>, world: &World) -> Decision {
    let issuer = world.issuer;
    let terms = match terms(bt, issuer) {
        Ok(terms) => terms,
        Err(why) => return Decision::NotReady(NotReady::InvalidSpec(why)),
    };
    // Without a stored token the Secret's name is not used, so a foreign Secret there is no conflict.
    if let Some(secret) = existing
        && bt.spec.store_token
        && !controlled_by(&secret.metadata, bt)
    {
        return Decision::NotReady(NotReady::SecretConflict(bt.secret_name()));
    }
    let namespace = bt.namespace().unwrap_or_default();
    let sid = &bt.spec.service_id;
    if !issuer.allows(&namespace, sid) {
        return Decision::NotReady(NotReady::Forbidden {
            namespace,
            sid: sid.clone(),
        });
    }
    if let Some(holder) = world.held_elsewhere
        && !issuer.allows_sharing(&namespace, sid)
    {
        return Decision::NotReady(NotReady::HeldElsewhere {
            sid: sid.clone(),
            holder: holder.to_string(),
        });
    }
    if !bt.spec.store_token {
        return Decision::NoSecret;
    }
    // Whatever else is wrong with the Secret (or changed in the spec), a revoke request is the
    // reason: the token is taken back at once, not after a re-issue's grace period.
    let reason = if revoke_requested(bt, existing) {
        IssueReason::RevokeRequested
    } else {
        match reusable(bt, issuer, terms, existing, world.keys, world.now) {
            Ok(kept) => return Decision::Keep(terms, Box::new(kept)),
            Err(reason) => reason,
        }
    };
    let last_issued = bt
        .status
        .as_ref()
        .and_then(|s| s.issued_at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(Timestamp::as_second);
    let interval = i64::try_from(issuer.bootstrap().min_reissue_interval.as_secs()).unwrap_or(0);
    match last_issued.map(|last| last.saturating_add(interval).saturating_sub(world.now)) {
        // The interval bounds issuance, not revocation: only the replacement waits.
        Some(wait) if wait > 0 && reason == IssueReason::RevokeRequested => {
            Decision::Revoke(Duration::from_secs(wait.unsigned_abs()))
        }
        Some(wait) if wait > 0 => Decision::Wait(Duration::from_secs(wait.unsigned_abs()), reason),
        _ => Decision::Issue(terms, reason),
    }
}

/// Whether the `revoke` annotation holds a value not handled yet (the Secret records the last
/// one handled) while the status names a token to take back. Removing the annotation asks for
/// nothing.
fn revoke_requested(bt: &BootstrapToken, secret: Option<&Secret>) -> bool {
    let Some(value) = annotation(bt, annotations::REVOKE) else {
        return false;
    };
    let handled = secret
        .and_then(|s| s.annotations().get(annotations::REVOKE))
        .map(String::as_str);
    let current = bt.status.as_ref().and_then(|s| s.token_id.as_ref());
    current.is_some() && handled != Some(value)
}

fn terms(bt: &BootstrapToken, issuer: &Issuer) -> Result<Terms, String> {
    let bootstrap = issuer.bootstrap();
    let lifetime = match bt.spec.lifetime.as_deref().map(duration::parse).transpose() {
        Ok(Some(lifetime)) if lifetime < bootstrap.min_lifetime => {
            return Err(format!(
                "spec.lifetime: {} is shorter than the operator's minimum {} (bootstrap.minLifetime)",
                duration::format(lifetime),
                duration::format(bootstrap.min_lifetime)
            ));
        }
        Ok(Some(lifetime)) if lifetime > MAX_LIFETIME => {
            return Err(format!(
                "spec.lifetime: must be at most {}",
                duration::format(MAX_LIFETIME)
            ));
        }
        Ok(lifetime) => lifetime.unwrap_or(bootstrap.lifetime),
        Err(e) => return Err(format!("spec.lifetime: {e}")),
    };
    let renew_before = match bt
        .spec
        .renew_before
        .as_deref()
        .map(duration::parse)
        .transpose()
    {
        Ok(Some(renew)) if renew >= lifetime => {
            return Err("spec.renewBefore must be shorter than the lifetime".into());
        }
        Ok(renew) => renew.unwrap_or_else(|| bootstrap.renew_before_for(lifetime)),
        Err(e) => return Err(format!("spec.renewBefore: {e}")),
    };
    Ok(Terms {
        lifetime,
        renew_before,
    })
}

fn reissue_value(bt: &BootstrapToken) -> Option<&str> {
    annotation(bt, annotations::REISSUE)
}

fn annotation<'a>(bt: &'a BootstrapToken, key: &str) -> Option<&'a str> {
    bt.annotations().get(key).map(String::as_str)
}

/// The token in `secret` if it may be kept, else why not.
fn reusable(
    bt: &BootstrapToken,
    issuer: &Issuer,
    terms: Terms,
    secret: Option<&Secret>,
    keys: &KeySet,
    now: i64,
) -> Result<Kept, IssueReason> {
    let (token, claims, kid) = match secret.map(|s| (s, s.data.as_ref())) {
        None => return Err(IssueReason::SecretMissing),
        Some((_, Some(data))) => {
            let token = data.get(TOKEN_KEY).ok_or(IssueReason::SecretMissing)?;
            let token = std::str::from_utf8(&token.0)
                .map_err(|_| IssueReason::TokenInvalid("not UTF-8".into()))?;
            let verified = keys
                .verify(token)
                .map_err(|e| IssueReason::TokenInvalid(e.to_string()))?;
            (Some(token.to_string()), verified.claims, verified.kid)
        }
        // Only the metadata was read: it names the token, or there is none.
        Some((secret, None)) => {
            let (claims, kid) = record::recorded(bt, &secret.metadata, issuer, keys)
                .ok_or(IssueReason::SecretMissing)?;
            (None, claims, kid)
        }
    };
    // Read or only named by the metadata, a revoked token is never kept.
    issuer
        .check_revoked(&claims, now)
        .map_err(|e| IssueReason::TokenInvalid(e.to_string()))?;
    let profile = issuer.profile();
    let bootstrap = issuer.bootstrap();
    let lifetime = i64::try_from(terms.lifetime.as_secs()).unwrap_or(i64::MAX);
    let changed = if claims.sid.as_deref() != Some(bt.spec.service_id.as_str()) {
        Some(Input::ServiceId)
    } else if claims.exp.checked_sub(claims.iat) != Some(lifetime) {
        Some(Input::Lifetime)
    } else if claims.iss != profile.issuer {
        Some(Input::Issuer)
    } else if claims.aud != profile.audience {
        Some(Input::Audience)
    } else if claims.client_id != bootstrap.client_id {
        Some(Input::ClientId)
    } else if claims.scope != bootstrap.scope {
        Some(Input::Scope)
    } else if claims.version_claim != profile.version_claim || claims.version != TOKEN_VERSION {
        Some(Input::VersionClaim)
    } else {
        None
    };
    if let Some(input) = changed {
        return Err(IssueReason::Changed(input));
    }
    let recorded = secret
        .and_then(|s| s.annotations().get(annotations::REISSUE))
        .map(String::as_str);
    if recorded != reissue_value(bt) {
        return Err(IssueReason::Requested);
    }
    if now >= renewal_time(claims.exp, terms.renew_before) {
        return Err(IssueReason::RenewalDue);
    }
    if kid != keys.active().kid() && !keys.is_upcoming(&kid) {
        return Err(IssueReason::KeyRotated);
    }
    Ok(Kept { token, claims, kid })
}

fn renewal_time(exp: i64, renew_before: Duration) -> i64 {
    exp.saturating_sub(i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX))
}

/// After a Ready reconcile: a timer for a renewal within `horizon` (`bootstrap.renewalHorizon`),
/// else none: [`renewals_due`] brings the object back in time. A timer per object costs a few
/// hundred bytes in kube-runtime's scheduler, kept for years by a ten-year token.
fn until_renewal(renewal: i64, now: i64, horizon: Duration) -> Action {
    let wait = Duration::from_secs(
        u64::try_from(renewal.saturating_sub(now))
            .unwrap_or(0)
            .max(1),
    );
    if wait <= horizon {
        Action::requeue(wait)
    } else {
        Action::await_change()
    }
}

/// Whether the periodic look at `now` reconciles `bt`: its renewal falls within `horizon`, or
/// its current token was revoked without the revocation reaching the controller (a listener that
/// fell behind misses some).
fn due_for_look(
    bt: &CachedToken,
    now: i64,
    horizon: Duration,
    revoked: impl Fn(&str) -> bool,
) -> bool {
    let horizon = i64::try_from(horizon.as_secs()).unwrap_or(i64::MAX);
    let renewal_near = bt
        .renewal_time()
        .is_some_and(|renewal| renewal <= now.saturating_add(horizon));
    renewal_near || bt.token_id().is_some_and(|jti| revoked(&jti))
}

/// Every half `bootstrap.renewalHorizon`, the objects in `store` [`due_for_look`] picks. Looking
/// a horizon ahead every half horizon, no renewal is passed before its object is on a timer.
fn renewals_due(
    store: Store<CachedToken>,
    issuer: Arc<Issuer>,
) -> impl futures::Stream<Item = ObjectRef<CachedToken>> + Send + 'static {
    let horizon = issuer.bootstrap().renewal_horizon;
    let mut ticks = tokio::time::interval(horizon / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(ticks, |mut ticks| async move {
        ticks.tick().await;
        Some(((), ticks))
    })
    .flat_map(move |()| {
        let now = Timestamp::now().as_second();
        let revocations = issuer.revocations();
        let due: Vec<_> = store
            .state()
            .iter()
            .filter(|bt| due_for_look(bt, now, horizon, |jti| revocations.is_revoked(jti, now)))
            .map(|bt| ObjectRef::from(&**bt))
            .collect();
        futures::stream::iter(due)
    })
}

/// The result of one reconcile, as the status shows it.
enum Outcome {
    Ready {
        claims: Box<Claims>,
        kid: String,
        renewal: i64,
    },
    NotReady {
        reason: Reason,
        message: String,
    },
    /// Ready with no Secret (`spec.storeToken: false`).
    NoSecret,
    /// Nothing was done; the status stays as it is.
    Unchanged,
}

#[tracing::instrument(skip_all, fields(namespace = cached.meta().namespace.as_deref(), name = cached.meta().name.as_deref()))]
pub async fn reconcile(cached: Arc<CachedToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&cached.expand(), &ctx).await;
    if result.is_ok() {
        ctx.failures.reset(&ObjectRef::from(&*cached));
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.reconciled(CONTROLLER, result.is_ok());
    result
}

async fn reconcile_inner(bt: &BootstrapToken, ctx: &Context) -> Result<Action, Error> {
    match issue(bt, ctx).await {
        Ok((outcome, action)) => {
            write_status(bt, ctx, &outcome).await?;
            Ok(action)
        }
        Err(error) => {
            let outcome = Outcome::NotReady {
                reason: error.reason(),
                message: error.to_string(),
            };
            // A failure to record the failure must not hide the failure itself.
            if let Err(status_error) = write_status(bt, ctx, &outcome).await {
                tracing::warn!(error = %status_error, "could not record the failure on the status");
            }
            Err(error)
        }
    }
}

/// Exponential back-off per object: 5 s, 10 s, … capped at 5 minutes.
pub fn error_policy(bt: Arc<CachedToken>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(ObjectRef::from(&*bt));
    tracing::warn!(%error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Reads what [`decide`] needs — from the caches when they can tell, else from the API server —
/// and carries its decision out.
async fn issue(bt: &BootstrapToken, ctx: &Context) -> Result<(Outcome, Action), Error> {
    let namespace = bt.namespace().unwrap_or_default();
    let secret_name = bt.secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let keys = ctx.issuer.keys().await?;
    // Until the revoked tokens are listed, a revoked token in a Secret would look valid.
    ctx.issuer.revocations().wait_synced().await;
    let cached = ctx.secret_in_cache(&namespace, &secret_name).await;
    let (existing, known) = match record::lookup(bt, cached, &ctx.issuer, &keys) {
        Lookup::Known(secret) => (Some(secret.secret(&namespace, &secret_name)), Some(secret)),
        Lookup::Absent => (None, None),
        Lookup::Read => (read_secret(ctx, bt, &secrets, &secret_name).await?, None),
    };
    if let Some(done) = carry_out(bt, ctx, &secrets, existing, known.as_deref()).await? {
        return Ok(done);
    }
    // The cache could not tell after all: read the Secret and decide again. A Secret read in
    // full always carries its data, so this carries out.
    let existing = read_secret(ctx, bt, &secrets, &secret_name).await?;
    Ok(carry_out(bt, ctx, &secrets, existing, None)
        .await?
        .unwrap_or((Outcome::Unchanged, Action::requeue(CONFLICT_REQUEUE))))
}

/// Decides on `existing` and carries the decision out; `None` when that needs the Secret read
/// from the API server: a kept token not read whose Secret needs writing, or a Secret not seen
/// that exists after all. A Secret not seen is only ever created, never overwritten. `known`:
/// `existing` is only what the cache keeps of it.
async fn carry_out(
    bt: &BootstrapToken,
    ctx: &Context,
    secrets: &Api<Secret>,
    existing: Option<Secret>,
    known: Option<&CachedSecret>,
) -> Result<Option<(Outcome, Action)>, Error> {
    let keys = ctx.issuer.keys().await?;
    let create_only = existing.is_none();
    let namespace = bt.namespace().unwrap_or_default();
    let secret_name = bt.secret_name();
    let now = Timestamp::now().as_second();
    let held_elsewhere = ctx.held_elsewhere(bt);
    let world = World {
        issuer: &ctx.issuer,
        keys: &keys,
        held_elsewhere: held_elsewhere.as_deref(),
        now,
    };
    let (terms, kept, issued) = match decide(bt, existing.as_ref(), &world) {
        Decision::NotReady(not_ready) => {
            // Ours only: with storeToken false a foreign Secret of that name is no conflict.
            if let NotReady::Forbidden { .. } = &not_ready
                && existing
                    .as_ref()
                    .is_some_and(|s| controlled_by(&s.metadata, bt))
            {
                // A token the policy no longer allows must not stay mounted.
                secrets
                    .delete(&secret_name, &DeleteParams::default())
                    .await?;
            }
            let action = match not_ready {
                // Neither a foreign Secret nor another namespace's object triggers this one:
                // look again now and then to see whether it went away.
                NotReady::SecretConflict(_) | NotReady::HeldElsewhere { .. } => {
                    Action::requeue(CONFLICT_REQUEUE)
                }
                _ => Action::await_change(),
            };
            let outcome = Outcome::NotReady {
                reason: not_ready.reason(),
                message: not_ready.message(),
            };
            return Ok(Some((outcome, action)));
        }
        Decision::Keep(terms, kept) => (terms, *kept, None),
        Decision::NoSecret => {
            forget_secrets(bt, secrets, None, existing.as_ref()).await?;
            return Ok(Some((Outcome::NoSecret, Action::await_change())));
        }
        Decision::Wait(wait, reason) => {
            tracing::info!(%reason, ?wait, "a new token is due; waiting out bootstrap.minReissueInterval");
            return Ok(Some((Outcome::Unchanged, Action::requeue(wait))));
        }
        Decision::Revoke(wait) => {
            // Nothing is written when the token is revoked already (an earlier value, the
            // endpoint): one record per issued token, however often the annotation changes.
            if let Some(revocation) = superseded(bt, ctx, None, &IssueReason::RevokeRequested, now)
            {
                ctx.issuer.revocations().revoke(&revocation).await?;
            }
            let message = revoked_message(bt, now.saturating_add_unsigned(wait.as_secs()));
            tracing::info!(
                ?wait,
                "revoked the token at once; its replacement waits out bootstrap.minReissueInterval"
            );
            let outcome = Outcome::NotReady {
                reason: Reason::Revoked,
                message,
            };
            return Ok(Some((outcome, Action::requeue(wait))));
        }
        Decision::Issue(_, IssueReason::KeyRotated)
            if let Err(wait) = ctx.pace_rotation(&ObjectRef::from(bt).to_string()) =>
        {
            tracing::debug!(
                ?wait,
                "moving to the new signing key after others, at signing.rotation.reissuePerMinute"
            );
            return Ok(Some((Outcome::Unchanged, Action::requeue(wait))));
        }
        Decision::Issue(terms, reason) => {
            let issued = ctx
                .issuer
                .issue_bootstrap(
                    BootstrapRequest {
                        namespace: &namespace,
                        sid: &bt.spec.service_id,
                        lifetime: terms.lifetime,
                        scope: None,
                        reason: reason.label(),
                    },
                    now,
                )
                .await?;
            // Before the Secret changes: should this write fail, the old token is still the
            // status's and is revoked on the retry.
            if let Some(revocation) = superseded(bt, ctx, Some(&issued.claims.jti), &reason, now) {
                ctx.issuer.revocations().revoke(&revocation).await?;
            }
            let kept = Kept {
                token: Some(issued.token),
                claims: issued.claims,
                kid: issued.kid,
            };
            (terms, kept, Some(reason))
        }
    };
    let Kept { token, claims, kid } = kept;

    let digest = record::claims_digest(&ctx.issuer);
    let desired = desired_secret(
        bt,
        &secret_name,
        token.as_deref().unwrap_or_default(),
        &claims,
        &kid,
        &digest,
    );
    let up_to_date = existing.as_ref().is_some_and(|s| match token {
        Some(_) => secret_matches(s, &desired),
        None => known.is_some_and(|known| known.applied_as(&desired.metadata)),
    });
    if issued.is_some() || !up_to_date {
        if token.is_none() {
            return Ok(None);
        }
        let mut desired = desired;
        if create_only {
            desired.metadata.resource_version = Some(record::CREATE_ONLY.into());
        }
        ctx.own_writes
            .writing(&namespace, &secret_name, &claims.jti);
        let written = secrets
            .patch(
                &secret_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await;
        ctx.own_writes
            .wrote(&namespace, &secret_name, written.as_ref().ok());
        match written {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if create_only && status.is_conflict() => {
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        }
    }
    forget_secrets(bt, secrets, Some(&secret_name), None).await?;
    if let Some(reason) = issued {
        let first = bt
            .status
            .as_ref()
            .and_then(|s| s.token_id.as_ref())
            .is_none();
        let (event_reason, note) = if first {
            (
                "Issued",
                format!("issued token {} for {}", claims.jti, bt.spec.service_id),
            )
        } else {
            (
                "Reissued",
                format!(
                    "issued token {} for {}: {reason}",
                    claims.jti, bt.spec.service_id
                ),
            )
        };
        tracing::info!(jti = %claims.jti, %reason, "issued token");
        publish(ctx, bt, EventType::Normal, event_reason, note).await;
    }

    let renewal = renewal_time(claims.exp, terms.renew_before);
    Ok(Some((
        Outcome::Ready {
            claims: Box::new(claims),
            kid,
            renewal,
        },
        until_renewal(renewal, now, ctx.issuer.bootstrap().renewal_horizon),
    )))
}

/// The revocation of the token the status names, now that `new_jti` replaces it (or, with none,
/// before its replacement is issued). The status, not the Secret's annotations, says which token
/// that is: whoever may write the Secret must not make the operator revoke a token of their
/// choosing.
fn superseded(
    bt: &BootstrapToken,
    ctx: &Context,
    new_jti: Option<&str>,
    reason: &IssueReason,
    now: i64,
) -> Option<revocation::Revocation> {
    let status = bt.status.as_ref()?;
    let previous = Previous {
        jti: status.token_id.as_deref()?,
        kid: status.key_id.as_deref().unwrap_or_default(),
        exp: revocation::parse_time(status.expires_at.as_deref()?)?,
    };
    let why = match reason {
        IssueReason::RevokeRequested => RevocationReason::RevokeRequested,
        _ => RevocationReason::Reissued,
    };
    revocation::on_replace(
        Some(previous),
        new_jti,
        why,
        &ctx.issuer.bootstrap().client_id,
        &bt.spec.service_id,
        ctx.issuer.revocations().config().reissue_grace,
        now,
    )
}

/// The Secret `bt` names. Its metadata comes from the watch cache (one metadata GET when the
/// cache does not have it: a Secret someone else made, or one not seen yet); its data is read
/// only when the Secret is this object's, so a tenant's Secret is never read.
async fn read_secret(
    ctx: &Context,
    bt: &BootstrapToken,
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<Secret>, Error> {
    let namespace = bt.namespace().unwrap_or_default();
    let metadata = match ctx.cached_secret(&namespace, name) {
        Some(secret) => Some(secret.secret(&namespace, name).metadata),
        None => {
            let api: Api<PartialObjectMeta<Secret>> =
                Api::namespaced(ctx.client.clone(), &namespace);
            api.get_metadata_opt(name).await?.map(|m| m.metadata)
        }
    };
    match metadata {
        None => Ok(None),
        Some(metadata) if !controlled_by(&metadata, bt) => Ok(Some(Secret {
            metadata,
            ..Default::default()
        })),
        // `data` present, if empty: what was read is the whole Secret, not only its metadata.
        Some(_) => Ok(secrets.get_opt(name).await?.map(|mut secret| {
            secret.data.get_or_insert_default();
            secret
        })),
    }
}

/// Secrets of `bt` that hold a live token no longer renewed or checked: the one the status names
/// when `spec.secretName` changed (`keep` is the Secret now used), or, with no token kept
/// (`keep` is `None`), that one and `existing`. Each is deleted if it is ours.
async fn forget_secrets(
    bt: &BootstrapToken,
    secrets: &Api<Secret>,
    keep: Option<&str>,
    existing: Option<&Secret>,
) -> Result<(), Error> {
    let previous = bt
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
        .filter(|previous| Some(*previous) != keep);
    let metadata: Api<PartialObjectMeta<Secret>> = Api::namespaced(
        secrets.clone().into_client(),
        &bt.namespace().unwrap_or_default(),
    );
    if let Some(previous) = previous
        && let Some(old) = metadata.get_metadata_opt(previous).await?
        && controlled_by(&old.metadata, bt)
    {
        delete_secret(secrets, previous).await?;
        tracing::info!(
            secret = previous,
            "deleted a Secret this object no longer uses"
        );
    }
    // Already read, so its ownership is known without another request.
    if let Some(current) = existing.filter(|s| controlled_by(&s.metadata, bt))
        && let Some(name) = current.metadata.name.as_deref()
        && Some(name) != previous
    {
        delete_secret(secrets, name).await?;
        tracing::info!(
            secret = name,
            "deleted the Secret: spec.storeToken is false"
        );
    }
    Ok(())
}

/// A Secret already gone (a stale cache, a concurrent deletion) is what was wanted.
async fn delete_secret(secrets: &Api<Secret>, name: &str) -> Result<(), Error> {
    match secrets.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn controlled_by(metadata: &ObjectMeta, bt: &BootstrapToken) -> bool {
    metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && Some(&owner.uid) == bt.metadata.uid.as_ref())
}

fn desired_secret(
    bt: &BootstrapToken,
    name: &str,
    token: &str,
    claims: &Claims,
    kid: &str,
    claims_digest: &str,
) -> Secret {
    let template = bt.spec.secret_template.clone().unwrap_or_default();
    // Keys under the operator's prefix are the operator's alone: one copied from the template
    // would read as a re-issue request on every reconcile (and the CRD refuses them already).
    let not_ours = |(key, _): &(String, String)| !key.starts_with(annotations::PREFIX);
    let mut labels: BTreeMap<String, String> =
        template.labels.into_iter().filter(not_ours).collect();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    let mut notes: BTreeMap<String, String> =
        template.annotations.into_iter().filter(not_ours).collect();
    notes.insert(annotations::SERVICE_ID.into(), bt.spec.service_id.clone());
    notes.insert(annotations::TOKEN_ID.into(), claims.jti.clone());
    notes.insert(annotations::KEY_ID.into(), kid.into());
    notes.insert(annotations::EXPIRES_AT.into(), rfc3339(claims.exp));
    notes.insert(annotations::CLAIMS.into(), claims_digest.into());
    for key in [annotations::REISSUE, annotations::REVOKE] {
        if let Some(value) = annotation(bt, key) {
            notes.insert(key.into(), value.into());
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: bt.namespace(),
            labels: Some(labels),
            annotations: Some(notes),
            owner_references: bt.controller_owner_ref(&()).map(|owner| vec![owner]),
            // Its deletion waits for the token in it to be revoked (`deletion`).
            finalizers: Some(vec![FINALIZER.into()]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Whether the Secret already holds everything we would apply, and nothing we applied earlier
/// that we no longer want (a label dropped from `secretTemplate`).
fn secret_matches(existing: &Secret, desired: &Secret) -> bool {
    let token = |s: &Secret| s.data.as_ref().and_then(|d| d.get(TOKEN_KEY)).cloned();
    existing.type_ == desired.type_
        && token(existing) == token(desired)
        && metadata_matches(&existing.metadata, &desired.metadata)
}

/// [`secret_matches`] for the metadata alone.
fn metadata_matches(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let contains = |have: Option<&BTreeMap<String, String>>,
                    want: Option<&BTreeMap<String, String>>| {
        let empty = BTreeMap::new();
        let have = have.unwrap_or(&empty);
        want.unwrap_or(&empty)
            .iter()
            .all(|(k, v)| have.get(k) == Some(v))
    };
    let owned_but_unwanted = |field: &str, want: Option<&BTreeMap<String, String>>| {
        applied_keys(existing, field)
            .iter()
            .any(|key| want.is_none_or(|want| !want.contains_key(key)))
    };
    contains(existing.labels.as_ref(), desired.labels.as_ref())
        && contains(existing.annotations.as_ref(), desired.annotations.as_ref())
        && !owned_but_unwanted("f:labels", desired.labels.as_ref())
        && !owned_but_unwanted("f:annotations", desired.annotations.as_ref())
        && existing.owner_references == desired.owner_references
        && existing.finalizers.iter().flatten().any(|f| f == FINALIZER)
}

/// The label or annotation keys our field manager applied, from `managedFields`.
fn applied_keys(metadata: &ObjectMeta, field: &str) -> Vec<String> {
    metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry.manager.as_deref() == Some(MANAGER) && entry.operation.as_deref() == Some("Apply")
        })
        .filter_map(|entry| {
            entry
                .fields_v1
                .as_ref()?
                .0
                .get("f:metadata")?
                .get(field)?
                .as_object()
                .cloned()
        })
        .flat_map(|keys| {
            keys.into_iter()
                .filter_map(|(k, _)| k.strip_prefix("f:").map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The Ready message of an issued token.
fn issued_message(jti: &str, service_id: &str, exp: i64) -> String {
    format!("token {jti} for {service_id} expires {}", rfc3339(exp))
}

fn rfc3339(seconds: i64) -> String {
    Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn write_status(bt: &BootstrapToken, ctx: &Context, outcome: &Outcome) -> Result<(), Error> {
    let previous = bt.status.clone().unwrap_or_default();
    let previous_ready = bt.ready_condition();
    let (status, reason, message, mut next) = match outcome {
        Outcome::Unchanged => return Ok(()),
        Outcome::Ready {
            claims,
            kid,
            renewal,
        } => (
            "True",
            Reason::Issued.as_str(),
            issued_message(&claims.jti, &bt.spec.service_id, claims.exp),
            BootstrapTokenStatus {
                secret_name: Some(bt.secret_name()),
                key_id: Some(kid.clone()),
                token_id: Some(claims.jti.clone()),
                issued_at: Some(rfc3339(claims.iat)),
                not_before: Some(rfc3339(claims.nbf)),
                expires_at: Some(rfc3339(claims.exp)),
                renewal_time: Some(rfc3339(*renewal)),
                ..Default::default()
            },
        ),
        Outcome::NoSecret => (
            "True",
            Reason::WorkloadIdentityOnly.as_str(),
            no_secret_message(bt),
            BootstrapTokenStatus {
                // Kept so that turning storeToken back on still honours minReissueInterval.
                issued_at: previous.issued_at.clone(),
                ..Default::default()
            },
        ),
        Outcome::NotReady { reason, message } => {
            ctx.metrics
                .failures
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc();
            // Keep what was issued last: the Secret (if any) still holds that token.
            ("False", reason.as_str(), message.clone(), previous.clone())
        }
    };
    next.observed_generation = bt.metadata.generation;
    let unchanged = previous_ready.is_some_and(|c| c.status == status && c.reason == reason);
    let last_transition_time = match previous_ready {
        Some(c) if unchanged => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    next.conditions = vec![Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.clone(),
        observed_generation: bt.metadata.generation,
        last_transition_time,
    }];
    if next == previous {
        return Ok(());
    }
    let api: Api<BootstrapToken> =
        Api::namespaced(ctx.client.clone(), &bt.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": BootstrapToken::api_version(&()),
        "kind": BootstrapToken::kind(&()),
        "status": next,
    });
    api.patch_status(
        &bt.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    if status == "False" && !unchanged {
        publish(ctx, bt, EventType::Warning, reason, message).await;
    }
    Ok(())
}

/// The Ready message while a revoked token waits for its replacement, issued at `next`.
fn revoked_message(bt: &BootstrapToken, next: i64) -> String {
    let token = bt
        .status
        .as_ref()
        .and_then(|s| s.token_id.as_deref())
        .unwrap_or_default();
    format!(
        "token {token} was revoked by the {} annotation; its replacement is issued at {} (bootstrap.minReissueInterval after the last issuance)",
        annotations::REVOKE,
        rfc3339(next)
    )
}

fn no_secret_message(bt: &BootstrapToken) -> String {
    let accounts = &bt.spec.service_accounts;
    if accounts.is_empty() {
        "spec.storeToken is false: no token is kept in a Secret, and no spec.serviceAccounts are listed to get one from the token endpoint".into()
    } else {
        format!(
            "spec.storeToken is false: no token is kept in a Secret; ServiceAccounts {} get tokens for {} from the token endpoint",
            accounts.join(", "),
            bt.spec.service_id
        )
    }
}

/// Events are best effort: failing to record one must not fail the reconcile.
async fn publish(ctx: &Context, bt: &BootstrapToken, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &bt.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish event");
    }
}

/// Runs the controller until `shutdown` resolves, over all namespaces or the given ones.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    // Only the Secrets' metadata is watched: the ownerReference is all a trigger needs, and the
    // token bytes need not travel on every watch event.
    let apis: Vec<(Api<CachedToken>, Api<PartialObjectMeta<Secret>>)> = if namespaces.is_empty() {
        vec![(Api::all(ctx.client.clone()), Api::all(ctx.client.clone()))]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                )
            })
            .collect()
    };
    let mut stores = Vec::new();
    let mut secret_caches = Vec::new();
    let controllers: Vec<_> = apis
        .into_iter()
        .map(|(tokens, secrets)| {
            // Objects arrive as [`CachedToken`]s: what is never read is dropped before the cache.
            let (store, writer) = reflector::store();
            stores.push(store.clone());
            let tokens = watcher(tokens, watcher::Config::default())
                .backoff(crate::backoff::watch())
                .modify(CachedToken::forget_resource_version)
                .reflect(writer)
                .filter_map({
                    let mut changes = Changes::default();
                    move |event| {
                        std::future::ready(match event {
                            Ok(event) => changes.admit(event).map(Ok),
                            Err(error) => Some(Err(error)),
                        })
                    }
                });
            let secret_cache = Arc::new(SecretCache::default());
            secret_caches.push(secret_cache.clone());
            let owned_secrets = watcher(secrets, owned.clone())
                .backoff(crate::backoff::watch())
                .filter_map({
                    let ctx = ctx.clone();
                    move |event| {
                        let owner = match event {
                            Ok(event) => secret_cache.apply(event, &ctx.own_writes),
                            Err(error) => {
                                tracing::debug!(%error, "watching the owned Secrets");
                                None
                            }
                        };
                        std::future::ready(owner)
                    }
                });
            // A revoked current token (at the endpoint, say) is replaced at once.
            let lookup = store.clone();
            let revoked = ctx.issuer.revocations().revoked().filter_map(move |jti| {
                let sought = SoughtToken::new(&jti);
                let found = lookup.find(|bt| sought.held_by(bt));
                async move { found.map(|bt| ObjectRef::from(&*bt)) }
            });
            let due = renewals_due(store.clone(), ctx.issuer.clone());
            Controller::for_stream(tokens, store)
                .reconcile_on(owned_secrets)
                .reconcile_on(revoked)
                .reconcile_on(due)
                .with_config(controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES))
                .trigger_backoff(crate::backoff::watch())
                // Objects that failed for want of the signing key: at once, not after their back-off.
                .reconcile_all_on(ctx.issuer.keys_recovered())
                .graceful_shutdown_on(shutdown.clone())
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|result| async move {
                    if let Err(error) = result {
                        tracing::debug!(%error, "reconcile loop");
                    }
                })
        })
        .collect();
    *ctx.tokens.write().unwrap_or_else(|e| e.into_inner()) = stores;
    *ctx.owned_secrets.write().unwrap_or_else(|e| e.into_inner()) = secret_caches;
    futures::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;
    use crate::policy::PolicyRule;
    use crate::resource::BootstrapTokenSpec;
    use crate::token::{BootstrapConfig, LocalKey, VersionClaim, test_issuer};

    const UID: &str = "0b7c3b1e-0000-4000-8000-000000000001";
    const NOW: i64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    static KEYS: LazyLock<KeySet> =
        LazyLock::new(|| KeySet::new(LocalKey::generate("100").unwrap(), vec![]));
    /// Same kid, another key: what a forger or a lost key Secret produces.
    static OTHER_KEYS: LazyLock<KeySet> =
        LazyLock::new(|| KeySet::new(LocalKey::generate("100").unwrap(), vec![]));
    static STRANGER_KEYS: LazyLock<KeySet> =
        LazyLock::new(|| KeySet::new(LocalKey::generate("7").unwrap(), vec![]));

    fn issuer(policy: Vec<PolicyRule>) -> Issuer {
        let bootstrap = BootstrapConfig {
            scope: vec!["scope.a".into()],
            lifetime: 10 * HOUR,
            ..Default::default()
        };
        test_issuer(bootstrap, policy, KEYS.clone())
    }

    fn bt(spec: impl FnOnce(&mut BootstrapTokenSpec)) -> BootstrapToken {
        let mut bt = BootstrapToken::new("svc", BootstrapTokenSpec::for_service("com.example.svc"));
        bt.metadata.namespace = Some("team-a".into());
        bt.metadata.uid = Some(UID.into());
        spec(&mut bt.spec);
        bt
    }

    fn with_reissue(bt: BootstrapToken, value: &str) -> BootstrapToken {
        with_annotation(bt, annotations::REISSUE, value)
    }

    fn with_annotation(mut bt: BootstrapToken, key: &str, value: &str) -> BootstrapToken {
        bt.annotations_mut().insert(key.into(), value.into());
        bt
    }

    /// The claims the issuer would give `bt`'s token issued at `iat`.
    fn claims(iat: i64) -> Claims {
        issuer(vec![]).bootstrap_claims("com.example.svc", 10 * HOUR, iat)
    }

    fn signed(keys: &KeySet, claims: &Claims) -> String {
        futures::executor::block_on(keys.active().sign(claims)).unwrap()
    }

    /// A Secret owned by `owner_uid` holding `token` (raw bytes).
    fn secret(owner_uid: &str, token: Option<&[u8]>, reissue: Option<&str>) -> Secret {
        let mut secret = Secret {
            data: token.map(|t| BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(t.to_vec()))])),
            ..Default::default()
        };
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "bootstraptoken.dev/v1alpha1".into(),
            kind: "BootstrapToken".into(),
            name: "svc".into(),
            uid: owner_uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        if let Some(value) = reissue {
            secret
                .annotations_mut()
                .insert(annotations::REISSUE.into(), value.into());
        }
        secret
    }

    fn ours(claims: &Claims) -> Secret {
        secret(UID, Some(signed(&KEYS, claims).as_bytes()), None)
    }

    fn changed(edit: impl FnOnce(&mut Claims)) -> Secret {
        let mut claims = claims(NOW - 60);
        edit(&mut claims);
        ours(&claims)
    }

    /// Name, object, policy, the Secret it names, now, and what must be decided.
    type Case = (
        &'static str,
        BootstrapToken,
        Vec<PolicyRule>,
        Option<Secret>,
        i64,
        Want,
    );

    enum Want {
        NotReady(Reason),
        Keep,
        Issue(IssueReason),
        Wait(u64),
        Revoke(u64),
        NoSecret,
    }

    fn decide_at(
        bt: &BootstrapToken,
        issuer: &Issuer,
        existing: Option<&Secret>,
        keys: &KeySet,
        now: i64,
    ) -> Decision {
        let world = World {
            issuer,
            keys,
            held_elsewhere: None,
            now,
        };
        decide(bt, existing, &world)
    }

    /// `bt` whose status names the token issued at `at`.
    fn issued_at(mut bt: BootstrapToken, at: i64) -> BootstrapToken {
        bt.status = Some(BootstrapTokenStatus {
            issued_at: Some(rfc3339(at)),
            token_id: Some("current-jti".into()),
            ..Default::default()
        });
        bt
    }

    /// `secret` recording `value` as the handled value of the annotation `key`.
    fn handled(mut secret: Secret, key: &str, value: &str) -> Secret {
        secret.annotations_mut().insert(key.into(), value.into());
        secret
    }

    #[test]
    fn decide_table() {
        let fresh = ours(&claims(NOW - 60));
        // Default renewal: a third of the 10 h lifetime before expiry, at iat + 6h40m.
        let renewal_at = |iat: i64| iat + 10 * 3600 - 10 * 3600 / 3;
        let iat = NOW - 1000;
        let at_renewal = ours(&claims(iat));
        let allowed = vec![PolicyRule {
            namespaces: vec!["team-*".into()],
            service_ids: vec!["com.example.*".into()],
            ..Default::default()
        }];
        let denied = vec![PolicyRule {
            namespaces: vec!["team-b".into()],
            service_ids: vec![],
            ..Default::default()
        }];
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("unparsable lifetime", bt(|s| s.lifetime = Some("ten years".into())), vec![], None, NOW, Want::NotReady(Reason::InvalidSpec)),
            ("unparsable renewBefore", bt(|s| s.renew_before = Some("soon".into())), vec![], None, NOW, Want::NotReady(Reason::InvalidSpec)),
            ("renewBefore equal to lifetime", bt(|s| { s.lifetime = Some("2h".into()); s.renew_before = Some("2h".into()) }), vec![], None, NOW, Want::NotReady(Reason::InvalidSpec)),
            ("renewBefore just below lifetime", bt(|s| { s.lifetime = Some("2h".into()); s.renew_before = Some("1h59m59s".into()) }), vec![], None, NOW, Want::Issue(IssueReason::SecretMissing)),
            ("renewBefore from config above a short spec lifetime", bt(|s| s.lifetime = Some("1h".into())), vec![], None, NOW, Want::Issue(IssueReason::SecretMissing)),
            ("Secret of someone else", bt(|_| {}), vec![], Some(secret("another-uid", Some(b"x"), None)), NOW, Want::NotReady(Reason::SecretConflict)),
            ("Secret without owner", bt(|_| {}), vec![], Some(Secret::default()), NOW, Want::NotReady(Reason::SecretConflict)),
            ("policy refuses the namespace", bt(|_| {}), denied.clone(), None, NOW, Want::NotReady(Reason::Forbidden)),
            ("storeToken false", bt(|s| s.store_token = false), vec![], None, NOW, Want::NoSecret),
            ("storeToken false, our Secret present", bt(|s| s.store_token = false), vec![], Some(fresh.clone()), NOW, Want::NoSecret),
            ("storeToken false, a foreign Secret is no conflict", bt(|s| s.store_token = false), vec![], Some(secret("another-uid", Some(b"x"), None)), NOW, Want::NoSecret),
            ("storeToken false, policy still refuses", bt(|s| s.store_token = false), denied.clone(), None, NOW, Want::NotReady(Reason::Forbidden)),
            ("policy refuses, our Secret present", bt(|_| {}), denied, Some(fresh.clone()), NOW, Want::NotReady(Reason::Forbidden)),
            ("policy allows", bt(|_| {}), allowed, Some(fresh.clone()), NOW, Want::Keep),
            ("no Secret", bt(|_| {}), vec![], None, NOW, Want::Issue(IssueReason::SecretMissing)),
            ("Secret without a token", bt(|_| {}), vec![], Some(secret(UID, None, None)), NOW, Want::Issue(IssueReason::SecretMissing)),
            ("token not UTF-8", bt(|_| {}), vec![], Some(secret(UID, Some(&[0xff, 0xfe]), None)), NOW, Want::Issue(IssueReason::TokenInvalid("not UTF-8".into()))),
            ("a valid token", bt(|_| {}), vec![], Some(fresh.clone()), NOW, Want::Keep),
            ("serviceId changed", bt(|s| s.service_id = "com.example.other".into()), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::Changed(Input::ServiceId))),
            ("lifetime changed", bt(|s| s.lifetime = Some("9h".into())), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::Changed(Input::Lifetime))),
            ("lifetime spelled differently, same length", bt(|s| s.lifetime = Some("600m".into())), vec![], Some(fresh.clone()), NOW, Want::Keep),
            ("issuer changed", bt(|_| {}), vec![], Some(changed(|c| c.iss = "urn:other".into())), NOW, Want::Issue(IssueReason::Changed(Input::Issuer))),
            ("audience changed", bt(|_| {}), vec![], Some(changed(|c| c.aud = "urn:other".into())), NOW, Want::Issue(IssueReason::Changed(Input::Audience))),
            ("client id changed", bt(|_| {}), vec![], Some(changed(|c| c.client_id = "other".into())), NOW, Want::Issue(IssueReason::Changed(Input::ClientId))),
            ("scope changed", bt(|_| {}), vec![], Some(changed(|c| c.scope = vec!["scope.b".into()])), NOW, Want::Issue(IssueReason::Changed(Input::Scope))),
            ("version claim changed", bt(|_| {}), vec![], Some(changed(|c| c.version_claim = VersionClaim::Ver)), NOW, Want::Issue(IssueReason::Changed(Input::VersionClaim))),
            ("version value changed", bt(|_| {}), vec![], Some(changed(|c| c.version = "2.0".into())), NOW, Want::Issue(IssueReason::Changed(Input::VersionClaim))),
            ("reissue requested", with_reissue(bt(|_| {}), "1"), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::Requested)),
            ("revoke requested", with_annotation(issued_at(bt(|_| {}), NOW - 60), annotations::REVOKE, "1"), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::RevokeRequested)),
            ("revoke and reissue both new: revoke wins", with_reissue(with_annotation(issued_at(bt(|_| {}), NOW - 60), annotations::REVOKE, "1"), "1"), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::RevokeRequested)),
            ("revoke and a changed input: revoke wins", with_annotation(issued_at(bt(|s| s.lifetime = Some("9h".into())), NOW - 60), annotations::REVOKE, "1"), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::RevokeRequested)),
            ("revoke value already handled", with_annotation(issued_at(bt(|_| {}), NOW - 60), annotations::REVOKE, "1"), vec![], Some(handled(fresh.clone(), annotations::REVOKE, "1")), NOW, Want::Keep),
            ("revoke annotation removed: nothing to revoke", issued_at(bt(|_| {}), NOW - 60), vec![], Some(handled(fresh.clone(), annotations::REVOKE, "1")), NOW, Want::Keep),
            ("revoke on a new object: no token to take back", with_annotation(bt(|_| {}), annotations::REVOKE, "1"), vec![], None, NOW, Want::Issue(IssueReason::SecretMissing)),
            ("revoke within minReissueInterval: revoked now, replaced later", with_annotation(issued_at(bt(|_| {}), NOW - 4), annotations::REVOKE, "2"), vec![], Some(handled(fresh.clone(), annotations::REVOKE, "1")), NOW, Want::Revoke(6)),
            ("revoke with a re-issue within the interval: revoked now", with_reissue(with_annotation(issued_at(bt(|_| {}), NOW - 4), annotations::REVOKE, "1"), "1"), vec![], Some(fresh.clone()), NOW, Want::Revoke(6)),
            ("revoke with the Secret gone within the interval: revoked now", with_annotation(issued_at(bt(|_| {}), NOW - 9), annotations::REVOKE, "1"), vec![], None, NOW, Want::Revoke(1)),
            ("revoke at minReissueInterval: replaced at once", with_annotation(issued_at(bt(|_| {}), NOW - 10), annotations::REVOKE, "1"), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::RevokeRequested)),
            ("reissue value already served", with_reissue(bt(|_| {}), "1"), vec![], Some(secret(UID, Some(signed(&KEYS, &claims(NOW - 60)).as_bytes()), Some("1"))), NOW, Want::Keep),
            ("reissue annotation removed", bt(|_| {}), vec![], Some(secret(UID, Some(signed(&KEYS, &claims(NOW - 60)).as_bytes()), Some("1"))), NOW, Want::Issue(IssueReason::Requested)),
            ("one second before renewal", bt(|_| {}), vec![], Some(at_renewal.clone()), renewal_at(iat) - 1, Want::Keep),
            ("at renewal time", bt(|_| {}), vec![], Some(at_renewal.clone()), renewal_at(iat), Want::Issue(IssueReason::RenewalDue)),
            ("lifetime at the configured minimum", bt(|s| s.lifetime = Some("1h".into())), vec![], None, NOW, Want::Issue(IssueReason::SecretMissing)),
            ("lifetime below the configured minimum", bt(|s| s.lifetime = Some("59m59s".into())), vec![], None, NOW, Want::NotReady(Reason::InvalidSpec)),
            ("lifetime of a second", bt(|s| s.lifetime = Some("1s".into())), vec![], None, NOW, Want::NotReady(Reason::InvalidSpec)),
            ("lifetime at the maximum", bt(|s| s.lifetime = Some("876000h".into())), vec![], None, NOW, Want::Issue(IssueReason::SecretMissing)),
            ("lifetime beyond a hundred years", bt(|s| s.lifetime = Some("876001h".into())), vec![], None, NOW, Want::NotReady(Reason::InvalidSpec)),
            ("re-issue within minReissueInterval waits", issued_at(with_reissue(bt(|_| {}), "2"), NOW - 4), vec![], Some(fresh.clone()), NOW, Want::Wait(6)),
            ("a missing Secret waits too", issued_at(bt(|_| {}), NOW - 9), vec![], None, NOW, Want::Wait(1)),
            ("re-issue at minReissueInterval", issued_at(with_reissue(bt(|_| {}), "2"), NOW - 10), vec![], Some(fresh.clone()), NOW, Want::Issue(IssueReason::Requested)),
            ("a recent issuance does not hold back keeping", issued_at(bt(|_| {}), NOW - 1), vec![], Some(fresh.clone()), NOW, Want::Keep),
            ("explicit renewBefore moves renewal", bt(|s| s.renew_before = Some("9h".into())), vec![], Some(at_renewal), iat + 3600, Want::Issue(IssueReason::RenewalDue)),
        ];
        for (name, bt, policy, existing, now, want) in cases {
            let issuer = issuer(policy);
            let got = decide_at(&bt, &issuer, existing.as_ref(), &KEYS, now);
            match (&want, &got) {
                (Want::NotReady(reason), Decision::NotReady(not_ready)) => {
                    assert_eq!(not_ready.reason(), *reason, "{name}: {got:?}")
                }
                (Want::Keep, Decision::Keep(_, kept)) => {
                    assert_eq!(kept.kid, "100", "{name}");
                    assert_eq!(
                        kept.claims.sid.as_deref(),
                        Some(bt.spec.service_id.as_str())
                    );
                }
                (Want::Issue(reason), Decision::Issue(_, got_reason)) => {
                    assert_eq!(got_reason, reason, "{name}")
                }
                (Want::Wait(seconds), Decision::Wait(wait, _))
                | (Want::Revoke(seconds), Decision::Revoke(wait)) => {
                    assert_eq!(wait.as_secs(), *seconds, "{name}")
                }
                (Want::NoSecret, Decision::NoSecret) => {}
                _ => panic!("{name}: got {got:?}"),
            }
        }
    }

    #[test]
    fn a_far_renewal_holds_no_timer_and_the_periodic_look_finds_it_in_time() {
        const HORIZON: Duration = HOUR;
        let horizon = i64::try_from(HORIZON.as_secs()).unwrap();
        #[rustfmt::skip]
        let timers = [
            ("renewal passed", NOW - 5, Action::requeue(Duration::from_secs(1))),
            ("renewal now", NOW, Action::requeue(Duration::from_secs(1))),
            ("renewal in a minute", NOW + 60, Action::requeue(Duration::from_secs(60))),
            ("renewal at the horizon", NOW + horizon, Action::requeue(HORIZON)),
            ("renewal past the horizon", NOW + horizon + 1, Action::await_change()),
            ("renewal in ten years", NOW + 10 * 365 * 86_400, Action::await_change()),
        ];
        for (name, renewal, want) in timers {
            assert_eq!(until_renewal(renewal, NOW, HORIZON), want, "{name}");
        }

        // Token ids as the issuer makes them are cached as bytes; any other status is kept whole.
        const JTI: &str = "TV8rwl9jC0EU1kfQez0WGg";
        const REVOKED: &str = "AAECAwQFBgcICQoLDA0ODw";
        let with_status = |renewal: Option<i64>, jti: Option<&str>| {
            let mut bt = bt(|_| {});
            bt.status = Some(BootstrapTokenStatus {
                renewal_time: renewal.map(rfc3339),
                token_id: jti.map(Into::into),
                ..Default::default()
            });
            CachedToken::from(bt)
        };
        let revoked = |jti: &str| jti == REVOKED || jti == "revoked-jti";
        #[rustfmt::skip]
        let looks = [
            ("no status yet", CachedToken::from(bt(|_| {})), false),
            ("renewal within the horizon", with_status(Some(NOW + horizon), Some(JTI)), true),
            ("renewal passed", with_status(Some(NOW - 60), Some(JTI)), true),
            ("renewal past the horizon", with_status(Some(NOW + horizon + 1), Some(JTI)), false),
            ("far renewal, current token revoked", with_status(Some(NOW + 10 * horizon), Some(REVOKED)), true),
            ("far renewal, a foreign token id revoked", with_status(Some(NOW + 10 * horizon), Some("revoked-jti")), true),
            ("renewal passed, a foreign token id", with_status(Some(NOW - 60), Some("jti")), true),
            ("no renewal recorded (not Ready)", with_status(None, Some(JTI)), false),
        ];
        for (name, bt, want) in looks {
            assert_eq!(due_for_look(&bt, NOW, HORIZON, revoked), want, "{name}");
        }
        // A look every half horizon sees each renewal at least half a horizon before it is due.
        let renewal = NOW + 3 * horizon + 17;
        let first_look = (NOW..=renewal)
            .step_by(usize::try_from(horizon / 2).unwrap())
            .find(|&at| due_for_look(&with_status(Some(renewal), Some(JTI)), at, HORIZON, revoked))
            .expect("a look finds the renewal");
        assert!(
            renewal - first_look >= horizon / 2,
            "found {}s before",
            renewal - first_look
        );
    }

    #[test]
    fn tokens_we_did_not_sign_are_replaced() {
        let issuer = issuer(vec![]);
        for (name, keys) in [
            ("forged, same kid", &*OTHER_KEYS),
            ("unknown kid", &*STRANGER_KEYS),
        ] {
            let existing = secret(UID, Some(signed(keys, &claims(NOW - 60)).as_bytes()), None);
            match decide_at(&bt(|_| {}), &issuer, Some(&existing), &KEYS, NOW) {
                Decision::Issue(_, IssueReason::TokenInvalid(_)) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// Name, object, its Secret, the key set, now, and why a new token is due (if it is).
    type RotatedCase<'a> = (
        &'a str,
        BootstrapToken,
        Secret,
        &'a KeySet,
        i64,
        Option<IssueReason>,
    );

    /// After a rotation the old key still verifies, but a token it signed is re-issued with
    /// the new one; other reasons come first (their label says more).
    #[test]
    fn a_token_of_a_rotated_out_key_is_reissued() {
        let rotated = KeySet::from_signers(
            Arc::new(LocalKey::generate("200").unwrap()),
            vec![KEYS.active().signer().clone()],
        );
        // A leader whose clock lags sees the key that signs elsewhere as still to come.
        let lagging = KeySet::from_signers(
            Arc::new(LocalKey::generate("99").unwrap()),
            vec![KEYS.active().signer().clone()],
        )
        .with_upcoming(vec!["100".into()]);
        let issuer = issuer(vec![]);
        let fresh = ours(&claims(NOW - 60));
        let iat = NOW - 1000;
        let due = NOW - 1000 + 10 * 3600 - 10 * 3600 / 3;
        #[rustfmt::skip]
        let cases: Vec<RotatedCase> = vec![
            ("signed by the active key: kept", bt(|_| {}), fresh.clone(), &KEYS, NOW, None),
            ("signed by the previous key", bt(|_| {}), fresh.clone(), &rotated, NOW, Some(IssueReason::KeyRotated)),
            ("signed by the key still to come here: kept", bt(|_| {}), fresh.clone(), &lagging, NOW, None),
            ("renewal due says so", bt(|_| {}), ours(&claims(iat)), &rotated, due, Some(IssueReason::RenewalDue)),
            ("a changed input says so", bt(|s| s.lifetime = Some("9h".into())), fresh.clone(), &rotated, NOW, Some(IssueReason::Changed(Input::Lifetime))),
            ("reissue requested says so", with_reissue(bt(|_| {}), "1"), fresh.clone(), &rotated, NOW, Some(IssueReason::Requested)),
        ];
        for (name, bt, secret, keys, now, want) in cases {
            match (decide_at(&bt, &issuer, Some(&secret), keys, now), want) {
                (Decision::Keep(..), None) => {}
                (Decision::Issue(_, got), Some(want)) => assert_eq!(got, want, "{name}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A token revoked in the Secret (at `/oauth2/revoke`, say) is replaced once the revocation
    /// takes effect, not before: a re-issue's grace period keeps it.
    #[tokio::test]
    async fn revoked_tokens_are_replaced_from_their_effective_time() {
        let issuer = issuer(vec![]);
        let claims = claims(NOW - 60);
        let existing = ours(&claims);
        let revocation = crate::revocation::Revocation {
            jti: claims.jti.clone(),
            kid: "100".into(),
            client_id: claims.client_id.clone(),
            sid: claims.sid.clone(),
            exp: claims.exp,
            effective_at: NOW + 10,
            reason: RevocationReason::Endpoint,
        };
        issuer.revocations().revoke(&revocation).await.unwrap();
        let decide = |now| decide_at(&bt(|_| {}), &issuer, Some(&existing), &KEYS, now);
        assert!(matches!(decide(NOW + 9), Decision::Keep(..)));
        match decide(NOW + 10) {
            Decision::Issue(_, IssueReason::TokenInvalid(why)) => assert!(why.contains("revoked")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn terms_come_from_the_spec_else_the_configuration() {
        let issuer = issuer(vec![]);
        let terms_of = |bt: BootstrapToken| match decide_at(&bt, &issuer, None, &KEYS, NOW) {
            Decision::Issue(terms, _) => terms,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            terms_of(bt(|_| {})),
            Terms {
                lifetime: 10 * HOUR,
                renew_before: 10 * HOUR / 3
            }
        );
        assert_eq!(
            terms_of(bt(|s| {
                s.lifetime = Some("2h".into());
                s.renew_before = Some("30m".into())
            })),
            Terms {
                lifetime: 2 * HOUR,
                renew_before: HOUR / 2
            }
        );
    }

    #[test]
    fn a_service_id_held_in_another_namespace_needs_a_sharing_rule() {
        let sharing = vec![PolicyRule {
            service_ids: vec!["com.example.*".into()],
            share_service_ids: true,
            ..Default::default()
        }];
        for (policy, held_elsewhere, want_forbidden) in [
            (vec![], None, false),
            (vec![], Some("team-b"), true),
            (sharing.clone(), Some("team-b"), false),
        ] {
            let issuer = issuer(policy);
            let world = World {
                issuer: &issuer,
                keys: &KEYS,
                held_elsewhere,
                now: NOW,
            };
            match decide(&bt(|_| {}), None, &world) {
                Decision::NotReady(not_ready) => {
                    assert!(want_forbidden, "{not_ready:?}");
                    assert_eq!(not_ready.reason(), Reason::Forbidden);
                    assert!(not_ready.message().contains("namespace team-b"));
                }
                Decision::Issue(..) => assert!(!want_forbidden, "{held_elsewhere:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn operator_keys_never_come_from_the_template() {
        let bt = bt(|s| {
            s.secret_template = Some(crate::resource::SecretTemplate {
                labels: BTreeMap::from([
                    ("team".into(), "a".into()),
                    ("bootstraptoken.dev/x".into(), "y".into()),
                ]),
                annotations: BTreeMap::from([
                    ("note".into(), "kept".into()),
                    (annotations::REISSUE.into(), "loop".into()),
                    (annotations::TOKEN_ID.into(), "fake".into()),
                ]),
            })
        });
        let claims = claims(NOW);
        let secret = desired_secret(&bt, "svc-bootstrap-token", "t", &claims, "100", "digest");
        let notes = secret.metadata.annotations.unwrap();
        assert_eq!(notes.get("note").map(String::as_str), Some("kept"));
        assert!(!notes.contains_key(annotations::REISSUE));
        assert_eq!(notes[annotations::TOKEN_ID], claims.jti);
        let labels = secret.metadata.labels.unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert!(!labels.contains_key("bootstraptoken.dev/x"));
    }
}
