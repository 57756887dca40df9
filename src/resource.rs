//! The `BootstrapToken` custom resource (`bootstraptoken.dev/v1alpha1`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "bootstraptoken.dev";
/// Field manager and `app.kubernetes.io/managed-by` value of everything the operator writes.
pub const MANAGER: &str = "bootstrap-token-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Annotations, on the BootstrapToken (reissue) and on the Secret (the rest).
pub mod annotations {
    /// Any new value forces a new token.
    pub const REISSUE: &str = "bootstraptoken.dev/reissue";
    /// Any new value revokes the current token at once and forces a new one (issued when
    /// `bootstrap.minReissueInterval` allows).
    pub const REVOKE: &str = "bootstraptoken.dev/revoke";
    pub const SERVICE_ID: &str = "bootstraptoken.dev/service-id";
    pub const TOKEN_ID: &str = "bootstraptoken.dev/token-id";
    pub const KEY_ID: &str = "bootstraptoken.dev/key-id";
    pub const EXPIRES_AT: &str = "bootstraptoken.dev/expires-at";
    /// A digest of the configured claims the token was signed with (iss, aud, client_id, scope,
    /// version): the operator sees a configuration change without reading the token.
    pub const CLAIMS: &str = "bootstraptoken.dev/claims-digest";

    /// Every annotation of the operator starts with this; the workload shim looks only at
    /// Deployments, StatefulSets and DaemonSets that carry one.
    pub const PREFIX: &str = "bootstraptoken.dev/";
    /// On a workload: `"true"` derives an empty or absent [`SERVICE_ID`] from the labels
    /// `app.kubernetes.io/name` and `app.kubernetes.io/version`; `"false"` turns the shim off.
    pub const ENABLED: &str = "bootstraptoken.dev/enabled";
    /// On a workload: the Secret's name; default `<workload>-bootstrap-token`.
    pub const SECRET_NAME: &str = "bootstraptoken.dev/secret-name";
    /// On a workload: `"true"` sets the pod-template annotation [`TOKEN_ID`] to each new
    /// token's id, so the pods roll when the token changes.
    pub const RESTART_ON_REISSUE: &str = "bootstraptoken.dev/restart-on-reissue";
}

/// On every token Secret: its deletion waits until the operator has revoked the token in it.
pub const FINALIZER: &str = "bootstraptoken.dev/revoke-on-delete";

/// The Secret data key holding the compact JWT.
pub const TOKEN_KEY: &str = "token";

/// A long-lived bootstrap token for one service, kept in a Secret.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "bootstraptoken.dev",
    version = "v1alpha1",
    kind = "BootstrapToken",
    namespaced,
    shortname = "bt",
    status = "BootstrapTokenStatus",
    derive = "PartialEq",
    doc = "A long-lived bootstrap token (RS256 JWT) for one service, kept in a Secret.",
    printcolumn(name = "Service ID", type_ = "string", json_path = ".spec.serviceId"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.renewBefore) || !has(self.lifetime) || duration(self.renewBefore) < duration(self.lifetime)",
    "message": "renewBefore must be shorter than lifetime"
}]))]
pub struct BootstrapTokenSpec {
    /// The service the token is for; becomes the `sid` claim.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[!-~]+$"))]
    pub service_id: String,
    /// Name of the Secret that receives the token; default `<metadata.name>-bootstrap-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub secret_name: Option<String>,
    /// Validity of the token as a Go duration (`87600h`); default from the operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = crate::duration::PATTERN), extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s')",
        "message": "lifetime must be at least 1s"
    }]))]
    pub lifetime: Option<String>,
    /// Re-issue when less than this remains (Go duration); default a third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = crate::duration::PATTERN))]
    pub renew_before: Option<String>,
    /// Labels and annotations copied onto the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
    /// ServiceAccounts of this namespace whose projected tokens the token endpoint exchanges
    /// for a short-lived token of this service (workload identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub service_accounts: Vec<String>,
    /// `false`: keep no long-lived token in a Secret at all (workload identity only); a Secret
    /// the operator kept for this object before is deleted.
    #[serde(default = "default_store_token", skip_serializing_if = "is_true")]
    pub store_token: bool,
}

impl BootstrapTokenSpec {
    /// A token for `service_id` with every other field at its default.
    pub fn for_service(service_id: &str) -> Self {
        BootstrapTokenSpec {
            service_id: service_id.into(),
            secret_name: None,
            lifetime: None,
            renew_before: None,
            secret_template: None,
            service_accounts: Vec::new(),
            store_token: true,
        }
    }
}

/// Secret and ServiceAccount names: a DNS subdomain (RFC 1123), as the API server validates them.
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

fn default_store_token() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Keys under `bootstraptoken.dev/` are the operator's: the API server refuses them here, and the
/// controller ignores any that got in before this rule existed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, !k.startsWith('bootstraptoken.dev/'))",
        "message": "keys under bootstraptoken.dev/ are reserved for the operator"
    }]))]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, !k.startsWith('bootstraptoken.dev/'))",
        "message": "keys under bootstraptoken.dev/ are reserved for the operator"
    }]))]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapTokenStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// `kid` of the key that signed the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `jti` of the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// `iat` of the current token: the operator issues no new one within
    /// `bootstrap.minReissueInterval` of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the operator will re-issue the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
}

impl BootstrapToken {
    pub fn secret_name(&self) -> String {
        self.spec.secret_name.clone().unwrap_or_else(|| {
            format!(
                "{}-bootstrap-token",
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }

    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
    }
}

/// The grammar of `spec.serviceId` (the schema above: 1 to 253 characters matching
/// `^[!-~]+$`, printable ASCII without spaces), for every other place a service id comes from.
pub fn valid_service_id(id: &str) -> bool {
    (1..=253).contains(&id.len()) && id.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// The CRD as YAML, exactly what `make manifests` writes to `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut yaml = String::from(
        "# Generated by `bootstrap-token-operator crd` (make manifests); do not edit.\n",
    );
    yaml.push_str(&serde_yaml::to_string(&BootstrapToken::crd()).expect("the CRD serialises"));
    yaml
}

#[cfg(test)]
mod tests {
    use super::valid_service_id;

    #[test]
    fn service_id_grammar() {
        let longest = "a".repeat(253);
        for good in ["com.networknt.petstore-1.0.0", "a", "!~", &longest] {
            assert!(valid_service_id(good), "{good:?} should be valid");
        }
        let too_long = "a".repeat(254);
        for bad in [
            "",
            " ",
            "com.a b",
            "com.a\u{202E}b",
            "com.a\u{2028}b",
            "com.a\u{200B}b",
            "\u{FEFF}com.a",
            "com.\u{e9}t\u{e9}",
            "com.a\tb",
            "com.a\nb",
            "com.a\u{7F}",
            &too_long,
        ] {
            assert!(!valid_service_id(bad), "{bad:?} should be refused");
        }
    }

    /// The function and the CRD's schema state the same grammar.
    #[test]
    fn service_id_grammar_is_the_schemas() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(super::BootstrapToken::crd()).unwrap();
        let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["serviceId"];
        assert_eq!(field["minLength"], 1, "{field}");
        assert_eq!(field["maxLength"], 253, "{field}");
        assert_eq!(field["pattern"], "^[!-~]+$", "{field}");
    }
    #[test]
    fn crd_file_is_generated_from_the_type() {
        let on_disk = include_str!("../crds/bootstraptokens.bootstraptoken.dev.yaml");
        assert!(
            on_disk == super::crd_yaml(),
            "crds/ drifted from the Rust type: run `make manifests`"
        );
    }
}
