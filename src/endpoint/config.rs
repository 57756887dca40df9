//! The `endpoint:` section of the configuration file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::SecretSource;
use crate::duration;

/// The grant types the endpoint serves; a new grant is one more variant, and the compiler
/// points at every place that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    ClientCredentials,
    BootstrapToken,
}

impl Grant {
    pub const ALL: [Grant; 2] = [Grant::ClientCredentials, Grant::BootstrapToken];

    /// The `grant_type` value (RFC 6749), also the metric label.
    pub fn name(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::BootstrapToken => "bootstrap_token",
        }
    }

    pub fn from_name(name: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|grant| grant.name() == name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// Off: the operator runs the controller only.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_address")]
    pub address: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Paths that answer like `/oauth2/token`, for clients written against other servers.
    #[serde(default)]
    pub extra_token_paths: Vec<String>,
    /// Base URL clients reach the endpoint at, for the RFC 8414 discovery document. Without it
    /// the document is not served (404): nothing a request says is used to build it.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `realm` of the `WWW-Authenticate` header on 401 answers.
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Lifetime of client_credentials tokens unless a client sets its own; light-oauth2's 10 minutes.
    #[serde(default = "default_access_lifetime", with = "duration::serde_go")]
    pub access_token_lifetime: Duration,
    #[serde(default)]
    pub reuse: ReuseConfig,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    #[serde(default)]
    pub connections: ConnectionsConfig,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Slow client-secret hashes (PBKDF2) verified at once, each on a blocking thread, never on
    /// the async workers; further checks wait their turn.
    #[serde(default = "default_hash_concurrency")]
    pub hash_concurrency: usize,
    /// Pods authenticate with their projected ServiceAccount token (off by default).
    #[serde(default)]
    pub workload_identity: super::workload::WorkloadIdentityConfig,
}

/// What one connection may hold: a peer that sends nothing, a partial request or a short body
/// is closed after these, and connections past `max` are closed as soon as they are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Open connections at once (TLS handshakes included).
    #[serde(default = "default_max_connections")]
    pub max: usize,
    /// From the first byte of a request until its head (request line and headers) is complete.
    #[serde(default = "default_timeout", with = "duration::serde_go")]
    pub header_read_timeout: Duration,
    /// From the end of the head until the whole body has arrived.
    #[serde(default = "default_timeout", with = "duration::serde_go")]
    pub body_timeout: Duration,
    /// How long a connection may wait with no request: after it is accepted (or its handshake
    /// completes) and after each answer.
    #[serde(default = "default_idle_timeout", with = "duration::serde_go")]
    pub idle_timeout: Duration,
    /// The TLS handshake, from the connection's acceptance.
    #[serde(default = "default_timeout", with = "duration::serde_go")]
    pub tls_handshake_timeout: Duration,
}

/// Online guessing (RFC 6749 §2.3.1): failed authentications are counted per client id and
/// source address (an IPv6 source by its /64); past `burst` of them, that client is answered
/// 429 from that source, without checking the secret, until one more attempt has accrued.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Failed authentications allowed in a row.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// One more attempt accrues per interval, up to `burst`.
    #[serde(default = "default_throttle_interval", with = "duration::serde_go")]
    pub interval: Duration,
    /// (client, source) pairs remembered at once; the least recently failed is forgotten first.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are read again; a changed pair is served to new connections.
    #[serde(default = "default_reload_interval", with = "duration::serde_go")]
    pub reload_interval: Duration,
}

/// Serving a still-fresh token again instead of signing a new one (seed 003's behaviour).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReuseConfig {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// A cached token is served only while at least this much of it remains; default half the
    /// token's lifetime, so re-use happens whatever the lifetime is.
    #[serde(default, deserialize_with = "duration::serde_go::option")]
    pub min_remaining: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    pub client_secret: SecretSource,
    /// `client_credentials` and/or `bootstrap_token` (the latter for `bootstrap.clientId` only).
    #[serde(default = "default_grant_types")]
    pub grant_types: Vec<Grant>,
    /// Scopes a client_credentials token may carry; a request without `scope` gets all of them.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences the client may ask for besides the configured `audience`.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default, deserialize_with = "duration::serde_go::option")]
    pub token_lifetime: Option<Duration>,
    /// An admin client: may revoke any token at `/oauth2/revoke`, not only its own.
    #[serde(default)]
    pub revoke_any: bool,
}

fn default_enabled() -> bool {
    true
}
fn default_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn default_port() -> u16 {
    6882
}
fn default_realm() -> String {
    "bootstrap-token-operator".into()
}
fn default_access_lifetime() -> Duration {
    Duration::from_secs(600)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_grant_types() -> Vec<Grant> {
    vec![Grant::ClientCredentials]
}
fn default_hash_concurrency() -> usize {
    1
}
fn default_max_connections() -> usize {
    1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_burst() -> u32 {
    5
}
fn default_throttle_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_tracked() -> usize {
    10_000
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            enabled: true,
            address: default_address(),
            port: default_port(),
            extra_token_paths: Vec::new(),
            public_url: None,
            realm: default_realm(),
            tls: None,
            access_token_lifetime: default_access_lifetime(),
            reuse: ReuseConfig::default(),
            clients: Vec::new(),
            connections: ConnectionsConfig::default(),
            throttle: ThrottleConfig::default(),
            hash_concurrency: default_hash_concurrency(),
            workload_identity: Default::default(),
        }
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: default_max_connections(),
            header_read_timeout: default_timeout(),
            body_timeout: default_timeout(),
            idle_timeout: default_idle_timeout(),
            tls_handshake_timeout: default_timeout(),
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            burst: default_burst(),
            interval: default_throttle_interval(),
            max_tracked: default_max_tracked(),
        }
    }
}

