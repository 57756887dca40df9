//! What a workload's annotations and labels ask for: a pure function of them, tested as a table.

use std::collections::BTreeMap;

use super::{NAME_LABEL, VERSION_LABEL};
use crate::resource::annotations;

/// Why the shim cannot keep a token for a workload: the reason of the Warning it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    InvalidAnnotation,
    MissingLabel,
    EmptyServiceId,
    /// A BootstrapToken of the child's name belongs to something else.
    BootstrapTokenConflict,
    /// The API server refused the child (a value the annotations carry).
    InvalidBootstrapToken,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::InvalidAnnotation => "InvalidAnnotation",
            Problem::MissingLabel => "MissingLabel",
            Problem::EmptyServiceId => "EmptyServiceId",
            Problem::BootstrapTokenConflict => "BootstrapTokenConflict",
            Problem::InvalidBootstrapToken => "InvalidBootstrapToken",
        }
    }
}

/// What a workload's annotations and labels ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// No token: no child.
    Nothing,
    /// A child BootstrapToken with this spec.
    Token {
        service_id: String,
        secret_name: String,
    },
    /// A token, but the annotations or labels do not say which: warn, leave any child alone.
    Misconfigured { reason: Problem, message: String },
}

/// Reads a workload's shim annotations (and, for a derived id, its labels).
pub fn wanted(
    name: &str,
    notes: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Wanted {
    let get = |key: &str| notes.get(key).map(|value| value.trim());
    let enabled = match get(annotations::ENABLED) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
        Some(v) => {
            return Wanted::Misconfigured {
                reason: Problem::InvalidAnnotation,
                message: format!(
                    "{} must be \"true\" or \"false\", not {v:?}",
                    annotations::ENABLED
                ),
            };
        }
    };
    if enabled == Some(false) {
        return Wanted::Nothing;
    }
    let service_id = match get(annotations::SERVICE_ID) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if enabled == Some(true) => {
            let label = |key: &str| labels.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
            match (label(NAME_LABEL), label(VERSION_LABEL)) {
                (Some(name), Some(version)) => format!("{name}-{version}"),
                (name, version) => {
                    let missing: Vec<&str> = [(NAME_LABEL, name), (VERSION_LABEL, version)]
                        .into_iter()
                        .filter(|(_, value)| value.is_none())
                        .map(|(key, _)| key)
                        .collect();
                    let (noun, verb) = if missing.len() == 1 {
                        ("label", "is")
                    } else {
                        ("labels", "are")
                    };
                    return Wanted::Misconfigured {
                        reason: Problem::MissingLabel,
                        message: format!(
                            "{} is \"true\" and {} is empty, so the service id is derived as \
                             <{NAME_LABEL}>-<{VERSION_LABEL}>, but the {noun} {} {verb} missing: \
                             set the {noun} or {}",
                            annotations::ENABLED,
                            annotations::SERVICE_ID,
                            missing.join(" and "),
                            annotations::SERVICE_ID,
                        ),
                    };
                }
            }
        }
        Some(_) => {
            return Wanted::Misconfigured {
                reason: Problem::EmptyServiceId,
                message: format!(
                    "{} is empty: set it to the service id, or set {}: \"true\" to derive it \
                     from the labels {NAME_LABEL} and {VERSION_LABEL}",
                    annotations::SERVICE_ID,
                    annotations::ENABLED
                ),
            };
        }
        None => return Wanted::Nothing,
    };
    let secret_name = get(annotations::SECRET_NAME)
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("{name}-bootstrap-token"), str::to_string);
    Wanted::Token {
        service_id,
        secret_name,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A label or annotation map from pairs.
    pub(in crate::shim) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn token(id: &str, secret: &str) -> Wanted {
        Wanted::Token {
            service_id: id.into(),
            secret_name: secret.into(),
        }
    }

    #[test]
    fn explicit_id_and_secret_name() {
        let notes = map(&[(annotations::SERVICE_ID, "com.x.api-1.0.0")]);
        assert_eq!(
            wanted("api", &notes, &map(&[])),
            token("com.x.api-1.0.0", "api-bootstrap-token")
        );
        let notes = map(&[
            (annotations::SERVICE_ID, " com.x.api "),
            (annotations::SECRET_NAME, "creds"),
        ]);
        assert_eq!(
            wanted("api", &notes, &map(&[])),
            token("com.x.api", "creds")
        );
    }

    #[test]
    fn derived_id_needs_both_labels() {
        let labels = map(&[(NAME_LABEL, "petstore"), (VERSION_LABEL, "1.0.0")]);
        for notes in [
            map(&[(annotations::ENABLED, "true")]),
            map(&[
                (annotations::ENABLED, "True"),
                (annotations::SERVICE_ID, ""),
            ]),
        ] {
            assert_eq!(
                wanted("web", &notes, &labels),
                token("petstore-1.0.0", "web-bootstrap-token")
            );
        }
        let notes = map(&[(annotations::ENABLED, "true")]);
        let Wanted::Misconfigured { reason, message } =
            wanted("web", &notes, &map(&[(NAME_LABEL, "petstore")]))
        else {
            panic!("a missing label is a misconfiguration");
        };
        assert_eq!(reason, Problem::MissingLabel);
        assert!(
            message.contains("label app.kubernetes.io/version is missing"),
            "{message}"
        );
        let Wanted::Misconfigured { message, .. } = wanted("web", &notes, &map(&[])) else {
            panic!("missing labels are a misconfiguration");
        };
        assert!(
            message.contains("app.kubernetes.io/name and app.kubernetes.io/version are missing"),
            "{message}"
        );
    }

    #[test]
    fn nothing_empty_and_disabled() {
        assert_eq!(wanted("a", &map(&[]), &map(&[])), Wanted::Nothing);
        let notes = map(&[(annotations::RESTART_ON_REISSUE, "true")]);
        assert_eq!(wanted("a", &notes, &map(&[])), Wanted::Nothing);
        let notes = map(&[
            (annotations::SERVICE_ID, "svc"),
            (annotations::ENABLED, "false"),
        ]);
        assert_eq!(wanted("a", &notes, &map(&[])), Wanted::Nothing);
        for (notes, expected) in [
            (map(&[(annotations::SERVICE_ID, "")]), "EmptyServiceId"),
            (
                map(&[
                    (annotations::SERVICE_ID, "svc"),
                    (annotations::ENABLED, "yes"),
                ]),
                "InvalidAnnotation",
            ),
        ] {
            assert!(
                matches!(
                    wanted("a", &notes, &map(&[])),
                    Wanted::Misconfigured { reason, .. } if reason.as_str() == expected
                ),
                "{notes:?}"
            );
        }
    }
}
