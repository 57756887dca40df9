//! What signs: anything that holds an RSA key and can make an RS256 (RSASSA-PKCS1-v1_5 SHA-256)
//! signature, in this process or behind a network call (a KMS). Everything above it — the JWS
//! header, base64url, the claim order, the key's certificate — is built once, in this module's
//! siblings, from these three operations.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;

/// Signing failed; the token or certificate is not issued and nothing else changes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("signing with key {kid:?} failed: {reason}")]
pub struct SignError {
    pub kid: String,
    pub reason: String,
}

/// An RSA public key as its two big-endian integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

impl RsaPublicKey {
    /// The JWK (RFC 7517) as light-oauth2's key service and JWKS clients expect it.
    pub fn jwk(&self, kid: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }

    /// The RFC 7638 JWK thumbprint: base64url SHA-256 of `{"e":…,"kty":"RSA","n":…}`, the
    /// required members in lexicographic order, integers without leading zero bytes.
    pub fn thumbprint(&self) -> String {
        let minimal = |bytes: &[u8]| {
            let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
            URL_SAFE_NO_PAD.encode(&bytes[first..])
        };
        let canonical = format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            minimal(&self.e),
            minimal(&self.n)
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`, the bytes
    /// an X.509 SubjectPublicKeyInfo wraps.
    pub fn pkcs1_der(&self) -> Vec<u8> {
        let mut body = der_unsigned_integer(&self.n);
        body.extend(der_unsigned_integer(&self.e));
        der_tlv(0x30, &body)
    }
}

fn der_unsigned_integer(big_endian: &[u8]) -> Vec<u8> {
    let trimmed = match big_endian.iter().position(|&b| b != 0) {
        Some(first) => &big_endian[first..],
        None => &[0][..],
    };
    // A set high bit would read as negative: DER prefixes a zero byte.
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der_tlv(0x02, &content)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap_or_default());
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or_default());
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A key that signs RS256. `sign` is fallible and may be remote; callers report a failure
/// (`Ready=False`, HTTP 503) rather than assume it cannot happen.
pub trait Signer: Send + Sync + std::fmt::Debug {
    fn kid(&self) -> &str;
    fn public_key(&self) -> &RsaPublicKey;
    /// The RSASSA-PKCS1-v1_5 SHA-256 signature of `signing_input`.
    fn sign<'a>(&'a self, signing_input: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SignError>>;

    fn public_jwk(&self) -> serde_json::Value {
        self.public_key().jwk(self.kid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1's example key and thumbprint.
    #[test]
    fn thumbprint_of_the_rfc_7638_example() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let key = RsaPublicKey {
            n: URL_SAFE_NO_PAD.decode(n).unwrap(),
            e: vec![0x01, 0x00, 0x01],
        };
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        let padded = RsaPublicKey {
            n: [&[0u8][..], &key.n].concat(),
            e: key.e.clone(),
        };
        assert_eq!(padded.thumbprint(), key.thumbprint());
    }

    #[test]
    fn pkcs1_der_encodes_integers_minimally_and_unsigned() {
        let key = RsaPublicKey {
            n: vec![0x00, 0x80, 0x01],
            e: vec![0x01, 0x00, 0x01],
        };
        assert_eq!(
            key.pkcs1_der(),
            [
                0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
        let long = RsaPublicKey {
            n: vec![0x7f; 200],
            e: vec![3],
        };
        let der = long.pkcs1_der();
        // 200-byte modulus: long-form lengths on both the INTEGER and the SEQUENCE.
        assert_eq!(&der[..3], [0x30, 0x81, 206]);
        assert_eq!(&der[3..6], [0x02, 0x81, 200]);
    }
}
