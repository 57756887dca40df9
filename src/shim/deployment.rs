use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::Workload;

impl Workload for Deployment {
    /// The shim's label since it handled Deployments only; dashboards rely on it.
    const CONTROLLER: &'static str = "deployment";

    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|spec| &spec.template)
    }
}
