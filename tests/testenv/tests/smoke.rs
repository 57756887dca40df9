//! Self-test of the control plane: the API server stores objects, RBAC denies the operator what
//! it was not granted, and the garbage collector follows ownerReferences.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use testenv::{OPERATOR_USER, TestEnv, repo_root};

#[tokio::test]
async fn namespace_and_secret_round_trip() {
    let env = TestEnv::global();
    let ns = env.namespace("smoke-secret").await;
    assert!(ns.starts_with("smoke-secret-"), "{ns}");

    let client = env.admin_client().await;
    Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client, &ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("round-trip".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(b"s3cr3t".to_vec()),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let read = secrets.get("round-trip").await.unwrap();
    assert_eq!(read.data, secret.data);
    assert_eq!(read.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn operator_is_denied_what_it_was_not_granted() {
    let env = TestEnv::global();
    let client = env.operator_client().await;
    let has_rbac = std::fs::read_dir(repo_root().join("deploy/rbac"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        });
    let result = if has_rbac {
        // Whatever deploy/rbac grants, the operator never creates namespaces.
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some("operator-".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await
            .map(|_| ())
    } else {
        Api::<Secret>::all(client)
            .list(&ListParams::default())
            .await
            .map(|_| ())
    };
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            // 403, not 401: the client certificate authenticated as the operator's user.
            assert!(e.message.contains(OPERATOR_USER), "{}", e.message);
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_collector_deletes_dependents() {
    let env = TestEnv::global();
    let ns = env.namespace("smoke-gc").await;
    let api = Api::<ConfigMap>::namespaced(env.admin_client().await, &ns);
    let config_map = |name: &str, owner: Option<OwnerReference>| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        ..Default::default()
    };

    let owner = api
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .unwrap();
    let reference = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    api.create(
        &PostParams::default(),
        &config_map("dependent", Some(reference)),
    )
    .await
    .unwrap();

    api.delete("owner", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt("dependent").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "dependent ConfigMap still present 60 s after its owner was deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
