//! The token endpoint over real HTTP on 127.0.0.1: seeds replayed with curl, real OAuth 2.0
//! client libraries, independent JWT verification, every error row, TLS, re-use, a property
//! test over request parsing, and the README's Security promises (connection floods, guessing,
//! slow hashes). No Kubernetes needed: keys come from `KeyProvider::from_keys`.

mod clients;
mod errors;
mod guessing;
mod harness;
mod keys;
mod kms;
mod limits;
#[path = "../common/kms.rs"]
mod local_kms;
mod props;
mod reuse;
mod revocation;
mod seeds;
#[path = "../common/signer.rs"]
mod signer;
mod signing;
mod tls;
