//! Signing-key rotation through the real API server, on a short schedule, with two operator
//! processes: the JWKS (polled over HTTP on every replica) publishes the next key before any
//! token carries its kid, every BootstrapToken moves to it, the old key leaves the JWKS only
//! after, and killing the leader in the middle does not stop it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use bootstrap_token_operator::resource::BootstrapToken;
use bootstrap_token_operator::token::rotation::{
    ACTIVE_FROM, KEY_LABEL, PHASE, PUBLISH_FROM, RETIRED_AT,
};
use bootstrap_token_operator::token::{LocalKey, Signer};
use k8s_openapi::api::core::v1::Secret;
use testenv::TestEnv;

use crate::process::{
    Replica, config_file, lease_holder, spawn_replica as spawn, wait_ready_replica,
};
use crate::revocation::active;
use crate::support::*;

/// A new key every 30 s, published 10 s before it signs; old tokens revoked 2 s after their
/// re-issue; endpoint tokens live 3 s, so a superseded key drains 3 s after its successor signs.
const CONFIG: &str = r#"
signing:
  rotation: {every: 30s, prepublish: 10s, reissuePerMinute: 120}
revocation:
  reissueGrace: 2s
  sweepInterval: 1s
endpoint:
  accessTokenLifetime: 3s
"#;
const TOKENS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The whole rotation, a leader failover (the Lease lasts 15 s) included.
const ROTATION: Duration = Duration::from_secs(120);

