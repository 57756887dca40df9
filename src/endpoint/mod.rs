//! The OAuth 2.0 token endpoint (placeholder until the endpoint lands).

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {}

impl EndpointConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
