//! Client authentication (RFC 6749 §2.3.1): HTTP Basic or `client_id`/`client_secret` in the body.
//!
//! The standard says id and secret are form-urlencoded before base64; many clients skip that
//! (seed 004 sends a secret with `+` and `$` as is), so both the decoded and the raw form are
//! tried. A secret sent in the body may itself still be percent-encoded (seed 002 writes
//! `s3cr3Tp%40ass` through `--data-urlencode`), so its percent-decoded form is tried as well.
//! Every candidate is derived from what the client sent, so this finds no secret the client
//! does not know.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

use super::error::{ErrorKind, OAuthError};

/// Who the request says it is, in each form worth trying, most likely first.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub ids: Vec<String>,
    secrets: Vec<String>,
}

impl Credentials {
    pub fn secrets(&self) -> impl Iterator<Item = &[u8]> {
        self.secrets.iter().map(String::as_bytes)
    }

    /// From the `Authorization` header (if any) and the body's `client_id`/`client_secret`.
    pub fn extract(
        authorization: Option<&[u8]>,
        body_id: Option<&str>,
        body_secret: Option<&str>,
    ) -> Result<Credentials, OAuthError> {
        let Some(header) = authorization else {
            return from_body(body_id, body_secret);
        };
        let credentials = from_basic(header)?;
        if let Some(body_id) = body_id
            && !credentials.ids.iter().any(|id| id == body_id)
        {
            return Err(OAuthError::new(
                ErrorKind::ClientIdMismatch,
                "client_id in the body names a different client than the Authorization header",
            ));
        }
        Ok(credentials)
    }
}

fn from_body(id: Option<&str>, secret: Option<&str>) -> Result<Credentials, OAuthError> {
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Credentials {
            ids: vec![id.to_string()],
            secrets: with_variant(secret.to_string(), percent_decode(secret, false)),
        }),
        (None, None) => Err(OAuthError::new(
            ErrorKind::MissingCredentials,
            "client authentication is required: an Authorization: Basic header, or client_id and client_secret in the body",
        )),
        (Some(_), None) => Err(OAuthError::new(
            ErrorKind::MissingCredentials,
            "client_secret is missing",
        )),
        (None, Some(_)) => Err(OAuthError::new(
            ErrorKind::MissingCredentials,
            "client_id is missing",
        )),
    }
}

fn from_basic(header: &[u8]) -> Result<Credentials, OAuthError> {
    let invalid_header = || {
        OAuthError::new(
            ErrorKind::InvalidAuthorizationHeader,
            "the Authorization header must be: Basic <credentials>",
        )
    };
    let header = std::str::from_utf8(header)
        .map_err(|_| invalid_header())?
        .trim();
    let (scheme, rest) = header.split_once(' ').ok_or_else(invalid_header)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid_header());
    }
    let rest = rest.trim();
    let invalid_basic = || {
        OAuthError::new(
            ErrorKind::InvalidBasicCredentials,
            "Basic credentials must be base64 of client_id:client_secret",
        )
    };
    // base64 has no ':'; a value with one is a raw `id:secret`, as light-oauth2 reads it (seed 001).
    let pair: Cow<str> = if rest.contains(':') {
        Cow::Borrowed(rest)
    } else {
        let bytes = STANDARD
            .decode(rest)
            .or_else(|_| STANDARD_NO_PAD.decode(rest))
            .map_err(|_| invalid_basic())?;
        Cow::Owned(String::from_utf8(bytes).map_err(|_| invalid_basic())?)
    };
    let (id, secret) = pair.split_once(':').ok_or_else(invalid_basic)?;
    if id.is_empty() || secret.is_empty() {
        return Err(OAuthError::new(
            ErrorKind::InvalidAuthorizationHeader,
            "Basic credentials must carry a non-empty client_id and client_secret",
        ));
    }
    Ok(Credentials {
        ids: with_variant(percent_decode(id, true), id.to_string()),
        secrets: with_variant(percent_decode(secret, true), secret.to_string()),
    })
}

/// `first`, then `second` when it differs.
fn with_variant(first: String, second: String) -> Vec<String> {
    if first == second {
        vec![first]
    } else {
        vec![first, second]
    }
}