/// The kids in the replica's JWKS, over HTTP; `None` while it does not answer.
async fn jwks(replica: &Replica) -> Option<BTreeSet<String>> {
    let reply = reqwest::get(format!("http://{}/oauth2/keys", replica.endpoint))
        .await
        .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&reply.bytes().await.ok()?).ok()?;
    Some(
        body["keys"]
            .as_array()?
            .iter()
            .filter_map(|key| key["kid"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Each BootstrapToken's `status.keyId`, by name.
async fn kids(namespace: &str) -> HashMap<String, String> {
    Api::<BootstrapToken>::namespaced(admin().await, namespace)
        .list(&ListParams::default())
        .await
        .expect("listing BootstrapTokens")
        .items
        .into_iter()
        .filter_map(|bt| {
            let kid = bt.status.as_ref()?.key_id.clone()?;
            Some((bt.metadata.name?, kid))
        })
        .collect()
}

/// The kid in the header of the token each BootstrapToken's Secret holds.
async fn secret_kids(namespace: &str) -> Vec<String> {
    secret_tokens(namespace)
        .await
        .iter()
        .map(|token| {
            let header = jsonwebtoken::decode_header(token).expect("a JWT");
            header.kid.expect("a kid")
        })
        .collect()
}

/// One BootstrapToken per name in [`TOKENS`], each with its own service id, all Ready.
async fn apply_tokens(namespace: &str) {
    for name in TOKENS {
        apply_bt(
            namespace,
            bt_manifest(name, json!({"serviceId": format!("com.example.{name}")})),
        )
        .await;
    }
    for name in TOKENS {
        wait_ready(namespace, name).await;
    }
}

/// The token each BootstrapToken's Secret holds.
async fn secret_tokens(namespace: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for name in TOKENS {
        let held = secret(namespace, &format!("{name}-bootstrap-token"))
            .await
            .expect("the token Secret");
        tokens.push(token_of(&held));
    }
    tokens
}

/// An administrator's key Secret `name`, labelled as a signing key; its kid.
async fn add_key(namespace: &str, name: &str) -> String {
    let key = LocalKey::generate("x").unwrap().named(None);
    let pem = key.to_pkcs8_pem().unwrap();
    let added: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {KEY_LABEL: "true"}},
        "stringData": {"key.pem": pem},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin().await, namespace)
        .create(&PostParams::default(), &added)
        .await
        .expect("the administrator's key Secret");
    key.kid().to_string()
}

async fn key_secrets(namespace: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(admin().await, namespace)
        .list(&ListParams::default().labels(KEY_LABEL))
        .await
        .expect("listing key Secrets")
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_publishes_first_moves_every_token_then_retires_across_a_failover() {
    let ns = TestEnv::global().namespace("rotation").await;
    let config = config_file(&ns, CONFIG);
    let a = spawn(&ns, "a", &config);
    let b = spawn(&ns, "b", &config);
    wait_ready_replica(&a).await;
    wait_ready_replica(&b).await;
    apply_tokens(&ns).await;
    let before = kids(&ns).await;
    let old = before["alpha"].clone();
    assert!(before.values().all(|kid| *kid == old), "{before:?}");
    assert_eq!(jwks(&a).await.unwrap(), BTreeSet::from([old.clone()]));

    // Until the next key is published, every poll of the JWKS must come before any token that
    // carries its kid: checked on both replicas, JWKS first, then the tokens.
    let mut replicas = vec![a, b];
    let mut published: BTreeSet<String> = BTreeSet::from([old.clone()]);
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + ROTATION;
    let new = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for every BootstrapToken on the new key: {:?}",
            kids(&ns).await
        );
        for replica in &replicas {
            if let Some(kids) = jwks(replica).await {
                published.extend(kids);
            }
        }
        let now = kids(&ns).await;
        for kid in now.values().chain(&secret_kids(&ns).await) {
            assert!(
                published.contains(kid),
                "a token carries kid {kid} before any replica published it ({published:?})"
            );
        }
        if let Some(next) = published.iter().find(|kid| **kid != old).cloned() {
            if !killed && let Some(leader) = lease_holder(&ns).await {
                // The next key is published and signs nothing yet: the leader dies now.
                let i = replicas
                    .iter()
                    .position(|r| r.process.identity == leader)
                    .expect("the leader is one of ours");
                replicas[i].process.kill();
                replicas.remove(i);
                killed = true;
            }
            if now.len() == TOKENS.len() && now.values().all(|kid| *kid == next) {
                break next;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(killed, "the leader was killed during the rotation");
    let survivor = replicas.pop().unwrap();
    assert!(
        jwks(&survivor).await.unwrap().contains(&old),
        "the old key is still published while tokens it signed are in their grace period"
    );
    assert_eq!(secret_kids(&ns).await, vec![new.clone(); TOKENS.len()]);

    // The old key leaves the JWKS, and only once no BootstrapToken names it.
    eventually_within(ROTATION, "the old key out of the JWKS", || async {
        let published = jwks(&survivor).await?;
        let now = kids(&ns).await;
        if published.contains(&old) {
            return None;
        }
        assert!(
            now.values().all(|kid| *kid != old),
            "the old key left the JWKS while a token still names it: {now:?}"
        );
        assert!(published.contains(&new), "{published:?}");
        Some(())
    })
    .await;

    // A replica started now follows the state in the cluster: the same key set.
    let restarted = spawn(&ns, "c", &config);
    wait_ready_replica(&restarted).await;
    let published = jwks(&restarted).await.unwrap();
    assert!(
        published.contains(&new) && !published.contains(&old),
        "{published:?}"
    );

    // Every step is in the key Secrets' events and the phase metric.
    let secrets = key_secrets(&ns).await;
    let name_of = |kid: &str| {
        secrets
            .iter()
            .find(|s| {
                let pem = &s.data.as_ref().unwrap()["key.pem"].0;
                bootstrap_token_operator::token::LocalKey::from_pem("x", pem)
                    .map(|k| k.named(None))
                    .is_ok_and(|k| bootstrap_token_operator::token::Signer::kid(&k) == kid)
            })
            .and_then(|s| s.metadata.name.clone())
            .unwrap_or_else(|| panic!("a key Secret for {kid}"))
    };
    let reasons = |events: Vec<(String, String, String)>| -> Vec<String> {
        events.into_iter().map(|(_, reason, _)| reason).collect()
    };
    let new_events = reasons(events_regarding(&ns, "Secret", &name_of(&new)).await);
    for reason in [
        "SigningKeyCreated",
        "SigningKeyPublished",
        "SigningKeyActivated",
    ] {
        assert!(
            new_events.iter().any(|r| r == reason),
            "{reason}: {new_events:?}"
        );
    }
    let old_events = reasons(events_regarding(&ns, "Secret", &name_of(&old)).await);
    for reason in ["SigningKeyDraining", "SigningKeyRetired"] {
        assert!(
            old_events.iter().any(|r| r == reason),
            "{reason}: {old_events:?}"
        );
    }
    let sample = format!("bootstrap_token_signing_key_phase{{kid=\"{new}\",phase=\"active\"}}");
    eventually("the phase metric", || async {
        (survivor.process.metric(&sample).await? == 1.0).then_some(())
    })
    .await;
}

/// Manual rotation: a prepublish of 2 s, one re-issue a second, old tokens revoked 1 s after
/// their re-issue.
const MANUAL: &str = r#"
signing:
  rotation: {prepublish: 2s, reissuePerMinute: 60}
revocation:
  reissueGrace: 1s
  sweepInterval: 1s
endpoint:
  accessTokenLifetime: 1s
"#;

/// An administrator adds a labelled key Secret: the leader schedules it, and from there it is
/// the same path as a scheduled rotation (published, then signing, tokens moved, old retired).
#[tokio::test]
async fn a_key_secret_an_administrator_adds_follows_the_same_path() {
    let ns = TestEnv::global().namespace("rotation-manual").await;
    let operator = Operator::start(&ns, MANUAL).await;
    apply_tokens(&ns).await;
    let old = kids(&ns).await["alpha"].clone();
    let new = add_key(&ns, "next-key").await;

    // Scheduled by the leader, then published before it signs.
    let scheduled = eventually("the new key scheduled", || async {
        let secret = secret(&ns, "next-key").await?;
        let notes = secret.metadata.annotations?;
        Some((
            notes.get(PUBLISH_FROM)?.clone(),
            notes.get(ACTIVE_FROM)?.clone(),
        ))
    })
    .await;
    assert!(scheduled.0 < scheduled.1, "{scheduled:?}");
    eventually("the new key in the JWKS", || async {
        let keys = operator.keys().await;
        keys.get(&new)?;
        Some(())
    })
    .await;
    eventually("every BootstrapToken on the new key", || async {
        let now = kids(&ns).await;
        (now.len() == TOKENS.len() && now.values().all(|kid| *kid == new)).then_some(())
    })
    .await;
    // One a second at most: the three re-issues span at least two seconds.
    let mut reissued_at = Vec::new();
    for name in TOKENS {
        let status = Api::<BootstrapToken>::namespaced(admin().await, &ns)
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap();
        let at: jiff::Timestamp = status.issued_at.unwrap().parse().unwrap();
        reissued_at.push(at.as_second());
    }
    reissued_at.sort();
    assert!(
        reissued_at[2] - reissued_at[0] >= 2,
        "re-issues paced at reissuePerMinute: {reissued_at:?}"
    );
    eventually("the old key retired", || async {
        let base = secret(&ns, "bootstrap-token-signing-key").await?;
        base.metadata.annotations?.get(RETIRED_AT)?;
        Some(())
    })
    .await;
    eventually("the old key out of the JWKS", || async {
        let keys = operator.keys().await;
        (keys.get(&old).is_none() && keys.active().kid() == new).then_some(())
    })
    .await;
    let events = events_regarding(&ns, "Secret", "next-key").await;
    for reason in [
        "SigningKeyScheduled",
        "SigningKeyPublished",
        "SigningKeyActivated",
    ] {
        assert!(
            events.iter().any(|(_, r, _)| r == reason),
            "{reason}: {events:?}"
        );
    }
    let reissued = events_for(&ns, "alpha").await;
    assert!(
        reissued
            .iter()
            .any(|(reason, note)| reason == "Reissued" && note.contains("rotated")),
        "{reissued:?}"
    );
    operator.stop().await;
}

/// A prepublish long enough to delete a published key before it signs; the admin client
/// introspects (its secret is "admin-secret", as in the revocation tests).
const RESTORE: &str = r#"
signing:
  rotation: {prepublish: 8s, reissuePerMinute: 120}
revocation:
  reissueGrace: 1s
  sweepInterval: 1s
endpoint:
  accessTokenLifetime: 1s
  clients:
    - clientId: admin
      clientSecret: {hash: "sha256:16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01"}
"#;

async fn delete_key_secret(namespace: &str, name: &str) {
    Api::<Secret>::namespaced(admin().await, namespace)
        .delete(name, &Default::default())
        .await
        .expect("deleting the key Secret");
}

/// Waits for the leader to put back the key Secret `deleted` (as last read) as it was: the same
/// labels, annotations (its phase and times) and key.
async fn restored(namespace: &str, deleted: &Secret) -> Secret {
    let name = deleted.name_any();
    let restored = eventually(&format!("{name} restored"), || async {
        secret(namespace, &name)
            .await
            .filter(|s| s.metadata.uid != deleted.metadata.uid)
    })
    .await;
    assert_eq!(restored.metadata.labels, deleted.metadata.labels, "{name}");
    assert_eq!(
        restored.metadata.annotations, deleted.metadata.annotations,
        "{name}: its phase and times"
    );
    assert_eq!(restored.data, deleted.data, "{name}: the same key");
    restored
}

/// A key Secret deleted before its key is retired comes back from the leader's memory with its
/// phase and times, and the tokens its key signed never stop verifying; the configured key's
/// Secret, deleted once retired, comes back still retired (it stays out of the JWKS).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_key_secret_comes_back_from_memory_with_its_phase() {
    let ns = TestEnv::global().namespace("rotation-restore").await;
    let config = config_file(&ns, RESTORE);
    let a = spawn(&ns, "a", &config);
    wait_ready_replica(&a).await;
    apply_tokens(&ns).await;
    let old = kids(&ns).await["alpha"].clone();
    let new = add_key(&ns, "next-key").await;
    let phase_is = |phase: &'static str| {
        let ns = ns.clone();
        async move {
            let secret = secret(&ns, "next-key").await?;
            (secret.annotations().get(PHASE).map(String::as_str) == Some(phase)).then_some(secret)
        }
    };

    // Published, signing nothing yet.
    let published = eventually("the new key published", || phase_is("published")).await;
    assert!(published.annotations().contains_key(PUBLISH_FROM));
    assert!(jwks(&a).await.unwrap().contains(&new));
    delete_key_secret(&ns, "next-key").await;
    restored(&ns, &published).await;
    assert!(jwks(&a).await.unwrap().contains(&new), "still published");

    // It signs at its time and every token moves to it; deleted then, its tokens still verify.
    eventually_within(ROTATION, "every BootstrapToken on the new key", || async {
        let now = kids(&ns).await;
        (now.len() == TOKENS.len() && now.values().all(|kid| *kid == new)).then_some(())
    })
    .await;
    let signing = eventually("the new key noted active", || phase_is("active")).await;
    assert!(signing.annotations().contains_key(ACTIVE_FROM));
    let tokens = secret_tokens(&ns).await;
    let ids = kids(&ns).await;
    delete_key_secret(&ns, "next-key").await;
    for token in &tokens {
        assert!(active(&a, token).await, "verifies while the Secret is gone");
    }
    restored(&ns, &signing).await;
    for token in &tokens {
        assert!(active(&a, token).await, "verifies once restored");
    }
    assert!(jwks(&a).await.unwrap().contains(&new));
    assert_eq!(secret_tokens(&ns).await, tokens, "nothing re-issued");
    assert_eq!(kids(&ns).await, ids);
    let restored_events = |name: &'static str| {
        let ns = ns.clone();
        async move {
            events_regarding(&ns, "Secret", name)
                .await
                .into_iter()
                .filter(|(type_, reason, _)| type_ == "Warning" && reason == "SigningKeyRestored")
                .count()
        }
    };
    eventually("two SigningKeyRestored events", || async {
        (restored_events("next-key").await == 2).then_some(())
    })
    .await;
    let restored_total = || {
        a.process
            .metric("bootstrap_token_signing_key_restored_total")
    };
    assert_eq!(restored_total().await, Some(2.0));

    // The configured key, drained and retired, is put back retired: out of the JWKS.
    let retired = eventually_within(ROTATION, "the old key retired", || async {
        let base = secret(&ns, "bootstrap-token-signing-key").await?;
        base.annotations().contains_key(RETIRED_AT).then_some(base)
    })
    .await;
    delete_key_secret(&ns, "bootstrap-token-signing-key").await;
    restored(&ns, &retired).await;
    assert!(!jwks(&a).await.unwrap().contains(&old));
    eventually("the restore counted", || async {
        (restored_total().await? == 3.0).then_some(())
    })
    .await;
}
