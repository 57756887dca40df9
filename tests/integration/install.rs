//! Issue 7: the Helm chart and the kustomize base, checked by helm, kubectl and the real API
//! server, and the operator run under the chart's own ServiceAccount.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};

use bootstrap_token_operator::token::{KeySet, LocalKey};
use testenv::{TestEnv, repo_root};

use crate::process::OperatorProcess;
use crate::support::*;

const CHART: &str = "charts/bootstrap-token-operator";

fn helm() -> Command {
    let mut command = Command::new(repo_root().join("bin/helm"));
    command.current_dir(repo_root());
    command
}

/// Runs a command and returns its stdout, failing the test with its stderr.
fn output(command: &mut Command) -> String {
    let out = command
        .output()
        .expect("the command runs (make tools builds bin/helm)");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    output(
        helm()
            .args(["template", release, CHART, "--namespace", namespace])
            .args(args),
    )
}

/// The objects of a multi-document YAML stream, sorted by kind and name.
fn objects(yaml: &str) -> Vec<Value> {
    let mut objects: Vec<Value> = yaml
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect();
    objects.sort_by_key(|o| {
        (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    objects
}

fn kubectl_admin() -> Command {
    let mut command = Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(TestEnv::global().admin_kubeconfig_path());
    command
}

fn kubectl_apply(yaml: &str, dry_run: bool) -> String {
    let mut command = kubectl_admin();
    command.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=helm-test",
        "-f",
        "-",
    ]);
    if dry_run {
        command.arg("--dry-run=server");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn ensure_namespace(name: &str) {
    let api: Api<Namespace> = Api::all(admin().await);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

#[test]
fn chart_lints_and_deploy_holds_its_rendering() {
    output(helm().args(["lint", "--strict", CHART]));
    output(helm().args([
        "lint",
        "--strict",
        CHART,
        "-f",
        &format!("{CHART}/ci/namespaced-values.yaml"),
    ]));
    let release = "bootstrap-token-operator";
    let rendered = render(release, release, &[]);
    let read = |path: &str| std::fs::read_to_string(repo_root().join(path)).unwrap();
    assert!(
        rendered == read("deploy/install.yaml"),
        "deploy/install.yaml drifted from the chart: run `make manifests`"
    );
    // tokenreview.yaml is rendered as with workload identity on: the tests use the feature.
    let workload_identity = "config.endpoint.workloadIdentity.enabled=true";
    for (template, set) in [
        ("clusterrole.yaml", None),
        ("roles.yaml", None),
        ("tokenreview.yaml", Some(workload_identity)),
    ] {
        let show = format!("templates/{template}");
        let mut args = vec!["--show-only", show.as_str()];
        args.extend(set.iter().flat_map(|set| ["--set", set]));
        let role = render(release, release, &args);
        assert!(
            role == read(&format!("deploy/rbac/{template}")),
            "deploy/rbac/{template} drifted from the chart: run `make manifests`"
        );
    }
    assert!(
        read(&format!(
            "{CHART}/files/crds/bootstraptokens.bootstraptoken.dev.yaml"
        )) == read("crds/bootstraptokens.bootstraptoken.dev.yaml"),
        "the chart's CRD drifted from crds/: run `make manifests`"
    );

    // kubectl apply -k deploy/ installs the chart's objects plus the namespace they live in.
    // The TokenReview permission exists only with the feature on, in both modes.
    assert!(!rendered.contains("tokenreviews"), "not granted by default");
    for mode in [
        vec![],
        vec![
            "-f",
            "charts/bootstrap-token-operator/ci/namespaced-values.yaml",
        ],
    ] {
        let mut args = mode.clone();
        args.extend(["--set", workload_identity]);
        let granted: Vec<Value> = objects(&render(release, release, &args))
            .into_iter()
            .filter(|o| o.to_string().contains("tokenreviews"))
            .collect();
        assert_eq!(granted.len(), 1, "{mode:?}: one ClusterRole grants it");
        assert_eq!(
            granted[0]["rules"],
            json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]),
            "{mode:?}: create on tokenreviews, nothing more"
        );
    }

    let kustomized = objects(&output(
        Command::new("kubectl")
            .args(["kustomize"])
            .arg(repo_root().join("deploy")),
    ));
    let mut expected = objects(&rendered);
    expected.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release}}));
    expected.sort_by_key(|o| {
        (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    let names = |objects: &[Value]| {
        objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&kustomized), names(&expected));
    for (got, want) in kustomized.iter().zip(&expected) {
        assert!(
            got == want,
            "kubectl kustomize deploy/ differs from the chart in {}/{}",
            want["kind"],
            want["metadata"]["name"]
        );
    }

    // values.schema.json rejects mistakes at install time.
    for bad in [
        ["--set", "replicaCount=0"],
        ["--set", "config.versionClaim=v2"],
        ["--set", "unknownKey=1"],
        ["--set", "config.revocation.issuedPerService=0"],
    ] {
        let out = helm()
            .args(["template", "x", CHART])
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} must be rejected");
    }
}

