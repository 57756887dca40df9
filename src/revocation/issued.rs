//! The tokens of the `bootstrap_token` grant: one `IssuedToken` record per token, written before
//! the token is handed out, watched by every replica (to list them, and to count the tokens each
//! key signed before rotation retires it), capped per sid, and dropped by the leader once the
//! token expired or was revoked (its `RevokedToken` then covers it).

use std::collections::HashMap;

use kube::api::Api;

use super::mirror::{self, Mirror};
use super::{
    IssuedGrant, IssuedToken, Revocation, RevocationError, RevocationReason, parse_time,
    parse_time_ms, record_name,
};

/// What a replica keeps of one grant token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) kid: String,
    pub(super) sid: String,
    pub(super) client_id: String,
    /// When it was issued, in milliseconds: the order the cap revokes in.
    pub(super) issued_ms: i64,
    pub(super) exp: i64,
}

impl Entry {
    /// The revocation of this token at `now`, beyond the cap of its sid.
    pub(super) fn revocation(&self, jti: &str, now: i64) -> Revocation {
        Revocation {
            jti: jti.to_string(),
            kid: self.kid.clone(),
            client_id: self.client_id.clone(),
            sid: Some(self.sid.clone()),
            exp: self.exp,
            effective_at: now,
            reason: RevocationReason::ServiceCapReached,
        }
    }

    fn alive(&self, jti: &str, now: i64, revoked: &impl Fn(&str) -> bool) -> bool {
        self.exp > now && !revoked(jti)
    }
}

/// The grant's tokens this replica knows of, by `jti`.
pub struct IssuedTokens {
    pub(super) mirror: Mirror<Entry>,
    /// None in memory-only mode.
    pub(super) api: Option<Api<IssuedToken>>,
}

impl IssuedTokens {
    pub(super) fn new(api: Option<Api<IssuedToken>>) -> Self {
        IssuedTokens {
            mirror: Mirror::new(api.is_none()),
            api,
        }
    }

    /// Writes the record of `grant` (and keeps it here at once).
    pub(super) async fn record(&self, grant: &IssuedGrant) -> Result<(), RevocationError> {
        if let Some(api) = &self.api {
            let object = IssuedToken::new(&record_name(&grant.jti), grant.spec());
            mirror::apply(api, &object)
                .await
                .map_err(|source| RevocationError::Record {
                    jti: grant.jti.clone(),
                    source,
                })?;
        }
        self.mirror.write().insert(grant.jti.clone(), grant.entry());
        Ok(())
    }

    /// The unexpired, unrevoked grant tokens each kid signed, once the records have been listed
    /// (before, a count could let rotation retire a key still in use).
    pub fn count_by_kid(
        &self,
        now: i64,
        revoked: impl Fn(&str) -> bool,
    ) -> Option<HashMap<String, usize>> {
        if !self.mirror.is_synced() {
            return None;
        }
        Some(count_by_kid(self.mirror.read().iter(), now, revoked))
    }

    /// The records that may go: their token expired or was revoked, at most `limit` of them.
    pub(super) fn sweepable(
        &self,
        now: i64,
        revoked: impl Fn(&str) -> bool,
        limit: usize,
    ) -> Vec<String> {
        self.mirror
            .read()
            .iter()
            .filter(|(jti, entry)| !entry.alive(jti, now, &revoked))
            .map(|(jti, _)| jti.clone())
            .take(limit)
            .collect()
    }
}

/// The unexpired, unrevoked tokens among `entries`, per kid.
fn count_by_kid<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Entry)>,
    now: i64,
    revoked: impl Fn(&str) -> bool,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (jti, entry) in entries {
        if entry.alive(jti, now, &revoked) {
            *counts.entry(entry.kid.clone()).or_default() += 1;
        }
    }
    counts
}

