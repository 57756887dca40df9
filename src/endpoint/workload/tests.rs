use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;

use super::*;
use crate::resource::BootstrapTokenSpec;

const NOW: i64 = 1_800_000_000;
const AUDIENCE: &str = "urn:com:networknt:oauth2:v1";
const BOOTSTRAP_ID: &str = "f7d42348-c647-4efb-a52d-4c5787421e00";

/// Answers as the API server would for the tokens it was told about, or fails as one that is down.
#[derive(Default)]
struct FakeApiServer {
    /// token → username
    tokens: Mutex<Vec<(String, String)>>,
    down: AtomicBool,
    reviews: AtomicUsize,
}

impl TokenReviewer for FakeApiServer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Review, ReviewError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(ReviewError::Unreachable("connection refused".into()));
            }
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let tokens = self.tokens.lock().unwrap();
            Ok(match tokens.iter().find(|(t, _)| t == token) {
                Some((_, username)) if audience == AUDIENCE => Review::Authenticated {
                    username: username.clone(),
                    audiences: vec![audience.into()],
                },
                _ => Review::Rejected,
            })
        })
    }
}

/// A well-formed assertion (signature not checked here: the fake decides) expiring at `exp`.
fn assertion(subject: &str, exp: i64) -> String {
    let part = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
    format!(
        "{}.{}.c2ln",
        part(serde_json::json!({"alg": "RS256"})),
        part(serde_json::json!({"sub": subject, "exp": exp, "aud": [AUDIENCE]}))
    )
}

fn workload(cache: bool) -> (WorkloadIdentity, Arc<FakeApiServer>) {
    let api = Arc::new(FakeApiServer::default());
    let config = WorkloadIdentityConfig {
        enabled: true,
        audience: None,
        review_cache: ReviewCacheConfig {
            enabled: cache,
            ..Default::default()
        },
    };
    let workload = WorkloadIdentity::new(&config, AUDIENCE, api.clone());
    workload.mappings.mark_synced();
    (workload, api)
}

/// Metrics nobody reads: only the reviews the fake counts matter here.
fn metrics() -> EndpointMetrics {
    EndpointMetrics::new(&mut prometheus_client::registry::Registry::default())
}

fn register(api: &FakeApiServer, token: &str, username: &str) {
    api.tokens
        .lock()
        .unwrap()
        .push((token.into(), username.into()));
}

#[tokio::test]
async fn reviews_are_cached_and_survive_an_outage_until_they_expire() {
    let (workload, api) = workload(true);
    let known = assertion("a", NOW + 600);
    register(&api, &known, "system:serviceaccount:team-a:api");
    let account = workload
        .authenticate(&known, NOW, &metrics())
        .await
        .unwrap();
    assert_eq!(account.to_string(), "team-a/api");
    workload
        .authenticate(&known, NOW + 1, &metrics())
        .await
        .unwrap();
    assert_eq!(
        api.reviews.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );

    api.down.store(true, Ordering::SeqCst);
    assert_eq!(
        workload
            .authenticate(&known, NOW + 29, &metrics())
            .await
            .unwrap(),
        account
    );
    let new = assertion("b", NOW + 600);
    register(&api, &new, "system:serviceaccount:team-a:api");
    let error = workload
        .authenticate(&new, NOW + 29, &metrics())
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::ReviewUnavailable);
    let error = workload
        .authenticate(&known, NOW + 30, &metrics())
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        ErrorKind::ReviewUnavailable,
        "past maxAge it is reviewed again"
    );

    api.down.store(false, Ordering::SeqCst);
    let short = assertion("c", NOW + 5);
    register(&api, &short, "system:serviceaccount:team-a:api");
    workload
        .authenticate(&short, NOW, &metrics())
        .await
        .unwrap();
    let error = workload
        .authenticate(&short, NOW + 5, &metrics())
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        ErrorKind::InvalidAssertion,
        "never past its own exp"
    );
}

