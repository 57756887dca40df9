//! Error answers: RFC 6749 §5.2 (`error`, `error_description`) and, in the same JSON object,
//! light-4j's Status fields (`statusCode`, `code`, `message`, `description`, `severity`), so
//! both kinds of client read them.
//!
//! Codes from light-oauth2 where it has the case: ERR12000 unparsable body, ERR12001 grant,
//! ERR12002 no credentials, ERR12003 bad Authorization header, ERR12004 bad Basic credentials,
//! ERR12007 wrong secret, ERR12014 unknown client, ERR12024 grant not allowed for the client,
//! ERR12027 scope mismatch, ERR12028 header and body name different clients. Cases light-oauth2
//! does not have use ERR129xx, listed in [`ErrorKind::code`].

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    UnparsableBody,
    MissingGrantType,
    UnsupportedGrantType,
    MissingCredentials,
    InvalidAuthorizationHeader,
    InvalidBasicCredentials,
    WrongSecret,
    ClientNotFound,
    GrantNotAllowed,
    ScopeMismatch,
    ClientIdMismatch,
    InvalidServiceId,
    AudienceNotAllowed,
    ServiceIdNotAllowed,
    KeysUnavailable,
    SigningUnavailable,
    MethodNotAllowed,
    UnsupportedMediaType,
    BodyTooLarge,
    NotFound,
    TooManyAttempts,
    RequestTimeout,
    InvalidAssertion,
    MissingAssertion,
    ServiceAccountNotMapped,
    ServiceIdRequired,
    MultipleClientAuthentication,
    ReviewUnavailable,
    MissingToken,
    TokenNotOwned,
    RevocationUnavailable,
    RecordUnavailable,
}

impl ErrorKind {
    /// HTTP status, RFC 6749 `error`, light-4j `code` and `message`.
    fn parts(self) -> (StatusCode, &'static str, &'static str, &'static str) {
        use ErrorKind::*;
        match self {
            UnparsableBody => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12000",
                "UNABLE_TO_PARSE_FORM_DATA",
            ),
            MissingGrantType => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12001",
                "UNSUPPORTED_GRANT_TYPE",
            ),
            UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "ERR12001",
                "UNSUPPORTED_GRANT_TYPE",
            ),
            MissingCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12002",
                "MISSING_AUTHORIZATION_HEADER",
            ),
            InvalidAuthorizationHeader => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12003",
                "INVALID_AUTHORIZATION_HEADER",
            ),
            InvalidBasicCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12004",
                "INVALID_BASIC_CREDENTIALS",
            ),
            WrongSecret => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12007",
                "UNAUTHORIZED_CLIENT",
            ),
            // light-oauth2 answers 404; RFC 6749 wants 401 so clients do not tell "unknown" from "wrong".
            ClientNotFound => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12014",
                "CLIENT_NOT_FOUND",
            ),
            GrantNotAllowed => (
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "ERR12024",
                "NOT_TRUSTED_CLIENT",
            ),
            ScopeMismatch => (
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "ERR12027",
                "MISMATCH_SCOPE",
            ),
            ClientIdMismatch => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12028",
                "MISMATCH_CLIENT_ID",
            ),
            InvalidServiceId => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12901",
                "INVALID_SERVICE_ID",
            ),
            // 403 `access_denied`, as the Auth0-style server of seed 003 answers a forbidden audience.
            AudienceNotAllowed => (
                StatusCode::FORBIDDEN,
                "access_denied",
                "ERR12902",
                "AUDIENCE_NOT_ALLOWED",
            ),
            ServiceIdNotAllowed => (
                StatusCode::FORBIDDEN,
                "access_denied",
                "ERR12903",
                "SERVICE_ID_NOT_ALLOWED",
            ),
            KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "ERR12904",
                "SIGNING_KEY_UNAVAILABLE",
            ),
            SigningUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "ERR12920",
                "SIGNING_UNAVAILABLE",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "ERR12905",
                "METHOD_NOT_ALLOWED",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "ERR12906",
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "ERR12907",
                "REQUEST_BODY_TOO_LARGE",
            ),
            NotFound => (StatusCode::NOT_FOUND, "not_found", "ERR12908", "NOT_FOUND"),
            // RFC 6585 §4; `slow_down` as RFC 8628 names "ask less often".
            TooManyAttempts => (
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "ERR12909",
                "TOO_MANY_ATTEMPTS",
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "ERR12910",
                "REQUEST_TIMEOUT",
            ),
            // Workload identity (RFC 7523 §2.2 client assertions): a refused assertion is a
            // failed client authentication (RFC 7521 §4.2.1).
            InvalidAssertion => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12940",
                "INVALID_CLIENT_ASSERTION",
            ),
            MissingAssertion => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12941",
                "MISSING_CLIENT_ASSERTION",
            ),
            ServiceAccountNotMapped => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12942",
                "SERVICE_ACCOUNT_NOT_MAPPED",
            ),
            ServiceIdRequired => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12943",
                "SERVICE_ID_REQUIRED",
            ),
            // RFC 6749 §2.3: one authentication method per request.
            MultipleClientAuthentication => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "ERR12944",
                "MULTIPLE_CLIENT_AUTHENTICATION",
            ),
            ReviewUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "ERR12945",
                "TOKEN_REVIEW_UNAVAILABLE",
            ),
            MissingToken => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ERR12911",
                "MISSING_TOKEN",
            ),
            // RFC 7009 §2.1: a token issued to another client is refused, with an error.
            TokenNotOwned => (
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "ERR12912",
                "TOKEN_NOT_OWNED",
            ),
            RevocationUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "ERR12913",
                "REVOCATION_UNAVAILABLE",
            ),
            // A grant token is handed out only once it is recorded.
            RecordUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "ERR12914",
                "TOKEN_RECORD_UNAVAILABLE",
            ),
        }
    }

    /// The RFC 6749 `error` value, also the `outcome` label of the request metric.
    pub fn error(self) -> &'static str {
        self.parts().1
    }

    pub fn code(self) -> &'static str {
        self.parts().2
    }
}

/// Headers of every token endpoint answer, success or error: never cached (RFC 6749 §5.1).
pub const NO_STORE_JSON: [(HeaderName, &str); 3] = [
    (header::CONTENT_TYPE, "application/json"),
    (header::CACHE_CONTROL, "no-store"),
    (header::PRAGMA, "no-cache"),
];

/// One error answer. The description never carries a secret or a token, nor what an
/// unauthenticated request sent: only fixed text and configured names.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub kind: ErrorKind,
    pub description: String,
    /// `realm` for the `WWW-Authenticate` header of 401 answers.
    pub realm: Option<String>,
    /// Seconds for the `Retry-After` header (429 answers).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(kind: ErrorKind, description: impl Into<String>) -> Self {
        OAuthError {
            kind,
            description: description.into(),
            realm: None,
            retry_after: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    error: &'static str,
    #[serde(rename = "error_description")]
    error_description: &'a str,
    status_code: u16,
    code: &'static str,
    message: &'static str,
    description: &'a str,
    severity: &'static str,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, error, code, message) = self.kind.parts();
        let body = Body {
            error,
            error_description: &self.description,
            status_code: status.as_u16(),
            code,
            message,
            description: &self.description,
            severity: "ERROR",
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, NO_STORE_JSON, json).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let realm = self.realm.as_deref().unwrap_or("oauth2");
            // The realm is validated at config load: no quotes, no control characters.
            if let Ok(value) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may never come: the connection is not reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