/// The tokens to revoke so that no sid keeps more than `cap` unexpired, unrevoked grant tokens:
/// the oldest of each sid (by issuance to the millisecond, then jti, so every replica picks the
/// same ones).
pub(super) fn over_cap<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Entry)>,
    cap: usize,
    now: i64,
    revoked: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut by_sid: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
    for (jti, entry) in entries {
        if entry.alive(jti, now, &revoked) {
            by_sid
                .entry(entry.sid.as_str())
                .or_default()
                .push((entry.issued_ms, jti.as_str()));
        }
    }
    let mut victims = Vec::new();
    for tokens in by_sid.values_mut() {
        if tokens.len() > cap {
            tokens.sort_unstable();
            let excess = tokens.len() - cap;
            victims.extend(tokens[..excess].iter().map(|(_, jti)| jti.to_string()));
        }
    }
    victims.sort_unstable();
    victims
}

/// A record as an entry; one with unreadable times counts as issued long ago and alive for ten
/// years (so rotation keeps its key) rather than being ignored.
pub(super) fn entry_of(record: &IssuedToken) -> Option<(String, Entry)> {
    let spec = &record.spec;
    if spec.token_id.is_empty() {
        return None;
    }
    let entry = Entry {
        kid: spec.key_id.clone(),
        sid: spec.service_id.clone(),
        client_id: spec.client_id.clone(),
        issued_ms: parse_time_ms(&spec.issued_at).unwrap_or(i64::MIN),
        exp: parse_time(&spec.expires_at).unwrap_or(i64::MAX),
    };
    Some((spec.token_id.clone(), entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// jti, sid, kid, issued (ms), exp (s).
    type Token = (&'static str, &'static str, &'static str, i64, i64);

    fn entries(tokens: &[Token]) -> HashMap<String, Entry> {
        tokens
            .iter()
            .map(|(jti, sid, kid, issued_ms, exp)| {
                let entry = Entry {
                    kid: kid.to_string(),
                    sid: sid.to_string(),
                    client_id: "client".into(),
                    issued_ms: *issued_ms,
                    exp: *exp,
                };
                (jti.to_string(), entry)
            })
            .collect()
    }

    const LATER: i64 = NOW + 3600;

    /// Name, tokens, the revoked jtis, the cap, and the jtis to revoke.
    type CapCase = (
        &'static str,
        Vec<Token>,
        &'static [&'static str],
        usize,
        &'static [&'static str],
    );

    #[test]
    fn which_tokens_the_cap_revokes() {
        // (name, tokens, revoked jtis, cap) → the jtis to revoke.
        let table: [CapCase; 8] = [
            ("none", vec![], &[], 2, &[]),
            (
                "at the cap: nothing",
                vec![
                    ("a", "s", "k", NOW - 2, LATER),
                    ("b", "s", "k", NOW - 1, LATER),
                ],
                &[],
                2,
                &[],
            ),
            (
                "one over: the oldest",
                vec![
                    ("new", "s", "k", NOW, LATER),
                    ("old", "s", "k", NOW - 9, LATER),
                    ("mid", "s", "k", NOW - 5, LATER),
                ],
                &[],
                2,
                &["old"],
            ),
            (
                "each sid has its own cap",
                vec![
                    ("s1", "s", "k", NOW - 2, LATER),
                    ("s2", "s", "k", NOW - 1, LATER),
                    ("t1", "t", "k", NOW - 9, LATER),
                ],
                &[],
                1,
                &["s1"],
            ),
            (
                "expired tokens do not count",
                vec![
                    ("gone", "s", "k", NOW - 9, NOW),
                    ("a", "s", "k", NOW - 1, LATER),
                ],
                &[],
                1,
                &[],
            ),
            (
                "revoked tokens do not count",
                vec![
                    ("r", "s", "k", NOW - 9, LATER),
                    ("a", "s", "k", NOW - 1, LATER),
                ],
                &["r"],
                1,
                &[],
            ),
            (
                "the same millisecond: by jti, the same on every replica",
                vec![("y", "s", "k", NOW, LATER), ("x", "s", "k", NOW, LATER)],
                &[],
                1,
                &["x"],
            ),
            (
                "far over (two replicas at once, a failed revocation)",
                vec![
                    ("a", "s", "k", NOW - 4, LATER),
                    ("b", "s", "k", NOW - 3, LATER),
                    ("c", "s", "k", NOW - 2, LATER),
                    ("d", "s", "k", NOW - 1, LATER),
                ],
                &[],
                1,
                &["a", "b", "c"],
            ),
        ];
        for (name, tokens, revoked, cap, want) in table {
            let entries = entries(&tokens);
            let got = over_cap(entries.iter(), cap, NOW, |jti| revoked.contains(&jti));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn tokens_counted_per_kid() {
        let tokens = [
            ("a", "s", "k1", NOW - 9, LATER),
            ("b", "t", "k1", NOW - 9, LATER),
            ("c", "s", "k2", NOW - 9, LATER),
            // Expired, revoked: no longer hold their key.
            ("d", "s", "k3", NOW - 9, NOW),
            ("e", "s", "k3", NOW - 9, LATER),
        ];
        let entries = entries(&tokens);
        let got = count_by_kid(entries.iter(), NOW, |jti| jti == "e");
        let want = HashMap::from([("k1".to_string(), 2), ("k2".to_string(), 1)]);
        assert_eq!(got, want);
    }

    /// Rotation retires a superseded key only once no grant token it signed is alive: the
    /// count per kid is what `next_step` decides from.
    #[test]
    fn a_live_grant_token_holds_its_key_in_rotation() {
        use crate::token::RotationConfig;
        use crate::token::rotation::{KeyState, Phase, Step, next_step};
        use std::time::Duration;
        let key = |name: &str, kid: &str, active_from: Option<i64>, noted, base| KeyState {
            name: name.into(),
            kid: kid.into(),
            created: NOW - 1000,
            publish_from: active_from.map(|at| at - 10),
            active_from,
            retired_at: None,
            noted: Some(noted),
            base,
        };
        // The base key was superseded 30 s ago; endpoint tokens drain in 10 s.
        let keys = [
            key("base", "k-old", None, Phase::Draining, true),
            key("next", "k-new", Some(NOW - 30), Phase::Active, false),
        ];
        let config = RotationConfig::default();
        let drain = Duration::from_secs(10);
        let entries = entries(&[
            ("held", "s", "k-old", NOW - 60, LATER),
            ("moved", "s", "k-new", NOW - 1, LATER),
        ]);
        // (name, revoked jtis) → the step.
        let table: [(&str, &[&str], Step); 2] = [
            (
                "a live grant token holds it",
                &[],
                Step::Idle { until: None },
            ),
            (
                "revoked, it no longer does (the new key's token never holds the old)",
                &["held"],
                Step::Retire {
                    name: "base".into(),
                },
            ),
        ];
        for (name, revoked, want) in table {
            let counts = count_by_kid(entries.iter(), NOW, |jti| revoked.contains(&jti));
            assert_eq!(
                next_step(&keys, &counts, &config, drain, NOW),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn records_of_dead_tokens_are_swept() {
        let issued = IssuedTokens::new(None);
        *issued.mirror.write() = entries(&[
            ("alive", "s", "k", NOW - 9, LATER),
            ("expired", "s", "k", NOW - 9, NOW),
            ("revoked", "s", "k", NOW - 9, LATER),
        ]);
        let mut got = issued.sweepable(NOW, |jti| jti == "revoked", 10);
        got.sort();
        assert_eq!(got, ["expired", "revoked"]);
        assert_eq!(issued.sweepable(NOW, |_| true, 1).len(), 1, "bounded pass");
    }

    #[test]
    fn unreadable_times_keep_the_key() {
        let record = IssuedToken::new(
            "x",
            crate::revocation::IssuedTokenSpec {
                token_id: "j".into(),
                key_id: "k".into(),
                client_id: "c".into(),
                service_id: "s".into(),
                issued_at: "garbage".into(),
                expires_at: "".into(),
            },
        );
        let (jti, entry) = entry_of(&record).unwrap();
        assert_eq!(jti, "j");
        assert_eq!((entry.issued_ms, entry.exp), (i64::MIN, i64::MAX));
    }
}
