//! Signing-key rotation as pure decisions: each key's phase at a given time, and the one next
//! step the leader takes. The state is the key Secrets' annotations (timestamps written once), so
//! every replica computes the same key set from them and a new leader resumes where the last one
//! stopped; [`crate::rotation`] reads and writes them.

use std::collections::HashMap;
use std::time::Duration;

use super::signing::RotationConfig;

/// The label every signing-key Secret carries, so replicas can watch them all.
pub const KEY_LABEL: &str = "bootstraptoken.dev/signing-key";
/// From when the key is in the JWKS (RFC 3339).
pub const PUBLISH_FROM: &str = "bootstraptoken.dev/publish-from";
/// From when the key signs (RFC 3339).
pub const ACTIVE_FROM: &str = "bootstraptoken.dev/active-from";
/// From when the key is out of the JWKS for good (RFC 3339).
pub const RETIRED_AT: &str = "bootstraptoken.dev/retired-at";
/// The phase the leader last reported (with an event); informational.
pub const PHASE: &str = "bootstraptoken.dev/key-phase";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Known, not yet published: an administrator's key before the leader schedules it, or a key
    /// whose publish time has not come.
    Scheduled,
    /// In the JWKS, not yet signing.
    Published,
    /// Signs every new token.
    Active,
    /// Superseded, still in the JWKS while tokens it signed are alive.
    Draining,
    /// Out of the JWKS.
    Retired,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Scheduled,
        Phase::Published,
        Phase::Active,
        Phase::Draining,
        Phase::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scheduled => "scheduled",
            Phase::Published => "published",
            Phase::Active => "active",
            Phase::Draining => "draining",
            Phase::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.as_str() == text)
    }

    /// Whether a key in this phase is in the JWKS and verifies tokens.
    pub fn published(self) -> bool {
        matches!(self, Phase::Published | Phase::Active | Phase::Draining)
    }
}

/// One key Secret as the decisions see it; times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The Secret's name.
    pub name: String,
    pub kid: String,
    /// The Secret's creation time.
    pub created: i64,
    pub publish_from: Option<i64>,
    pub active_from: Option<i64>,
    pub retired_at: Option<i64>,
    /// What [`PHASE`] says.
    pub noted: Option<Phase>,
    /// The configured `signing.keySecret`: without annotations it has signed since it exists.
    pub base: bool,
}

impl KeyState {
    /// When it started (or starts) to sign, for choosing the active key.
    fn active_since(&self) -> Option<i64> {
        match self.active_from {
            Some(at) => Some(at),
            None if self.base => Some(i64::MIN),
            None => None,
        }
    }

    pub fn retired(&self, now: i64) -> bool {
        self.retired_at.is_some_and(|at| at <= now)
    }

    /// Scheduled: both times are set (the base key needs none).
    fn scheduled(&self) -> bool {
        self.base || (self.publish_from.is_some() && self.active_from.is_some())
    }
}

/// Index of the key that signs at `now`: of the keys not retired whose active time has come, the
/// latest to start (ties by name, so every replica picks the same).
pub fn active_key(keys: &[KeyState], now: i64) -> Option<usize> {
    keys.iter()
        .enumerate()
        .filter(|(_, key)| !key.retired(now) && key.scheduled())
        .filter_map(|(i, key)| Some((key.active_since()?, &key.name, i)))
        .filter(|(since, _, _)| *since <= now)
        .max()
        .map(|(_, _, i)| i)
}

/// Every key's phase at `now`, in the order of `keys`.
pub fn phases(keys: &[KeyState], now: i64) -> Vec<Phase> {
    let active = active_key(keys, now);
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            if key.retired(now) {
                Phase::Retired
            } else if Some(i) == active {
                Phase::Active
            } else if !key.scheduled() || key.publish_from.is_some_and(|at| at > now) {
                Phase::Scheduled
            } else if key.active_since().is_none_or(|at| at > now) {
                Phase::Published
            } else {
                Phase::Draining
            }
        })
        .collect()
}

/// The earliest time after `now` at which some key's phase changes by the clock alone.
pub fn next_change(keys: &[KeyState], now: i64) -> Option<i64> {
    keys.iter()
        .flat_map(|key| [key.publish_from, key.active_from, key.retired_at])
        .flatten()
        .filter(|&at| at > now)
        .min()
}

