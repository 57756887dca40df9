//! TokenReview (authentication.k8s.io/v1): the API server says whose token an assertion is. It is
//! authoritative — it refuses tokens of deleted pods and ServiceAccounts — so it is asked for every
//! assertion not in the cache. Behind a trait, so the endpoint's logic is tested without a cluster.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// A TokenReview that does not answer within this is treated as the API server being down.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    Authenticated {
        username: String,
        /// The audiences of the review the token is valid for (`status.audiences`).
        audiences: Vec<String>,
    },
    /// Not a valid token for the audience: forged, expired, of a deleted object, or for another
    /// audience.
    Rejected,
}

/// The review could not be made; the assertion is neither accepted nor refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReviewError {
    #[error("the API server could not be reached: {0}")]
    Unreachable(String),
    #[error("the API server did not answer within {REVIEW_TIMEOUT:?}")]
    Timeout,
    #[error("the API server refused the TokenReview (check the operator's RBAC): {0}")]
    Refused(String),
}

pub trait TokenReviewer: Send + Sync {
    /// Reviews `token` for `audience`.
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Review, ReviewError>>;
}

/// Reviews through the API server the operator talks to.
pub struct KubeReviewer {
    api: Api<TokenReview>,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> KubeReviewer {
        KubeReviewer {
            api: Api::all(client),
        }
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Review, ReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.into()),
                    audiences: Some(vec![audience.into()]),
                },
                ..Default::default()
            };
            let created = tokio::time::timeout(
                REVIEW_TIMEOUT,
                self.api.create(&PostParams::default(), &review),
            )
            .await
            .map_err(|_| ReviewError::Timeout)?
            .map_err(|error| match error {
                kube::Error::Api(status) if status.code < 500 => {
                    ReviewError::Refused(status.message)
                }
                other => ReviewError::Unreachable(other.to_string()),
            })?;
            let status = created.status.unwrap_or_default();
            match (status.authenticated, status.user.and_then(|u| u.username)) {
                (Some(true), Some(username)) => Ok(Review::Authenticated {
                    username,
                    audiences: status.audiences.unwrap_or_default(),
                }),
                _ => {
                    // The API server's reason says what was wrong with the token; it is about the
                    // token, not the token itself, so it may be logged.
                    tracing::debug!(
                        reason = status.error.as_deref().unwrap_or(""),
                        "TokenReview refused the assertion"
                    );
                    Ok(Review::Rejected)
                }
            }
        })
    }
}