#[tokio::test]
async fn every_rendered_object_passes_server_side_dry_run_in_both_modes() {
    let release_ns = TestEnv::global().namespace("chart-dry").await;
    let cluster_mode = render("dry-cluster", &release_ns, &[]);
    let out = kubectl_apply(&cluster_mode, true);
    for kind in [
        "clusterrole",
        "deployment",
        "service",
        "configmap",
        "poddisruptionbudget",
        "customresourcedefinition",
    ] {
        assert!(out.contains(kind), "dry-run covered {kind}: {out}");
    }
    for ns in ["team-a", "team-b"] {
        ensure_namespace(ns).await;
    }
    let namespaced = render(
        "dry-ns",
        &release_ns,
        &["-f", &format!("{CHART}/ci/namespaced-values.yaml")],
    );
    assert!(
        !namespaced.contains("kind: ClusterRole"),
        "namespaced mode has no ClusterRole"
    );
    let out = kubectl_apply(&namespaced, true);
    assert!(out.contains("role.rbac.authorization.k8s.io/dry-ns-bootstrap-token-operator serverside-applied (server dry run)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_issues_tokens_under_the_charts_service_account() {
    let env = TestEnv::global();
    let release_ns = env.namespace("chart-e2e").await;
    let watched = env.namespace("chart-e2e-apps").await;
    let release = "e2e";
    // Install what the chart renders, except the Deployment: no kubelet runs its Pods here, so
    // the test runs the same binary itself, as the chart's ServiceAccount.
    let rendered = render(release, &release_ns, &[]);
    let without_pods: Vec<&str> = rendered
        .split("\n---")
        .filter(|doc| !doc.contains("\nkind: Deployment"))
        .collect();
    kubectl_apply(&without_pods.join("\n---"), false);
    let token = output(kubectl_admin().args([
        "-n",
        &release_ns,
        "create",
        "token",
        "e2e-bootstrap-token-operator",
        "--duration=1h",
    ]));
    let kubeconfig = service_account_kubeconfig(&release_ns, token.trim());
    let config = output(kubectl_admin().args([
        "-n",
        &release_ns,
        "get",
        "configmap",
        "e2e-bootstrap-token-operator",
        "-o",
        "jsonpath={.data.config\\.yaml}",
    ]));
    let config_path = env.dir().join(format!("{release_ns}-config.yaml"));
    std::fs::write(&config_path, config).unwrap();

    let operator = OperatorProcess::spawn_as(
        &kubeconfig,
        &release_ns,
        &watched,
        "chart-sa",
        &["--config", config_path.to_str().unwrap()],
    );
    apply_bt(
        &watched,
        bt_manifest("e2e", json!({"serviceId": "com.networknt.petstore-1.0.0"})),
    )
    .await;
    let bt = eventually_within(
        std::time::Duration::from_secs(60),
        "Ready under the chart's ServiceAccount",
        || async {
            let bt = Api::<bootstrap_token_operator::resource::BootstrapToken>::namespaced(
                admin().await,
                &watched,
            )
            .get("e2e")
            .await
            .ok()?;
            (bt.ready_condition()?.status == "True").then_some(bt)
        },
    )
    .await;
    let key = secret(&release_ns, "bootstrap-token-signing-key")
        .await
        .expect("key Secret in the release namespace");
    let keys = KeySet::new(
        LocalKey::from_pem("100", &key.data.unwrap()["key.pem"].0)
            .unwrap()
            .named(None),
        vec![],
    );
    let token = token_of(
        &secret(&watched, "e2e-bootstrap-token")
            .await
            .expect("token Secret"),
    );
    let verified = keys.verify(&token).expect("token verifies");
    assert_eq!(
        verified.claims.sid.as_deref(),
        Some("com.networknt.petstore-1.0.0")
    );
    assert_eq!(
        bt.status.unwrap().token_id.as_deref(),
        Some(verified.claims.jti.as_str())
    );
    drop(operator);
}

/// A kubeconfig for the ServiceAccount token, trusting the test API server's CA.
fn service_account_kubeconfig(namespace: &str, token: &str) -> PathBuf {
    let env = TestEnv::global();
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(env.admin_kubeconfig_path()).unwrap())
            .unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa", "namespace": namespace}}],
        "current-context": "sa",
    });
    let path = env.dir().join(format!("{namespace}-sa.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// Issue 11 item 7: the operator's identity, as deploy/rbac/ grants it, holds Leases only in its
/// own namespace (a compromised pod cannot take over kube-system's leader elections) and has no
/// verb its code does not call.
#[tokio::test]
async fn the_operator_may_do_what_its_code_does_and_nothing_more() {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let own = TestEnv::global().namespace("rbac-own").await;
    let reviews: Api<SubjectAccessReview> = Api::all(admin().await);
    let allowed = |namespace: String, group: &str, resource: &str, verb: &str| {
        let reviews = reviews.clone();
        let (group, verb) = (group.to_string(), verb.to_string());
        let (resource, subresource) = match resource.split_once('/') {
            Some((resource, sub)) => (resource.to_string(), Some(sub.to_string())),
            None => (resource.to_string(), None),
        };
        async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(testenv::OPERATOR_USER.into()),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(namespace),
                        group: Some(group),
                        resource: Some(resource),
                        subresource,
                        verb: Some(verb),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            reviews
                .create(&PostParams::default(), &review)
                .await
                .expect("SubjectAccessReview")
                .status
                .is_some_and(|status| status.allowed)
        }
    };
    let lease = "coordination.k8s.io";
    // The Roles of a namespace just created reach the authorizer's cache a moment later; a
    // refusal can only turn into a grant, so the positive checks wait for it.
    for namespace in [own.as_str(), "bootstrap-token-operator"] {
        for verb in ["get", "create", "patch"] {
            eventually(
                &format!("{verb} its Lease in its own namespace {namespace}"),
                || {
                    let allowed = allowed(namespace.into(), lease, "leases", verb);
                    async move { allowed.await.then_some(()) }
                },
            )
            .await;
        }
    }
    for verb in ["get", "create", "patch", "update", "delete", "list"] {
        assert!(
            !allowed("kube-system".into(), lease, "leases", verb).await,
            "no {verb} on Leases in kube-system"
        );
    }
    let events = "events.k8s.io";
    assert!(allowed(own.clone(), events, "events", "create").await);
    for namespace in [own.as_str(), "kube-system"] {
        assert!(
            !allowed(namespace.into(), events, "events", "patch").await,
            "events are created, never patched ({namespace})"
        );
    }
    assert!(
        !allowed(
            own.clone(),
            "bootstraptoken.dev",
            "bootstraptokens/status",
            "get"
        )
        .await,
        "status is written by server-side apply, never read through the subresource"
    );
    // Records of the bootstrap_token grant: written by server-side apply (patch, which creates
    // too), watched, deleted; in the operator's own namespace only.
    let group = "bootstraptoken.dev";
    for verb in ["list", "watch", "create", "patch", "delete"] {
        assert!(
            allowed(own.clone(), group, "issuedtokens", verb).await,
            "{verb} on IssuedTokens in its own namespace"
        );
    }
    for verb in ["get", "update", "deletecollection"] {
        assert!(
            !allowed(own.clone(), group, "issuedtokens", verb).await,
            "no {verb} on IssuedTokens: the code never calls it"
        );
    }
    assert!(
        !allowed("kube-system".into(), group, "issuedtokens", "create").await,
        "IssuedTokens only in its own namespace"
    );
    // Workload identity (deploy/rbac/ renders it on): TokenReviews are created, nothing else
    // about authentication is.
    let authentication = "authentication.k8s.io";
    assert!(allowed(String::new(), authentication, "tokenreviews", "create").await);
    for verb in ["get", "list", "delete"] {
        assert!(
            !allowed(String::new(), authentication, "tokenreviews", verb).await,
            "no {verb} on tokenreviews"
        );
    }
    assert!(
        !allowed(own.clone(), "", "serviceaccounts/token", "create").await,
        "the operator reviews ServiceAccount tokens, it never requests them"
    );
    assert!(
        !allowed(
            String::new(),
            "authorization.k8s.io",
            "subjectaccessreviews",
            "create"
        )
        .await,
        "no SubjectAccessReviews"
    );
}