/// What the leader does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Give a key an administrator added its times: published now, signing after `prepublish`.
    Schedule {
        name: String,
        publish_from: i64,
        active_from: i64,
    },
    /// Create the next key: published now, signing after `prepublish`.
    Create { publish_from: i64, active_from: i64 },
    /// A key reached `phase`: record it (and say so in an event).
    Note { name: String, phase: Phase },
    /// A superseded key signed no token still alive: take it out of the JWKS.
    Retire { name: String },
    /// Nothing to do before `until` (or before something changes, when `None`).
    Idle { until: Option<i64> },
}

/// What the next step is, given the keys, the unexpired unrevoked tokens each kid signed (as far
/// as the operator knows them), the configuration and `now`. `drain` is the shortest time a
/// superseded key stays published after its successor starts to sign: the endpoint's
/// `client_credentials` tokens (not recorded, so not counted in `tokens_left`) live at most that
/// long.
pub fn next_step(
    keys: &[KeyState],
    tokens_left: &HashMap<String, usize>,
    config: &RotationConfig,
    drain: Duration,
    now: i64,
) -> Step {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let prepublish = secs(config.prepublish);
    if let Some(key) = keys
        .iter()
        .find(|key| !key.scheduled() && !key.retired(now))
    {
        return Step::Schedule {
            name: key.name.clone(),
            publish_from: now,
            active_from: now.saturating_add(prepublish),
        };
    }
    let phases = phases(keys, now);
    // The configured key signing, untouched, is a plain install: nothing to note or write.
    let untouched = |key: &KeyState, phase: Phase| {
        key.base && key.noted.is_none() && key.active_from.is_none() && phase == Phase::Active
    };
    if let Some((key, phase)) = keys
        .iter()
        .zip(&phases)
        .find(|(key, phase)| key.noted != Some(**phase) && !untouched(key, **phase))
    {
        return Step::Note {
            name: key.name.clone(),
            phase: *phase,
        };
    }
    let active = active_key(keys, now).map(|i| &keys[i]);
    // The successor of a draining key started no later than the active key did.
    let successor_since = active.and_then(KeyState::active_since).unwrap_or(now);
    let drained_from = successor_since.saturating_add(secs(drain));
    if now >= drained_from
        && let Some(key) = keys.iter().zip(&phases).find_map(|(key, phase)| {
            (*phase == Phase::Draining && tokens_left.get(&key.kid).copied().unwrap_or(0) == 0)
                .then_some(key)
        })
    {
        return Step::Retire {
            name: key.name.clone(),
        };
    }
    let mut until = next_change(keys, now);
    if now < drained_from && phases.contains(&Phase::Draining) {
        until = Some(until.map_or(drained_from, |at| at.min(drained_from)));
    }
    let pending = phases
        .iter()
        .any(|phase| matches!(phase, Phase::Scheduled | Phase::Published));
    if let (Some(every), Some(active), false) = (config.every, active, pending) {
        // The base key without times has signed since its Secret was created.
        let started = active.active_from.unwrap_or(active.created);
        let create_at = started
            .saturating_add(secs(every))
            .saturating_sub(prepublish);
        if now >= create_at {
            return Step::Create {
                publish_from: now,
                active_from: now.saturating_add(prepublish),
            };
        }
        until = Some(until.map_or(create_at, |at| at.min(create_at)));
    }
    Step::Idle { until }
}

/// Paces re-issues onto a new key: one every `60 s / reissuePerMinute`. An object that must wait
/// gets its own slot, so the waiting ones come back one at a time rather than all together.
#[derive(Debug, Default)]
pub struct Pace {
    /// When the next unreserved slot is free.
    next_free: i64,
    /// Reserved slots by object.
    reserved: HashMap<String, i64>,
}

