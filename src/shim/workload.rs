//! What the shim needs to know about a kind of workload. Everything else — the annotations, the
//! child BootstrapToken, the events, the pod-template patch — is the same for every kind, so
//! supporting one more kind is one `impl Workload` in a file of its own (like `deployment.rs`),
//! declared in `shim/mod.rs` and listed in [`super::run`] and [`super::CONTROLLERS`].

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::Resource;
use kube::api::PartialObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A namespaced kind with a pod template, such as a Deployment. The kind, the API version and
/// the labels come from [`Resource`]; restart-on-reissue patches
/// `spec.template.metadata.annotations`, which every such kind has.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// This kind's `controller` label in metrics and its name in logs.
    const CONTROLLER: &'static str;

    /// The pod template, whose annotations restart-on-reissue keeps.
    fn pod_template(&self) -> Option<&PodTemplateSpec>;
}

/// The shim's view of a workload: metadata only.
pub type Meta<W> = PartialObjectMeta<W>;
