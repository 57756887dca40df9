//! Which service ids may get a token in which namespaces. Without rules anyone who may create a
//! BootstrapToken could mint a token for any service, except that a service id held in one
//! namespace is never handed to another unless a rule says it may be shared.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Namespace globs (`*`, `?`); empty means every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Service id globs; empty means every service id.
    #[serde(default)]
    pub service_ids: Vec<String>,
    /// Matching service ids may be held in several namespaces at once (by default the first
    /// namespace to hold one keeps it).
    #[serde(default)]
    pub share_service_ids: bool,
}

impl PolicyRule {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.namespaces.iter().any(String::is_empty) {
            return Err("namespaces: a glob must not be empty".into());
        }
        if self.service_ids.iter().any(String::is_empty) {
            return Err("serviceIds: a glob must not be empty".into());
        }
        Ok(())
    }

    fn matches(&self, namespace: &str, service_id: &str) -> bool {
        let any = |globs: &[String], value: &str| {
            globs.is_empty() || globs.iter().any(|glob| glob_match(glob, value))
        };
        any(&self.namespaces, namespace) && any(&self.service_ids, service_id)
    }
}

/// No rules allow everything; otherwise one rule must match both namespace and service id.
pub fn allows(rules: &[PolicyRule], namespace: &str, service_id: &str) -> bool {
    rules.is_empty() || rules.iter().any(|rule| rule.matches(namespace, service_id))
}

/// Whether `service_id` may be held in `namespace` while another namespace holds it too.
pub fn allows_sharing(rules: &[PolicyRule], namespace: &str, service_id: &str) -> bool {
    rules
        .iter()
        .any(|rule| rule.share_service_ids && rule.matches(namespace, service_id))
}

/// `*` matches any run of characters, `?` one character; everything else is literal.
fn glob_match(glob: &str, value: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let value: Vec<char> = value.chars().collect();
    let (mut g, mut v) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while v < value.len() {
        match glob.get(g) {
            Some('*') => {
                backtrack = Some((g, v));
                g += 1;
            }
            Some(&c) if c == '?' || c == value[v] => {
                g += 1;
                v += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    g = star + 1;
                    v = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match(
            "com.networknt.*",
            "com.networknt.petstore-1.0.0"
        ));
        assert!(glob_match("team-?", "team-a"));
        assert!(!glob_match("team-?", "team-ab"));
        assert!(glob_match("*-1.0.*", "petstore-1.0.0"));
        assert!(!glob_match("com.*", "org.example"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
    }

    #[test]
    fn rules_need_namespace_and_service_to_match() {
        let rules = vec![PolicyRule {
            namespaces: vec!["team-*".into()],
            service_ids: vec!["com.team.*".into()],
            share_service_ids: false,
        }];
        assert!(allows(&rules, "team-a", "com.team.api"));
        assert!(!allows(&rules, "other", "com.team.api"));
        assert!(!allows(&rules, "team-a", "com.other.api"));
        assert!(allows(&[], "anything", "anything"));
    }

    #[test]
    fn sharing_needs_an_explicit_matching_rule() {
        let share = |namespaces: &[&str], share_service_ids| PolicyRule {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            service_ids: vec!["com.shared.*".into()],
            share_service_ids,
        };
        assert!(!allows_sharing(&[], "team-a", "com.shared.x"));
        assert!(!allows_sharing(
            &[share(&[], false)],
            "team-a",
            "com.shared.x"
        ));
        assert!(allows_sharing(
            &[share(&[], true)],
            "team-a",
            "com.shared.x"
        ));
        assert!(!allows_sharing(&[share(&[], true)], "team-a", "com.other"));
        assert!(!allows_sharing(
            &[share(&["team-b"], true)],
            "team-a",
            "com.shared.x"
        ));
    }
}
