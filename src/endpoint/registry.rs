//! The clients the endpoint knows, with their secrets resolved to verifiers at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::auth::Credentials;
use super::config::{EndpointConfig, Grant};
use super::error::{ErrorKind, OAuthError};
use super::secret::Verifier;

#[derive(Debug)]
pub struct Client {
    pub id: String,
    verifier: Verifier,
    client_credentials: bool,
    bootstrap_token: bool,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub lifetime: Duration,
    /// May revoke tokens issued to other clients.
    pub revoke_any: bool,
}

impl Client {
    pub fn allows(&self, grant: Grant) -> bool {
        match grant {
            Grant::ClientCredentials => self.client_credentials,
            Grant::BootstrapToken => self.bootstrap_token,
        }
    }

    /// Whether one of the presented secret forms is this client's, if that can be told without
    /// the slow hash. Every form is checked, so the time taken does not say which one came close.
    pub fn check_fast(&self, credentials: &Credentials) -> Option<bool> {
        let (mut matched, mut undecided) = (false, false);
        for secret in credentials.secrets() {
            match self.verifier.check_fast(secret) {
                Some(true) => matched = true,
                Some(false) => {}
                None => undecided = true,
            }
        }
        match (matched, undecided) {
            (true, _) => Some(true),
            (false, true) => None,
            (false, false) => Some(false),
        }
    }

    /// The full check of every presented form (PBKDF2: for a blocking thread).
    pub fn check_slow(&self, credentials: &Credentials) -> bool {
        credentials.secrets().fold(false, |matched, secret| {
            self.verifier.check_slow(secret) | matched
        })
    }
}

#[derive(Debug)]
pub struct Clients {
    by_id: HashMap<String, Arc<Client>>,
}

impl Clients {
    /// Resolves every secret (references through `client`); the first failure names its client.
    /// `bootstrap_client_id` is `bootstrap.clientId`, the only client allowed the
    /// `bootstrap_token` grant.
    pub async fn load(
        endpoint: &EndpointConfig,
        bootstrap_client_id: &str,
        client: Option<&kube::Client>,
    ) -> Result<Clients, String> {
        let mut by_id = HashMap::new();
        for (i, entry) in endpoint.clients.iter().enumerate() {
            let grants = &entry.grant_types;
            let bootstrap_token = grants.contains(&Grant::BootstrapToken);
            if bootstrap_token && entry.client_id != bootstrap_client_id {
                return Err(format!(
                    "endpoint.clients[{i}].grantTypes: only the bootstrap client {bootstrap_client_id:?} (bootstrap.clientId) may use {}",
                    Grant::BootstrapToken.name()
                ));
            }
            let verifier = entry
                .client_secret
                .resolve(client)
                .await
                .map_err(|why| format!("endpoint.clients[{i}].clientSecret: {why}"))?;
            by_id.insert(
                entry.client_id.clone(),
                Arc::new(Client {
                    id: entry.client_id.clone(),
                    verifier,
                    client_credentials: grants.contains(&Grant::ClientCredentials),
                    bootstrap_token,
                    scopes: entry.scopes.clone(),
                    audiences: entry.audiences.clone(),
                    lifetime: endpoint.lifetime_of(entry),
                    revoke_any: entry.revoke_any,
                }),
            );
        }
        Ok(Clients { by_id })
    }

    /// The client the credentials name; its secret is checked apart (`guard`).
    pub fn find(&self, credentials: &Credentials) -> Result<&Arc<Client>, OAuthError> {
        credentials
            .ids
            .iter()
            .find_map(|id| self.by_id.get(id))
            .ok_or_else(|| OAuthError::new(ErrorKind::ClientNotFound, "unknown client"))
    }
}
