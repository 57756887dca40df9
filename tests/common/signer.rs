//! A signer whose failures the test switches on and off, standing in for a key behind an API
//! (a KMS) that becomes unreachable and comes back. Shared by the test binaries by `#[path]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bootstrap_token_operator::token::{LocalKey, RsaPublicKey, SignError, Signer};
use futures::future::BoxFuture;

#[derive(Debug)]
pub struct SwitchableSigner {
    key: LocalKey,
    failing: AtomicBool,
}

impl SwitchableSigner {
    pub fn new(kid: &str) -> Arc<Self> {
        Arc::new(SwitchableSigner {
            key: LocalKey::generate(kid).expect("RSA key generation"),
            failing: AtomicBool::new(false),
        })
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl Signer for SwitchableSigner {
    fn kid(&self) -> &str {
        self.key.kid()
    }

    fn public_key(&self) -> &RsaPublicKey {
        self.key.public_key()
    }

    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignError>> {
        if self.failing.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(SignError {
                kid: self.kid().to_string(),
                reason: "the key service is unreachable (test)".into(),
            })));
        }
        self.key.sign(signing_input)
    }
}
