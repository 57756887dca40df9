//! The token: claims in light-oauth2's order, RS256 signing with keys parsed once, and the key
//! set (active key + keys kept for verification) loaded from Kubernetes Secrets.

mod claims;
mod issue;
mod keys;
mod signer;
pub mod store;

pub use claims::{Claims, NOT_BEFORE_SKEW_SECS, TOKEN_VERSION, VersionClaim, new_jti};
pub use issue::bootstrap_claims;
pub use keys::{KeySet, VerifiedToken, VerifyError};
pub use signer::{KeyError, SigningKey};