#[tokio::test]
async fn without_the_cache_every_assertion_is_reviewed() {
    let (workload, api) = workload(false);
    let known = assertion("a", NOW + 600);
    register(&api, &known, "system:serviceaccount:team-a:api");
    for _ in 0..3 {
        workload
            .authenticate(&known, NOW, &metrics())
            .await
            .unwrap();
    }
    assert_eq!(api.reviews.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn refused_assertions_cost_no_review_when_they_can_be_told_locally() {
    let (workload, api) = workload(true);
    for (what, token) in [
        ("expired", assertion("a", NOW - 1)),
        ("garbage", "garbage".to_string()),
    ] {
        let error = workload
            .authenticate(&token, NOW, &metrics())
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidAssertion, "{what}");
    }
    assert_eq!(api.reviews.load(Ordering::SeqCst), 0);
    let unknown = assertion("forged", NOW + 600);
    let error = workload
        .authenticate(&unknown, NOW, &metrics())
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidAssertion);
    let error = workload
        .authenticate(&unknown, NOW, &metrics())
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        ErrorKind::InvalidAssertion,
        "refusals are not cached"
    );
    assert_eq!(api.reviews.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn nothing_is_decided_before_the_mappings_are_listed() {
    let api = Arc::new(FakeApiServer::default());
    let workload = WorkloadIdentity::new(&WorkloadIdentityConfig::default(), AUDIENCE, api.clone());
    let token = assertion("a", NOW + 600);
    register(&api, &token, "system:serviceaccount:team-a:api");
    let error = workload
        .authenticate(&token, NOW, &metrics())
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::ReviewUnavailable);
}

#[test]
fn what_a_review_proves() {
    let authenticated = |username: &str, audiences: &[&str]| Review::Authenticated {
        username: username.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
    };
    let sa = "system:serviceaccount:team-a:api";
    #[rustfmt::skip]
    let cases = [
        ("a ServiceAccount, our audience", authenticated(sa, &[AUDIENCE]), Ok("team-a/api")),
        ("rejected", Review::Rejected, Err(ErrorKind::InvalidAssertion)),
        ("no audience returned", authenticated(sa, &[]), Err(ErrorKind::InvalidAssertion)),
        ("another audience", authenticated(sa, &["https://kubernetes.default.svc"]), Err(ErrorKind::InvalidAssertion)),
        ("a user, not a ServiceAccount", authenticated("alice", &[AUDIENCE]), Err(ErrorKind::InvalidAssertion)),
        ("a node", authenticated("system:node:worker", &[AUDIENCE]), Err(ErrorKind::InvalidAssertion)),
    ];
    for (what, review, want) in cases {
        let got = reviewed(review, AUDIENCE)
            .map(|account| account.to_string())
            .map_err(|e| e.kind);
        assert_eq!(got, want.map(String::from), "{what}");
    }
}

fn bt(name: &str, sid: &str) -> Arc<BootstrapToken> {
    let mut bt = BootstrapToken::new(
        name,
        BootstrapTokenSpec {
            service_accounts: vec!["api".into()],
            ..BootstrapTokenSpec::for_service(sid)
        },
    );
    bt.metadata.namespace = Some("team-a".into());
    Arc::new(bt)
}

/// What, the candidates, the sid asked for, and the service id chosen.
type ChoiceCase = (
    &'static str,
    Vec<Arc<BootstrapToken>>,
    Option<&'static str>,
    Result<&'static str, ErrorKind>,
);

#[test]
fn choosing_the_mapping() {
    let one = || vec![bt("one", "sid.one")];
    let two = || vec![bt("one", "sid.one"), bt("two", "sid.two")];
    let same_sid = || vec![bt("one", "sid.one"), bt("renamed", "sid.one")];
    #[rustfmt::skip]
    let cases: Vec<ChoiceCase> = vec![
        ("no mapping", vec![], None, Err(ErrorKind::ServiceAccountNotMapped)),
        ("no mapping, sid named", vec![], Some("sid.one"), Err(ErrorKind::ServiceAccountNotMapped)),
        ("one mapping", one(), None, Ok("sid.one")),
        ("one mapping, named", one(), Some("sid.one"), Ok("sid.one")),
        ("one mapping, another sid named", one(), Some("sid.two"), Err(ErrorKind::ServiceAccountNotMapped)),
        ("two mappings, none named", two(), None, Err(ErrorKind::ServiceIdRequired)),
        ("two mappings, one named", two(), Some("sid.two"), Ok("sid.two")),
        ("two objects, one service id", same_sid(), None, Ok("sid.one")),
    ];
    for (what, candidates, sid, want) in cases {
        let got = choose(candidates, sid);
        let got = got
            .as_ref()
            .map(|bt| bt.spec.service_id.as_str())
            .map_err(|e| *e);
        assert_eq!(got, want, "{what}");
    }
}

