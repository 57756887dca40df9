use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde::{Deserialize, Deserializer};

/// Which name carries the token format version: light-4j before 2.1.31 reads `version`, later `ver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionClaim {
    #[default]
    Version,
    Ver,
}

impl VersionClaim {
    pub fn name(self) -> &'static str {
        match self {
            VersionClaim::Version => "version",
            VersionClaim::Ver => "ver",
        }
    }
}

/// The value light-oauth2 puts in the version claim.
pub const TOKEN_VERSION: &str = "1.0";

/// The claims of a light-oauth2 token. Serialised by hand so the JSON keeps the seed's order:
/// iss, aud, exp, jti, iat, nbf, version, client_id, scope, sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub version_claim: VersionClaim,
    pub version: String,
    pub client_id: String,
    pub scope: Vec<String>,
    /// Only bootstrap tokens name a service.
    pub sid: Option<String>,
}

/// light-oauth2 back-dates `nbf` by two minutes to absorb clock skew between issuer and verifier.
pub const NOT_BEFORE_SKEW_SECS: i64 = 120;

impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("iss", &self.iss)?;
        map.serialize_entry("aud", &self.aud)?;
        map.serialize_entry("exp", &self.exp)?;
        map.serialize_entry("jti", &self.jti)?;
        map.serialize_entry("iat", &self.iat)?;
        map.serialize_entry("nbf", &self.nbf)?;
        map.serialize_entry(self.version_claim.name(), &self.version)?;
        map.serialize_entry("client_id", &self.client_id)?;
        map.serialize_entry("scope", &self.scope)?;
        if let Some(sid) = &self.sid {
            map.serialize_entry("sid", sid)?;
        }
        map.end()
    }
}

/// Parses either version claim name, so a token stays readable after `versionClaim` changes.
impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            iss: String,
            aud: String,
            exp: i64,
            jti: String,
            iat: i64,
            nbf: i64,
            version: Option<String>,
            ver: Option<String>,
            client_id: String,
            scope: Vec<String>,
            sid: Option<String>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let (version_claim, version) = match (raw.version, raw.ver) {
            (Some(v), None) => (VersionClaim::Version, v),
            (None, Some(v)) => (VersionClaim::Ver, v),
            _ => {
                return Err(serde::de::Error::custom(
                    "exactly one of `version` and `ver` must be present",
                ));
            }
        };
        Ok(Claims {
            iss: raw.iss,
            aud: raw.aud,
            exp: raw.exp,
            jti: raw.jti,
            iat: raw.iat,
            nbf: raw.nbf,
            version_claim,
            version,
            client_id: raw.client_id,
            scope: raw.scope,
            sid: raw.sid,
        })
    }
}

/// A token id as light-oauth2 makes it: 16 random bytes, base64url without padding (22 chars).
pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload of the seed's bootstrap token (shared/seeds/000), byte for byte.
    const SEED_PAYLOAD: &str = "eyJpc3MiOiJ1cm46Y29tOm5ldHdvcmtudDpvYXV0aDI6djEiLCJhdWQiOiJ1cm46Y29tLm5ldHdvcmtudCIsImV4cCI6MTk0NzA3MzQ5NywianRpIjoiVFY4cndsOWpDMEVVMWtmUWV6MFdHZyIsImlhdCI6MTYzMTcxMzQ5NywibmJmIjoxNjMxNzEzMzc3LCJ2ZXJzaW9uIjoiMS4wIiwiY2xpZW50X2lkIjoiZjdkNDIzNDgtYzY0Ny00ZWZiLWE1MmQtNGM1Nzg3NDIxZTAwIiwic2NvcGUiOlsiQThFNzM3NDBDMDA0MUMwM0Q2N0MzQTk1MUFBMUQ3NTMzQzhGOUYyRkI1N0Q3QkExMDcyMTBCOUJDOUUwNkRBMiJdLCJzaWQiOiJjb20ubmV0d29ya250LnBldHN0b3JlLTEuMC4wIn0";

    fn seed_claims() -> Claims {
        Claims {
            iss: "urn:com:networknt:oauth2:v1".into(),
            aud: "urn:com.networknt".into(),
            exp: 1_947_073_497,
            jti: "TV8rwl9jC0EU1kfQez0WGg".into(),
            iat: 1_631_713_497,
            nbf: 1_631_713_377,
            version_claim: VersionClaim::Version,
            version: TOKEN_VERSION.into(),
            client_id: "f7d42348-c647-4efb-a52d-4c5787421e00".into(),
            scope: vec!["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2".into()],
            sid: Some("com.networknt.petstore-1.0.0".into()),
        }
    }

    #[test]
    fn serialises_to_the_seed_payload_byte_for_byte() {
        let json = serde_json::to_vec(&seed_claims()).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(json), SEED_PAYLOAD);
    }

    #[test]
    fn parses_the_seed_payload() {
        let json = URL_SAFE_NO_PAD.decode(SEED_PAYLOAD).unwrap();
        let claims: Claims = serde_json::from_slice(&json).unwrap();
        assert_eq!(claims, seed_claims());
        assert_eq!(claims.exp - claims.iat, 315_360_000);
        assert_eq!(claims.iat - claims.nbf, NOT_BEFORE_SKEW_SECS);
    }

    #[test]
    fn ver_claim_takes_the_version_slot() {
        let mut claims = seed_claims();
        claims.version_claim = VersionClaim::Ver;
        let json = serde_json::to_string(&claims).unwrap();
        assert!(
            json.contains(r#""nbf":1631713377,"ver":"1.0","client_id""#),
            "{json}"
        );
        let back: Claims = serde_json::from_str(&json).unwrap();
        assert_eq!(back, claims);
    }

    #[test]
    fn access_tokens_carry_no_sid() {
        let mut claims = seed_claims();
        claims.sid = None;
        let json = serde_json::to_string(&claims).unwrap();
        assert!(json.ends_with(
            r#""scope":["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2"]}"#
        ));
    }

    #[test]
    fn jti_is_22_base64url_chars_and_random() {
        let a = new_jti();
        let b = new_jti();
        assert_eq!(a.len(), 22);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }
}