/// Percent-decoding, and with `plus_is_space` form-urlencoding's `+` as space (RFC 6749
/// Appendix B); invalid UTF-8 is replaced, which can only make the candidate wrong, never right.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let hex = |b: Option<&u8>| {
        b.and_then(|&b| char::from(b).to_digit(16))
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' && plus_is_space {
            b' '
        } else {
            bytes[i]
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(value: &str) -> Result<Credentials, OAuthError> {
        Credentials::extract(Some(value.as_bytes()), None, None)
    }

    fn secrets(c: &Credentials) -> Vec<&str> {
        c.secrets.iter().map(String::as_str).collect()
    }

    #[test]
    fn seed_000_base64() {
        let c = basic("Basic ZjdkNDIzNDgtYzY0Ny00ZWZiLWE1MmQtNGM1Nzg3NDIxZTAwOmY2aDFGVEk4UTMtN1VTY1BaRHpmWEE=").unwrap();
        assert_eq!(c.ids, ["f7d42348-c647-4efb-a52d-4c5787421e00"]);
        assert_eq!(secrets(&c), ["f6h1FTI8Q3-7UScPZDzfXA"]);
    }

    #[test]
    fn seed_001_raw_pair_any_case() {
        let c = basic("basic f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA").unwrap();
        assert_eq!(c.ids, ["f7d42348-c647-4efb-a52d-4c5787421e72"]);
        assert_eq!(secrets(&c), ["f6h1FTI8Q3-7UScPZDzfXA"]);
    }

    #[test]
    fn seed_004_unencoded_plus_is_tried_raw() {
        let c = basic("Basic MURSMzQzNEtERkpMUjMyTDUzTDQyMzVKNjp3cWUzNHR5eWg3Njc5am9ra0RhJDdkZjQ2YmJiYmp1aStiNy1zZGZzZGZZ").unwrap();
        assert_eq!(c.ids, ["1DR3434KDFJLR32L53L4235J6"]);
        assert_eq!(
            secrets(&c),
            [
                "wqe34tyyh7679jokkDa$7df46bbbbjui b7-sdfsdfY",
                "wqe34tyyh7679jokkDa$7df46bbbbjui+b7-sdfsdfY"
            ]
        );
    }

    #[test]
    fn rfc_encoded_basic_is_decoded() {
        // base64("a%3Ab:p%2Bq") — id "a:b", secret "p+q"
        let value = format!("BASIC {}", STANDARD.encode("a%3Ab:p%2Bq"));
        let c = basic(&value).unwrap();
        assert_eq!(c.ids, ["a:b", "a%3Ab"]);
        assert_eq!(secrets(&c), ["p+q", "p%2Bq"]);
    }

    #[test]
    fn seed_002_body_secret_also_percent_decoded() {
        let c = Credentials::extract(None, Some("client3x3mPl3"), Some("s3cr3Tp%40ass")).unwrap();
        assert_eq!(secrets(&c), ["s3cr3Tp%40ass", "s3cr3Tp@ass"]);
    }

    #[test]
    fn header_errors() {
        let kind = |value: &[u8]| {
            Credentials::extract(Some(value), None, None)
                .unwrap_err()
                .kind
        };
        assert_eq!(kind(b"Bearer abc"), ErrorKind::InvalidAuthorizationHeader);
        assert_eq!(kind(b"Basic"), ErrorKind::InvalidAuthorizationHeader);
        assert_eq!(
            kind(b"Basic :secret"),
            ErrorKind::InvalidAuthorizationHeader
        );
        assert_eq!(kind(b"Basic id:"), ErrorKind::InvalidAuthorizationHeader);
        assert_eq!(kind(b"\xff\xfe"), ErrorKind::InvalidAuthorizationHeader);
        assert_eq!(kind(b"Basic !!!"), ErrorKind::InvalidBasicCredentials);
        // base64("nocolon")
        assert_eq!(
            kind(b"Basic bm9jb2xvbg=="),
            ErrorKind::InvalidBasicCredentials
        );
    }

    #[test]
    fn body_errors() {
        let kind = |id, secret| Credentials::extract(None, id, secret).unwrap_err().kind;
        assert_eq!(kind(None, None), ErrorKind::MissingCredentials);
        assert_eq!(kind(Some("a"), None), ErrorKind::MissingCredentials);
        assert_eq!(kind(None, Some("s")), ErrorKind::MissingCredentials);
    }

    #[test]
    fn header_and_body_must_agree() {
        let err = Credentials::extract(Some(b"Basic a:b"), Some("other"), None).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ClientIdMismatch);
        assert!(Credentials::extract(Some(b"Basic a:b"), Some("a"), Some("ignored")).is_ok());
    }
}
