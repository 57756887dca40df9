//! The token request's parameters, from a form or a JSON body. Only the parameters below are
//! read; anything else is ignored and never reaches a token.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use super::error::{ErrorKind, OAuthError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Form,
    Json,
}

impl BodyFormat {
    /// From the `Content-Type` header: the media type without parameters, any case.
    pub fn from_content_type(value: &str) -> Option<BodyFormat> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(BodyFormat::Form)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(BodyFormat::Json)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub sid: Option<String>,
    pub client_assertion: Option<String>,
    pub client_assertion_type: Option<String>,
    /// The token to introspect or revoke (RFC 7662, RFC 7009).
    pub token: Option<String>,
    /// Accepted and ignored: every token here is a JWT that says what it is.
    pub token_type_hint: Option<String>,
}

impl Params {
    pub fn parse(format: BodyFormat, body: &[u8]) -> Result<Params, OAuthError> {
        match format {
            BodyFormat::Form => {
                let mut params = Params::default();
                for (name, value) in form_urlencoded::parse(body) {
                    params.set(&name, value.into_owned())?;
                }
                Ok(params)
            }
            BodyFormat::Json => {
                // serde's message for a body that is not an object quotes it (a bare string
                // whole): refused here first, so every message left is one of ours.
                if body.trim_ascii_start().first() != Some(&b'{') {
                    return Err(OAuthError::new(
                        ErrorKind::UnparsableBody,
                        "the JSON body must be an object",
                    ));
                }
                serde_json::from_slice::<JsonParams>(body)
                    .map(|json| json.0)
                    .map_err(|e| {
                        let description = if e.is_data() {
                            // Our own messages, naming a parameter.
                            format!("the JSON body is not a flat object of strings: {e}")
                        } else {
                            format!(
                                "the JSON body is not valid JSON (line {}, column {})",
                                e.line(),
                                e.column()
                            )
                        };
                        OAuthError::new(ErrorKind::UnparsableBody, description)
                    })
            }
        }
    }

    fn slot(&mut self, name: &str) -> Option<(&'static str, &mut Option<String>)> {
        Some(match name {
            "grant_type" => ("grant_type", &mut self.grant_type),
            "client_id" => ("client_id", &mut self.client_id),
            "client_secret" => ("client_secret", &mut self.client_secret),
            "scope" => ("scope", &mut self.scope),
            "audience" => ("audience", &mut self.audience),
            "sid" => ("sid", &mut self.sid),
            "client_assertion" => ("client_assertion", &mut self.client_assertion),
            "client_assertion_type" => ("client_assertion_type", &mut self.client_assertion_type),
            "token" => ("token", &mut self.token),
            "token_type_hint" => ("token_type_hint", &mut self.token_type_hint),
            _ => return None,
        })
    }

    /// RFC 6749 §3.2: a parameter may be sent once; §3.1: one without a value counts as omitted.
    fn set(&mut self, name: &str, value: String) -> Result<(), OAuthError> {
        let Some((name, slot)) = self.slot(name) else {
            return Ok(());
        };
        if slot.is_some() {
            return Err(OAuthError::new(
                ErrorKind::UnparsableBody,
                format!("parameter {name} is given more than once"),
            ));
        }
        // An empty value still occupies the slot, so `scope=&scope=x` is a repetition too.
        *slot = Some(value);
        Ok(())
    }

    /// The values that count: empty ones are treated as absent.
    pub fn normalized(mut self) -> Params {
        for value in [
            &mut self.grant_type,
            &mut self.client_id,
            &mut self.client_secret,
            &mut self.scope,
            &mut self.audience,
            &mut self.sid,
            &mut self.client_assertion,
            &mut self.client_assertion_type,
            &mut self.token,
            &mut self.token_type_hint,
        ] {
            if value.as_deref() == Some("") {
                *value = None;
            }
        }
        self
    }
}

/// A JSON object whose known members must be strings (or null) and appear once.
struct JsonParams(Params);

impl<'de> Deserialize<'de> for JsonParams {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamsVisitor;
        impl<'de> Visitor<'de> for ParamsVisitor {
            type Value = JsonParams;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonParams, A::Error> {
                let mut params = Params::default();
                while let Some(name) = map.next_key::<String>()? {
                    if params.slot(&name).is_none() {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let value: Option<String> = map
                        .next_value()
                        .map_err(|_| de::Error::custom(format!("{name} must be a string")))?;
                    params
                        .set(&name, value.unwrap_or_default())
                        .map_err(|e| de::Error::custom(e.description))?;
                }
                Ok(JsonParams(params))
            }
        }
        deserializer.deserialize_map(ParamsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type("application/x-www-form-urlencoded"),
            Some(BodyFormat::Form)
        );
        assert_eq!(
            BodyFormat::from_content_type("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            Some(BodyFormat::Form)
        );
        assert_eq!(
            BodyFormat::from_content_type("application/json;charset=utf-8"),
            Some(BodyFormat::Json)
        );
        assert_eq!(BodyFormat::from_content_type("text/plain"), None);
        assert_eq!(
            BodyFormat::from_content_type("multipart/form-data; boundary=x"),
            None
        );
    }

    #[test]
    fn form_bodies() {
        let params = Params::parse(
            BodyFormat::Form,
            b"grant_type=client_credentials&client_secret=s3cr3Tp%2540ass&scope=openid+accountId&other=1&other=2",
        )
        .unwrap();
        assert_eq!(params.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(params.client_secret.as_deref(), Some("s3cr3Tp%40ass"));
        assert_eq!(params.scope.as_deref(), Some("openid accountId"));
        assert_eq!(params.client_id, None);
    }

    #[test]
    fn json_bodies() {
        let params = Params::parse(
            BodyFormat::Json,
            br#"{"client_id":"a","client_secret":"b","audience":"https://api.example/","grant_type":"client_credentials","extra":{"x":[1]},"sid":null}"#,
        )
        .unwrap();
        assert_eq!(params.audience.as_deref(), Some("https://api.example/"));
        assert_eq!(params.normalized().sid, None);
        for bad in [
            &br#"{"grant_type":1}"#[..],
            br#""a bare string""#,
            b"  42",
            br#"["grant_type"]"#,
            br#"{"scope":"a","scope":"b"}"#,
            b"{",
            b"",
        ] {
            assert!(
                Params::parse(BodyFormat::Json, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Only fixed text and parameter names come back, never what the body held.
    #[test]
    fn json_errors_do_not_quote_the_body() {
        for bad in [
            &br#""ZQXMARKER""#[..],
            br#"["ZQXMARKER"]"#,
            br#"{"grant_type":"ZQXMARKER","ZQXMARKER":1,"scope":["ZQXMARKER"]}"#,
            br#"{"grant_type":"ZQXMARKER\q"}"#,
            br#"{"ZQXMARKER"}"#,
            br#"{"client_id":"a","client_id":"ZQXMARKER"}"#,
        ] {
            let err = Params::parse(BodyFormat::Json, bad).unwrap_err();
            assert!(!err.description.contains("ZQX"), "{}", err.description);
        }
    }

    #[test]
    fn repeated_parameters_are_rejected() {
        let err = Params::parse(BodyFormat::Form, b"grant_type=a&scope=&scope=x").unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnparsableBody);
        assert!(err.description.contains("scope"), "{}", err.description);
    }

    #[test]
    fn empty_values_count_as_absent() {
        let params = Params::parse(BodyFormat::Form, b"grant_type=client_credentials&scope=")
            .unwrap()
            .normalized();
        assert_eq!(params.scope, None);
    }
}
