//! Server-side apply of the repository's manifests, whatever their kind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::{OPERATOR_USER, Result};

const FIELD_MANAGER: &str = "testenv";

/// Applies every document of every manifest file in `dir` (sorted by name); returns what it
/// applied. A missing directory applies nothing.
pub(crate) async fn apply_dir(client: &Client, dir: &Path) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for file in manifest_files(dir)? {
        let text = std::fs::read_to_string(&file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject =
                serde_yaml::from_value(value).map_err(|e| format!("{}: {e}", file.display()))?;
            let obj = apply(client, obj)
                .await
                .map_err(|e| format!("applying {}: {e}", file.display()))?;
            applied.push(obj);
        }
    }
    Ok(applied)
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_manifest = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        let is_kustomization = path
            .file_stem()
            .is_some_and(|s| s.eq_ignore_ascii_case("kustomization"));
        if path.is_file() && is_manifest && !is_kustomization {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

async fn apply(client: &Client, mut obj: DynamicObject) -> Result<DynamicObject> {
    let types = obj
        .types
        .as_ref()
        .ok_or("document without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, caps) = discovery::pinned_kind(client, &gvk).await?;
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or("document without metadata.name")?;
    let api = if caps.scope == Scope::Namespaced {
        let ns = obj
            .metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        ensure_namespace(client, ns).await?;
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
    } else {
        Api::<DynamicObject>::all_with(client.clone(), &resource)
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = api.patch(&name, &params, &Patch::Apply(&obj)).await?;
    applied.types = obj.types;
    Ok(applied)
}

pub(crate) async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// Waits until every CustomResourceDefinition among `objs` is Established.
pub(crate) async fn wait_established(client: &Client, objs: &[DynamicObject]) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    for obj in objs
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
    {
        let name = obj.name_any();
        loop {
            let crd = api.get(&name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("CRD {name} not Established after 30s").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Binds every ClusterRole (cluster-wide) and Role (in its namespace) among `objs` to the
/// operator's user.
pub(crate) async fn bind_to_operator(client: &Client, objs: &[DynamicObject]) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let subjects = Some(vec![Subject {
        kind: "User".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        name: OPERATOR_USER.into(),
        namespace: None,
    }]);
    for obj in objs {
        let role_ref = RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind(obj).into(),
            name: obj.name_any(),
        };
        let name = format!("testenv:{}", obj.name_any());
        match kind(obj) {
            "ClusterRole" => {
                let binding = ClusterRoleBinding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    role_ref,
                    subjects: subjects.clone(),
                };
                Api::<ClusterRoleBinding>::all(client.clone())
                    .patch(&name, &params, &Patch::Apply(&binding))
                    .await?;
            }
            "Role" => {
                let ns = obj.namespace().unwrap_or_else(|| "default".into());
                let binding = RoleBinding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    },
                    role_ref,
                    subjects: subjects.clone(),
                };
                Api::<RoleBinding>::namespaced(client.clone(), &ns)
                    .patch(&name, &params, &Patch::Apply(&binding))
                    .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copies every Role among `objs` into `namespace` and binds it to the operator's user: the
/// operator's own-namespace rights, for a namespace that stands for the operator's own.
pub(crate) async fn grant_roles_in(
    client: &Client,
    objs: &[DynamicObject],
    namespace: &str,
) -> Result<()> {
    for role in objs.iter().filter(|obj| kind(obj) == "Role") {
        let copy = DynamicObject {
            types: role.types.clone(),
            metadata: ObjectMeta {
                name: role.metadata.name.clone(),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            data: role.data.clone(),
        };
        let applied = apply(client, copy).await?;
        bind_to_operator(client, &[applied]).await?;
    }
    Ok(())
}

fn kind(obj: &DynamicObject) -> &str {
    obj.types.as_ref().map_or("", |t| t.kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEnv;

    const MANIFESTS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.testenv.example
spec:
  group: testenv.example
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
---
# an empty document is skipped
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: testenv-widget-reader
rules:
- apiGroups: [testenv.example]
  resources: [widgets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: testenv-configmap-reader
  namespace: testenv-apply
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list]
"#;

    /// The startup path on manifests of our own: CRD established, roles bound to the operator.
    #[tokio::test]
    async fn applies_any_kind_and_binds_roles_to_the_operator() {
        let env = TestEnv::global();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), MANIFESTS).unwrap();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            "resources: [all.yaml]\n",
        )
        .unwrap();
        let admin = env.admin_client().await;
        let applied = apply_dir(&admin, dir.path()).await.unwrap();
        assert_eq!(applied.len(), 3);
        wait_established(&admin, &applied).await.unwrap();
        bind_to_operator(&admin, &applied).await.unwrap();

        let operator = env.operator_client().await;
        let gvk = GroupVersionKind::gvk("testenv.example", "v1", "Widget");
        let (widgets, _) = discovery::pinned_kind(&operator, &gvk).await.unwrap();
        let widgets = Api::<DynamicObject>::all_with(operator.clone(), &widgets);
        let config_maps =
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(operator, "testenv-apply");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let granted = widgets.list(&Default::default()).await.is_ok()
                && config_maps.list(&Default::default()).await.is_ok();
            if granted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "roles not effective for the operator"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
