//! Issue 14: the signing key lives in a KMS (local-kms, speaking the AWS KMS API, reached through
//! the official SDK); the operator signs through it against the real API server.

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use bootstrap_token_operator::token::store::KeyProvider;
use testenv::{LocalKms, TestEnv};

use crate::local_kms::Kms;
use crate::process::OperatorProcess;
use crate::support::*;

const CONFIG: &str = r#"
bootstrap:
  scope: ["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"]
"#;

/// The default name of the key Secret, which a KMS-signing operator never reads nor creates.
const KEY_SECRET: &str = "bootstrap-token-signing-key";

/// Verifies `token` with nothing but the public key the KMS hands out.
fn verify_with_kms_public_key(token: &str, public_pem: &str) -> Value {
    let key = DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("an RSA public key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["urn:com.networknt"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the token verifies with the KMS's public key")
        .claims
}

/// A BootstrapToken becomes Ready with a token signed in the KMS; the KMS stops: the object says
/// `SigningUnavailable` and keeps its token; the KMS comes back: it recovers by itself.
#[tokio::test(flavor = "multi_thread")]
async fn signs_through_the_kms_and_rides_out_an_outage() {
    let kms = Kms::start().await;
    let key_id = kms.create_signing_key().await;
    let public_pem = kms.public_key_pem(&key_id).await;
    let ns = TestEnv::global().namespace("kms").await;
    let operator = Operator::start_with_provider(
        &ns,
        CONFIG,
        KeyProvider::from_kms(kms.source("100", &key_id)),
    )
    .await;

    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.svc"})),
    )
    .await;
    let first = wait_ready(&ns, "svc").await;
    let issued = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    let claims = verify_with_kms_public_key(&issued, &public_pem);
    assert_eq!(claims["sid"], "com.example.svc");
    assert_eq!(
        jsonwebtoken::decode_header(&issued).unwrap().kid.as_deref(),
        Some("100")
    );
    assert_eq!(operator.keys().await.verify(&issued).unwrap().kid, "100");
    assert!(
        secret(&ns, KEY_SECRET).await.is_none(),
        "no key Secret is created when the key is in a KMS"
    );

    kms.server.stop();
    reissue(&ns, "svc", "1").await;
    signing_unavailable_keeps_the_token(&ns, &first, &issued, "KMS Sign").await;

    kms.server.restart().await.expect("local-kms restarts");
    let recovered = wait_reason(&ns, "svc", "Issued").await;
    let token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    assert_ne!(
        token, issued,
        "the requested re-issue happens once the KMS is back"
    );
    assert_eq!(
        recovered.status.unwrap().token_id.as_deref(),
        verify_with_kms_public_key(&token, &public_pem)["jti"].as_str()
    );
    operator.stop().await;
}

/// A key the KMS does not have, or one that cannot sign RS256, is a configuration error the
/// BootstrapToken reports with the key's id and the reason; nothing is issued.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_is_reported_by_id_and_reason() {
    let kms = Kms::start().await;
    let cases = [
        (
            kms.create_key(KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt)
                .await,
            "key usage is ENCRYPT_DECRYPT, not SIGN_VERIFY",
        ),
        (
            kms.create_key(KeySpec::EccNistP256, KeyUsageType::SignVerify)
                .await,
            "key spec is ECC_NIST_P256",
        ),
        (
            "00000000-0000-0000-0000-000000000000".to_string(),
            "NotFoundException",
        ),
    ];
    for (key_id, why) in cases {
        let ns = TestEnv::global().namespace("kms-wrong").await;
        let operator = Operator::start_with_provider(
            &ns,
            CONFIG,
            KeyProvider::from_kms(kms.source("100", &key_id)),
        )
        .await;
        apply_bt(
            &ns,
            bt_manifest("svc", json!({"serviceId": "com.example.svc"})),
        )
        .await;
        let failed = wait_reason(&ns, "svc", "KeyUnavailable").await;
        let message = &failed.ready_condition().unwrap().message;
        assert!(message.contains(&key_id), "{key_id}: {message}");
        assert!(message.contains(why), "{key_id}: {message}");
        assert!(secret(&ns, "svc-bootstrap-token").await.is_none());
        operator.stop().await;
    }
}

/// The binary with `signing.kms` in its config file and credentials from the environment (the
/// standard AWS chain): not ready while the KMS is unreachable, then ready by itself, signing,
/// no key Secret; with a wrong key, `/readyz` says why.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_signs_with_the_kms_in_its_config() {
    let kms = Kms::start().await;
    let good = kms.create_signing_key().await;
    let wrong = kms
        .create_key(KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt)
        .await;
    let env = TestEnv::global();
    let credentials = [
        ("AWS_ACCESS_KEY_ID", "AKIDLOCALKMSTEST"),
        ("AWS_SECRET_ACCESS_KEY", "local-kms-ignores-this-secret"),
        // Only the environment: no profile or instance metadata lookups.
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let start = |key_id: &str, ns: &str| {
        let config = env.dir().join(format!("kms-{ns}.yaml"));
        let kms_yaml = format!(
            "signing:\n  kms:\n    keyId: {key_id}\n    region: {}\n    endpoint: {}\n",
            LocalKms::REGION,
            kms.server.endpoint()
        );
        std::fs::write(&config, format!("{CONFIG}{kms_yaml}")).expect("writing the config file");
        OperatorProcess::spawn_with_env(
            env.operator_kubeconfig_path(),
            ns,
            ns,
            "kms-0",
            &["--config", &config.display().to_string()],
            &credentials,
        )
    };

    // The KMS is unreachable when the operator starts: not ready, and /readyz says why, until
    // the KMS answers.
    kms.server.stop();
    let ns = env.namespace("kms-binary").await;
    let operator = start(&good, &ns);
    let (status, body) = eventually("/readyz saying the KMS is unreachable", || async {
        operator
            .get("/readyz")
            .await
            .filter(|(_, body)| body.contains("GetPublicKey failed"))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&good), "{body}");
    kms.server.restart().await.expect("local-kms restarts");
    eventually("/readyz with the KMS key loaded", || async {
        (operator.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    apply_bt(
        &ns,
        bt_manifest("svc", json!({"serviceId": "com.example.svc"})),
    )
    .await;
    wait_ready(&ns, "svc").await;
    let token = token_of(&secret(&ns, "svc-bootstrap-token").await.unwrap());
    verify_with_kms_public_key(&token, &kms.public_key_pem(&good).await);
    assert!(secret(&ns, KEY_SECRET).await.is_none());
    drop(operator);

    let ns = env.namespace("kms-binary-wrong").await;
    let operator = start(&wrong, &ns);
    let (status, body) = eventually("/readyz saying why the key is unusable", || async {
        operator
            .get("/readyz")
            .await
            .filter(|(_, body)| body.contains(&wrong))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not SIGN_VERIFY"), "{body}");
    assert!(secret(&ns, KEY_SECRET).await.is_none());
}