/// What, the parameters, client_credentials?, a Basic header?, and the assertion found.
type RequestCase = (
    &'static str,
    Params,
    bool,
    bool,
    Result<Option<&'static str>, ErrorKind>,
);

#[test]
fn what_may_come_with_an_assertion() {
    let params = |pairs: &[(&str, &str)]| {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        super::super::params::Params::parse(super::super::params::BodyFormat::Form, body.as_bytes())
            .unwrap()
            .normalized()
    };
    let assertion = ("client_assertion", "a.b.c");
    let jwt = ("client_assertion_type", JWT_BEARER);
    #[rustfmt::skip]
    let cases: Vec<RequestCase> = vec![
        ("no assertion", params(&[("client_id", "x")]), true, false, Ok(None)),
        ("an assertion", params(&[assertion, jwt]), true, false, Ok(Some("a.b.c"))),
        ("with the bootstrap client id", params(&[assertion, jwt, ("client_id", BOOTSTRAP_ID)]), true, false, Ok(Some("a.b.c"))),
        ("type missing", params(&[assertion]), true, false, Err(ErrorKind::MissingAssertion)),
        ("assertion missing", params(&[jwt]), true, false, Err(ErrorKind::MissingAssertion)),
        ("another type", params(&[assertion, ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")]), true, false, Err(ErrorKind::InvalidAssertion)),
        ("and a secret in the body", params(&[assertion, jwt, ("client_id", BOOTSTRAP_ID), ("client_secret", "s")]), true, false, Err(ErrorKind::MultipleClientAuthentication)),
        ("and Basic authentication", params(&[assertion, jwt]), true, true, Err(ErrorKind::MultipleClientAuthentication)),
        ("for a client with a secret", params(&[assertion, jwt, ("client_id", "petstore")]), true, false, Err(ErrorKind::MultipleClientAuthentication)),
        ("another grant", params(&[assertion, jwt]), false, false, Err(ErrorKind::GrantNotAllowed)),
    ];
    for (what, params, client_credentials, basic, want) in cases {
        let got =
            assertion_of(&params, client_credentials, basic, BOOTSTRAP_ID).map_err(|e| e.kind);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn configuration() {
    let parse = |yaml: &str| {
        crate::config::Config::parse(&format!("endpoint:\n  workloadIdentity: {yaml}\n"))
    };
    let config = parse("{enabled: true}").unwrap();
    let wi = &config.endpoint.workload_identity;
    assert!(wi.enabled);
    assert_eq!(wi.audience, None);
    assert!(wi.review_cache.enabled);
    assert_eq!(wi.review_cache.max_age, Duration::from_secs(30));
    assert!(
        !crate::config::Config::default()
            .endpoint
            .workload_identity
            .enabled,
        "off by default"
    );
    for (bad, field) in [
        ("{audience: \"\"}", "endpoint.workloadIdentity.audience"),
        (
            "{reviewCache: {maxAge: 0s}}",
            "endpoint.workloadIdentity.reviewCache.maxAge",
        ),
        (
            "{reviewCache: {maxEntries: 0}}",
            "endpoint.workloadIdentity.reviewCache.maxEntries",
        ),
        ("{enable: true}", "endpoint.workloadIdentity"),
    ] {
        let error = parse(bad).unwrap_err();
        assert!(error.starts_with(field), "{bad}: {error}");
    }
}