impl Pace {
    /// Whether `object` may re-issue at `now` (milliseconds), else how long it must wait.
    pub fn admit(&mut self, object: &str, interval_ms: i64, now: i64) -> Result<(), Duration> {
        let wait = |at: i64| Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
        if let Some(&slot) = self.reserved.get(object) {
            if slot <= now {
                self.reserved.remove(object);
                return Ok(());
            }
            return Err(wait(slot));
        }
        // Slots nobody came back for (the object went away or moved on) are not kept.
        self.reserved
            .retain(|_, slot| *slot > now.saturating_sub(interval_ms.saturating_mul(10)));
        if self.next_free <= now {
            self.next_free = now.saturating_add(interval_ms);
            return Ok(());
        }
        let slot = self.next_free;
        self.next_free = slot.saturating_add(interval_ms);
        self.reserved.insert(object.to_string(), slot);
        Err(wait(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key(name: &str, publish: Option<i64>, active: Option<i64>) -> KeyState {
        KeyState {
            name: name.into(),
            kid: format!("kid-{name}"),
            created: publish.unwrap_or(NOW - 1000),
            publish_from: publish,
            active_from: active,
            retired_at: None,
            noted: None,
            base: false,
        }
    }

    fn base() -> KeyState {
        KeyState {
            base: true,
            created: NOW - 1000,
            ..key("base", None, None)
        }
    }

    fn retired(mut key: KeyState, at: i64) -> KeyState {
        key.retired_at = Some(at);
        key
    }

    fn noted(mut keys: Vec<KeyState>, now: i64) -> Vec<KeyState> {
        let phases = phases(&keys, now);
        for (key, phase) in keys.iter_mut().zip(phases) {
            key.noted = Some(phase);
        }
        keys
    }

    #[test]
    fn phases_table() {
        use Phase::*;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<KeyState>, Vec<Phase>)> = vec![
            ("the base key alone signs", vec![base()], vec![Active]),
            ("a manual key not yet scheduled", vec![base(), key("b", None, None)], vec![Active, Scheduled]),
            ("scheduled, publish time to come", vec![base(), key("b", Some(NOW + 1), Some(NOW + 10))], vec![Active, Scheduled]),
            ("published, not yet signing", vec![base(), key("b", Some(NOW), Some(NOW + 10))], vec![Active, Published]),
            ("the new key signs at its active time", vec![base(), key("b", Some(NOW - 10), Some(NOW))], vec![Draining, Active]),
            ("the latest active time wins", vec![key("a", Some(NOW - 90), Some(NOW - 80)), key("b", Some(NOW - 20), Some(NOW - 10))], vec![Draining, Active]),
            ("a retired key is out", vec![retired(base(), NOW - 5), key("b", Some(NOW - 20), Some(NOW - 10))], vec![Retired, Active]),
            ("retired later is still draining", vec![retired(base(), NOW + 5), key("b", Some(NOW - 20), Some(NOW - 10))], vec![Draining, Active]),
            ("a retired newer key hands back to the older", vec![base(), retired(key("b", Some(NOW - 20), Some(NOW - 10)), NOW - 1)], vec![Active, Retired]),
            ("same active time: by name", vec![key("b", Some(NOW - 20), Some(NOW - 10)), key("a", Some(NOW - 20), Some(NOW - 10))], vec![Active, Draining]),
        ];
        for (name, keys, want) in cases {
            assert_eq!(phases(&keys, NOW), want, "{name}");
            assert!(
                !want.contains(&Active) || active_key(&keys, NOW).is_some(),
                "{name}"
            );
        }
    }

    fn every(every: u64, prepublish: u64) -> RotationConfig {
        RotationConfig {
            every: Some(Duration::from_secs(every)),
            prepublish: Duration::from_secs(prepublish),
            reissue_per_minute: 60,
        }
    }

    /// Name, keys, tokens left per kid, configuration, and the step.
    type StepCase<'a> = (
        &'a str,
        Vec<KeyState>,
        HashMap<String, usize>,
        &'a RotationConfig,
        Step,
    );

    #[test]
    fn next_step_table() {
        let off = RotationConfig {
            prepublish: Duration::from_secs(10),
            ..Default::default()
        };
        let on = every(60, 10);
        let none = HashMap::new();
        let left = |kid: &str, n: usize| HashMap::from([(kid.to_string(), n)]);
        let drain = Duration::from_secs(30);
        let switched = || noted(vec![base(), key("b", Some(NOW - 40), Some(NOW - 30))], NOW);
        #[rustfmt::skip]
        let cases: Vec<StepCase> = vec![
            ("nothing to do without rotation", noted(vec![base()], NOW), none.clone(), &off, Step::Idle { until: None }),
            ("a plain install: nothing to write", vec![base()], none.clone(), &off, Step::Idle { until: None }),
            ("the base key superseded: noted", vec![base(), key("b", Some(NOW - 20), Some(NOW - 10))], none.clone(), &off, Step::Note { name: "base".into(), phase: Phase::Draining }),
            ("an administrator's key is scheduled first", vec![base(), key("b", None, None)], none.clone(), &off, Step::Schedule { name: "b".into(), publish_from: NOW, active_from: NOW + 10 }),
            ("a published key is noted", noted(vec![base()], NOW).into_iter().chain([key("b", Some(NOW), Some(NOW + 10))]).collect(), none.clone(), &off, Step::Note { name: "b".into(), phase: Phase::Published }),
            ("waits for the active time", noted(vec![base(), key("b", Some(NOW), Some(NOW + 10))], NOW), none.clone(), &off, Step::Idle { until: Some(NOW + 10) }),
            ("published ten seconds ago, signs in ten", noted(vec![base(), key("b", Some(NOW - 10), Some(NOW + 10))], NOW), none.clone(), &off, Step::Idle { until: Some(NOW + 10) }),
            ("tokens left: the old key drains", switched(), left("kid-base", 3), &off, Step::Idle { until: None }),
            ("revoked-later tokens count too", switched(), left("kid-base", 1), &on, Step::Idle { until: Some(NOW - 30 + 50) }),
            ("none left: retired", switched(), none.clone(), &off, Step::Retire { name: "base".into() }),
            ("none left, but endpoint tokens may live", noted(vec![base(), key("b", Some(NOW - 20), Some(NOW - 10))], NOW), none.clone(), &off, Step::Idle { until: Some(NOW + 20) }),
            ("tokens of the new key do not hold the old", switched(), left("kid-b", 9), &off, Step::Retire { name: "base".into() }),
            ("rotation: not yet time", noted(vec![KeyState { created: NOW - 20, ..base() }], NOW), none.clone(), &on, Step::Idle { until: Some(NOW + 30) }),
            ("rotation: time to create", noted(vec![base()], NOW), none.clone(), &on, Step::Create { publish_from: NOW, active_from: NOW + 10 }),
            ("rotation: nothing while a key is pending", noted(vec![base(), key("b", Some(NOW), Some(NOW + 10))], NOW), none.clone(), &on, Step::Idle { until: Some(NOW + 10) }),
        ];
        for (name, keys, left, config, want) in cases {
            assert_eq!(next_step(&keys, &left, config, drain, NOW), want, "{name}");
        }
        // Due: the base key (created NOW - 1000) is past every - prepublish.
        let keys = noted(vec![base()], NOW);
        assert_eq!(
            next_step(&keys, &none, &on, drain, NOW - 1000 + 50),
            Step::Create {
                publish_from: NOW - 950,
                active_from: NOW - 940
            }
        );
        // A retired key stays retired: nothing more to do for it.
        let keys = noted(
            vec![
                retired(base(), NOW - 1),
                key("b", Some(NOW - 40), Some(NOW - 30)),
            ],
            NOW,
        );
        assert_eq!(
            next_step(&keys, &none, &on, drain, NOW),
            Step::Idle {
                until: Some(NOW + 20)
            }
        );
    }

    #[test]
    fn pace_spreads_reissues_one_slot_each() {
        let mut pace = Pace::default();
        let interval = 1000;
        assert_eq!(pace.admit("a", interval, 0), Ok(()));
        assert_eq!(
            pace.admit("b", interval, 10),
            Err(Duration::from_millis(990))
        );
        assert_eq!(
            pace.admit("c", interval, 20),
            Err(Duration::from_millis(1980))
        );
        // Asking again keeps the slot.
        assert_eq!(
            pace.admit("b", interval, 500),
            Err(Duration::from_millis(500))
        );
        assert_eq!(pace.admit("b", interval, 1000), Ok(()));
        assert_eq!(
            pace.admit("c", interval, 1999),
            Err(Duration::from_millis(1))
        );
        assert_eq!(pace.admit("c", interval, 2000), Ok(()));
        // Idle long enough: the next one goes at once.
        assert_eq!(pace.admit("d", interval, 5000), Ok(()));
        // A slot nobody claims is dropped after ten intervals.
        assert!(pace.admit("e", interval, 5001).is_err());
        assert_eq!(pace.admit("f", interval, 30_000), Ok(()));
        assert!(pace.reserved.is_empty());
    }
}
