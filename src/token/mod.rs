//! The token: claims in light-oauth2's order, the [`Issuer`] that makes every token, the
//! [`Signer`] trait (a key in memory, or one behind an API), JWS assembly and verification over
//! the key set, each key's certificate, and the key set loaded from Kubernetes Secrets.

mod certificate;
mod claims;
mod issuer;
mod keys;
pub mod kms;
mod local;
pub mod rotation;
mod signer;
mod signing;
pub mod store;

pub use certificate::{CertificateError, self_signed_pem};
pub use claims::{Claims, NOT_BEFORE_SKEW_SECS, TOKEN_VERSION, VersionClaim, new_jti};
#[cfg(test)]
pub(crate) use issuer::test_issuer;
pub use issuer::{
    AccessRequest, BootstrapConfig, BootstrapRequest, IssueError, Issued, IssuedLabels, Issuer,
    MAX_LIFETIME, TokenProfile,
};
pub use keys::{Key, KeySet, VerifiedToken, VerifyError};
pub use local::{KeyError, LocalKey};
pub use signer::{RsaPublicKey, SignError, Signer};
pub use signing::{KmsConfig, PreviousKey, RotationConfig, SigningConfig};