impl Default for ReuseConfig {
    fn default() -> Self {
        ReuseConfig {
            enabled: true,
            min_remaining: None,
        }
    }
}

/// Paths the router serves itself; an extra token path must not shadow them.
const RESERVED_PATHS: [&str; 5] = [
    "/oauth2/token",
    "/oauth2/keys",
    "/oauth2/key",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
];

fn is_scope_word(scope: &str) -> bool {
    !scope.is_empty() && !scope.contains(char::is_whitespace)
}

/// Timeouts shorter than a second would cut off ordinary clients; longer than an hour would let
/// stalled connections pile up.
const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

impl ConnectionsConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.max) {
            return Err("max: must be from 1 to 1000000".into());
        }
        for (field, value) in [
            ("headerReadTimeout", self.header_read_timeout),
            ("bodyTimeout", self.body_timeout),
            ("idleTimeout", self.idle_timeout),
            ("tlsHandshakeTimeout", self.tls_handshake_timeout),
        ] {
            if !TIMEOUT_RANGE.contains(&value) {
                return Err(format!("{field}: must be from 1s to 1h"));
            }
        }
        Ok(())
    }
}

impl ThrottleConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.burst) {
            return Err("burst: must be from 1 to 1000".into());
        }
        if !TIMEOUT_RANGE.contains(&self.interval) {
            return Err("interval: must be from 1s to 1h".into());
        }
        if !(1..=10_000_000).contains(&self.max_tracked) {
            return Err("maxTracked: must be from 1 to 10000000".into());
        }
        Ok(())
    }
}

impl EndpointConfig {
    /// Checks what serde cannot; the message names the field below `endpoint.` and says why.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (i, path) in self.extra_token_paths.iter().enumerate() {
            let plain = path.starts_with('/')
                && path.len() > 1
                && !path.contains(['{', '}', '*', '?', '#', ' '])
                && !path.ends_with('/');
            if !plain {
                return Err(format!(
                    "extraTokenPaths[{i}]: {path:?} must be an absolute path like /oauth/token, without a trailing slash, wildcards or query"
                ));
            }
            if RESERVED_PATHS.contains(&path.as_str()) || path.starts_with("/oauth2/key/") {
                return Err(format!("extraTokenPaths[{i}]: {path:?} is already served"));
            }
            if self.extra_token_paths[..i].contains(path) {
                return Err(format!("extraTokenPaths[{i}]: {path:?} is listed twice"));
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!(
                "publicUrl: {url:?} must start with https:// or http://"
            ));
        }
        if self.realm.is_empty()
            || self.realm.contains(['"', '\\'])
            || self.realm.chars().any(char::is_control)
        {
            return Err(
                "realm: must be non-empty, without quotes, backslashes or control characters"
                    .into(),
            );
        }
        if let Some(tls) = &self.tls
            && tls.reload_interval < Duration::from_millis(100)
        {
            return Err("tls.reloadInterval: must be at least 100ms".into());
        }
        if self.access_token_lifetime < Duration::from_secs(1) {
            return Err("accessTokenLifetime: must be at least 1s".into());
        }
        self.connections
            .validate()
            .map_err(|why| format!("connections.{why}"))?;
        self.throttle
            .validate()
            .map_err(|why| format!("throttle.{why}"))?;
        if !(1..=64).contains(&self.hash_concurrency) {
            return Err("hashConcurrency: must be from 1 to 64".into());
        }
        self.workload_identity
            .validate()
            .map_err(|why| format!("workloadIdentity.{why}"))?;
        for (i, client) in self.clients.iter().enumerate() {
            self.validate_client(client)
                .map_err(|why| format!("clients[{i}].{why}"))?;
            if self.clients[..i]
                .iter()
                .any(|c| c.client_id == client.client_id)
            {
                return Err(format!(
                    "clients[{i}].clientId: {:?} is listed twice",
                    client.client_id
                ));
            }
        }
        Ok(())
    }

    fn validate_client(&self, client: &ClientConfig) -> Result<(), String> {
        // A `:` could never come through a raw `id:secret` Basic header intact.
        if client.client_id.is_empty()
            || client.client_id.contains(':')
            || client.client_id.chars().any(char::is_control)
        {
            return Err("clientId: must be non-empty, without ':' or control characters".into());
        }
        client
            .client_secret
            .validate()
            .map_err(|why| format!("clientSecret.{why}"))?;
        if client.grant_types.is_empty() {
            return Err("grantTypes: must name at least one grant".into());
        }
        if let Some(i) = client.scopes.iter().position(|s| !is_scope_word(s)) {
            return Err(format!(
                "scopes[{i}]: a scope is one non-empty word without whitespace"
            ));
        }
        if let Some(i) = client.audiences.iter().position(String::is_empty) {
            return Err(format!("audiences[{i}]: must not be empty"));
        }
        let lifetime = self.lifetime_of(client);
        if lifetime < Duration::from_secs(1) {
            return Err("tokenLifetime: must be at least 1s".into());
        }
        if self.reuse.enabled
            && let Some(min) = self.reuse.min_remaining
            && min >= lifetime
        {
            // Otherwise no token of this client would ever be served twice.
            return Err(format!(
                "tokenLifetime: {} is not longer than reuse.minRemaining {}, so its tokens would never be re-used",
                duration::format(lifetime),
                duration::format(min)
            ));
        }
        Ok(())
    }

    pub fn lifetime_of(&self, client: &ClientConfig) -> Duration {
        client.token_lifetime.unwrap_or(self.access_token_lifetime)
    }

    /// How much of a cached token must remain for it to be served again.
    pub fn reuse_min_remaining(&self, lifetime: Duration) -> Duration {
        self.reuse.min_remaining.unwrap_or(lifetime / 2)
    }
}
